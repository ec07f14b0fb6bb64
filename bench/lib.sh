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
#   nginx_conf WORK UPSTREAM_PORT LISTEN_PORT [MAIN_EXTRA] [WORKER_CONNECTIONS]
#
# writes WORK/nginx.conf (and creates WORK/nginx for the temp paths). MAIN_EXTRA is one
# extra main-context directive line: profile.sh passes "master_process off;" so that
# callgrind follows the one process that serves. WORKER_CONNECTIONS defaults to 4096 (the
# idle-connection rows of run.sh raise it, in their own instances).
nginx_conf() {
  local work=$1 upstream_port=$2 listen_port=$3 extra=${4:-} conns=${5:-4096}
  local tmpl
  tmpl="$(dirname "${BASH_SOURCE[0]}")/nginx.conf.tmpl"
  mkdir -p "$work/nginx"
  sed -e "s|@WORK@|$work|g" -e "s|@UPSTREAM_PORT@|$upstream_port|g" -e "s|@LISTEN_PORT@|$listen_port|g" \
    -e "s|@MAIN_EXTRA@|$extra|" -e "s|@WORKER_CONNECTIONS@|$conns|" "$tmpl" >"$work/nginx.conf"
}

# The fair rival of issue 17 (bench/nginx-lua.conf.tmpl): nginx + lua doing nxgate's whole
# job for one MD5 tenant.
#
#   nginx_lua_conf WORK UPSTREAM_PORT LISTEN_PORT UUID SECRET_ENV CLIENT_KEY [MAIN_EXTRA] [WORKER_CONNECTIONS]
#
# writes WORK/nginx-lua.conf (and WORK/nginx-lua for the temp paths). The secret itself is
# not written: nginx reads it from the environment variable named SECRET_ENV. UUID and
# CLIENT_KEY go into Lua string literals, so they are restricted to a safe alphabet.
nginx_lua_conf() {
  local work=$1 upstream_port=$2 listen_port=$3 uuid=$4 secret_env=$5 key=$6 extra=${7:-} conns=${8:-4096}
  local tmpl v
  for v in "$uuid" "$secret_env" "$key"; do
    [[ $v =~ ^[A-Za-z0-9._~+/=-]+$ ]] || { echo "nginx_lua_conf: unsupported character in '$v'" >&2; return 1; }
  done
  tmpl="$(dirname "${BASH_SOURCE[0]}")/nginx-lua.conf.tmpl"
  mkdir -p "$work/nginx-lua"
  sed -e "s|@WORK@|$work|g" -e "s|@UPSTREAM_PORT@|$upstream_port|g" -e "s|@LISTEN_PORT@|$listen_port|g" \
    -e "s|@UUID@|$uuid|g" -e "s|@SECRET_ENV@|$secret_env|g" -e "s|@CLIENT_KEY@|$key|g" \
    -e "s|@MAIN_EXTRA@|$extra|" -e "s|@WORKER_CONNECTIONS@|$conns|" "$tmpl" >"$work/nginx-lua.conf"
}

# ---------------------------------------------------------------- one-tenant gateway
# single_tenant_gateway FILE LISTEN_PORT UPSTREAM_PORT: the MD5 gateway config profile.sh and
# heap.sh measure (the vendor's public sample account, client key bench-client-key-md5);
# sets UUID, SECRET and KEY and exports BENCH_SECRET_MD5 (test credentials only).
single_tenant_gateway() {
  UUID=Vh71ym3yQwWSYZFpqkFwTskGXUbSxDtR
  SECRET=u7Mf3zUNOkg4lMV9a0E6cHSgIkK22GSr
  KEY=bench-client-key-md5
  export BENCH_SECRET_MD5=$SECRET
  cat >"$1" <<EOF
listen: ["127.0.0.1:$2"]
upstream:
  url: "http://127.0.0.1:$3"
admin_listen: null
shutdown_grace_secs: 1
tenants:
  - name: md5
    uuid: "$UUID"
    secret_env: BENCH_SECRET_MD5
    algorithm: "MD5"
    client_keys_sha256: ["$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)"]
EOF
}
