# Helpers shared by bench/run.sh and bench/profile.sh. Sourced, not run.

# ---------------------------------------------------------------- processes and temp dir
# bench_workdir NAME: a fresh temp dir in $WORK, and an EXIT trap that stops every process
# whose PID is in PIDS and removes WORK (kept, and named on stderr, when KEEP=1).
PIDS=()
bench_workdir() {
  WORK=$(mktemp -d "/tmp/nxgate-$1.XXXXXX")
  trap bench_cleanup EXIT
}
bench_cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}

# ---------------------------------------------------------------- ports
declare -A TAKEN=()
free_port() { # VAR: a loopback port nobody listens on, below the ephemeral range, not handed out before
  local p
  while :; do
    p=$((10000 + RANDOM % 20000))
    [ -n "${TAKEN[$p]:-}" ] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then TAKEN[$p]=1; printf -v "$1" %s "$p"; return; fi
  done
}

# ---------------------------------------------------------------- nginx
# The nginx configuration both scripts measure, from one template (bench/nginx.conf.tmpl),
# so the two cannot drift apart.
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
