# The nginx configuration both bench/run.sh and bench/profile.sh measure, from one
# template (bench/nginx.conf.tmpl), so the two cannot drift apart. Sourced, not run.
#
#   nginx_conf WORK UPSTREAM_PORT LISTEN_PORT [MAIN_EXTRA]
#
# writes WORK/nginx.conf (and creates WORK/nginx for the temp paths). MAIN_EXTRA is one
# extra main-context directive line: profile.sh passes "master_process off;" so that
# callgrind follows the one process that serves.
nginx_conf() {
  local work=$1 upstream_port=$2 listen_port=$3 extra=${4:-}
  local tmpl
  tmpl="$(dirname "${BASH_SOURCE[0]}")/nginx.conf.tmpl"
  mkdir -p "$work/nginx"
  sed -e "s|@WORK@|$work|g" -e "s|@UPSTREAM_PORT@|$upstream_port|g" -e "s|@LISTEN_PORT@|$listen_port|g" \
    -e "s|@MAIN_EXTRA@|$extra|" "$tmpl" >"$work/nginx.conf"
}
