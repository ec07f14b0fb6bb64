#!/usr/bin/env bash
# nxgate load benchmark: what the gateway costs, against the physical limit (direct to the
# emulator), a plain reverse proxy (nginx) and the fair rival that does nxgate's whole job
# in nginx + Lua (nginx-lua, bench/nginx-lua.conf.tmpl), in one run on loopback; then the
# memory of idle keep-alive connections and after a connection flood. See BENCHMARKS.md.
#
#   bash bench/run.sh            # installs wrk + nginx (+ lua module) if missing, builds --release, runs
#
# Knobs (environment): DURATION=10 (s measured per row), WARMUP=2 (s per row, not measured),
# CONNS="1 16 128", PIN=1 (0 = no CPU pinning), LOADGEN_CPUS=0 UPSTREAM_CPUS=0
# GATEWAY_CPUS=1 (taskset lists), BIG=1 (0 = skip the 1 MiB memory rows),
# OUT=bench/results/latest.md, KEEP=0 (1 = keep the temp dir with configs and logs),
# NXGATE_BIN= PASSTHROUGH_BIN= (both set: use these prebuilt binaries, no cargo build),
# IDLE=1 (0 = skip the idle-connection and flood rows), IDLE_CONNS=5000, FLOOD_CONNS=3000,
# FLOOD_SECS=10, SETTLE_SECS=60 (how long after its flood each server's RSS is read),
# INFLIGHT=1 (0 = skip the in-flight rows), INFLIGHT_CONNS=1000, SLOW_MS=100 (the slow
# upstream's delay), PAIRS=3 (0 = skip the paired rate-limit rows), PAIR_CONNS="16 128".
# CONNS="" BIG=0 PAIRS=0 runs only the memory sections.
#
# Everything listens on 127.0.0.1 (free ports picked at start), every wrk run is bounded by
# -d, and every process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS-"1 16 128"}
PIN=${PIN:-1}
LOADGEN_CPUS=${LOADGEN_CPUS:-0}
UPSTREAM_CPUS=${UPSTREAM_CPUS:-0}
GATEWAY_CPUS=${GATEWAY_CPUS:-1}
BIG=${BIG:-1}
OUT=${OUT:-bench/results/latest.md}
KEEP=${KEEP:-0}
BIG_CONNS=${BIG_CONNS:-"16 128"}
BIG_BYTES=1048576
NXGATE_BIN=${NXGATE_BIN:-}
PASSTHROUGH_BIN=${PASSTHROUGH_BIN:-}
IDLE=${IDLE:-1}
IDLE_CONNS=${IDLE_CONNS:-5000}
FLOOD_CONNS=${FLOOD_CONNS:-3000}
FLOOD_SECS=${FLOOD_SECS:-10}
SETTLE_SECS=${SETTLE_SECS:-60}
INFLIGHT=${INFLIGHT:-1}
INFLIGHT_CONNS=${INFLIGHT_CONNS:-1000}
SLOW_MS=${SLOW_MS:-100}
PAIRS=${PAIRS:-3}
PAIR_CONNS=${PAIR_CONNS:-"16 128"}
# The idle and flood rows hold thousands of sockets (wrk, the gateways and the emulators
# inherit this): 65536 where the hard limit may be raised (root with CAP_SYS_RESOURCE),
# else the hard limit.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---------------------------------------------------------------- prerequisites and build
source scripts/setup.sh
source bench/lib.sh
nxgate_install wrk:wrk curl:curl taskset:util-linux
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || nxgate_install nginx:nginx
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
# The nginx-lua row needs Debian's lua module (and its ndk dependency); the path stands in
# for a command name, so nxgate_install installs the package when the module is missing.
LUA_MODULE=/usr/lib/nginx/modules/ngx_http_lua_module.so
[ -f "$LUA_MODULE" ] || nxgate_install "$LUA_MODULE:libnginx-mod-http-lua"
if [ -n "$NXGATE_BIN" ] && [ -n "$PASSTHROUGH_BIN" ]; then
  BIN=$(realpath "$NXGATE_BIN")
  PASSTHROUGH=$(realpath "$PASSTHROUGH_BIN")
  echo "using prebuilt $BIN and $PASSTHROUGH (no build)" >&2
else
  echo "building nxgate (release)..." >&2
  cargo build --release --locked >&2
  # The bare-Pingora baseline: reuses nxgate's compiled dependencies (same lock, same target dir).
  cargo build --release --locked -p pingora-passthrough >&2
  BIN=$ROOT/target/release/nxgate
  PASSTHROUGH=$ROOT/target/release/pingora-passthrough
fi

bench_workdir bench

pin() { # pin CPUS cmd...
  local cpus=$1; shift
  if [ "$PIN" = 1 ]; then taskset -c "$cpus" "$@"; else "$@"; fi
}

# ---------------------------------------------------------------- credentials and ports
# Test credentials only: the emulator takes them on its command line.
UUID_MD5=Vh71ym3yQwWSYZFpqkFwTskGXUbSxDtR      # the vendor's public sample account
SECRET_MD5=u7Mf3zUNOkg4lMV9a0E6cHSgIkK22GSr
UUID_SHA=BenchSha256Account0000000000000
SECRET_SHA=bench-sha256-secret-0123456789abcdef
KEY_MD5=bench-client-key-md5
KEY_SHA=bench-client-key-sha256
KEY_LIM=bench-client-key-limits
digest() { printf %s "$1" | sha256sum | cut -d' ' -f1; }

for v in P_EMU_PLAIN P_EMU P_NGINX P_LUA P_PT P_NOLOG A_NOLOG P_MD5 P_SHA P_LIM P_BIG A_MD5 A_SHA A_LIM A_BIG \
  P_NGINX_IDLE P_LUA_IDLE P_GW_IDLE A_GW_IDLE P_EMU_SLOW P_LUA_SLOW P_GW_SLOW A_GW_SLOW; do free_port "$v"; done

# ---------------------------------------------------------------- configs
gateway_config() { # name port admin_port uuid secret_env algorithm key extra_tenant_yaml limits_yaml [upstream_port]
  cat >"$WORK/$1.yaml" <<EOF
listen: ["127.0.0.1:$2"]
upstream:
  url: "http://127.0.0.1:${10:-$P_EMU}"
admin_listen: "127.0.0.1:$3"
shutdown_grace_secs: 1
${9:-}
tenants:
  - name: $1
    uuid: "$4"
    secret_env: $5
    algorithm: "$6"
    client_keys_sha256: ["$(digest "$7")"]
${8:-}
EOF
}
gateway_config md5 "$P_MD5" "$A_MD5" "$UUID_MD5" BENCH_SECRET_MD5 MD5 "$KEY_MD5"
gateway_config sha256 "$P_SHA" "$A_SHA" "$UUID_SHA" BENCH_SECRET_SHA SHA256 "$KEY_SHA"
gateway_config nolog "$P_NOLOG" "$A_NOLOG" "$UUID_MD5" BENCH_SECRET_MD5 MD5 "$KEY_MD5"
gateway_config limits "$P_LIM" "$A_LIM" "$UUID_MD5" BENCH_SECRET_MD5 MD5 "$KEY_LIM" \
  "    rate_limit: { per_second: 10000000, burst: 10000000 }
    max_in_flight: 100000"
# The memory rows: the default request limit (1 MiB) and a response limit just above the
# emulator's echo of a 1 MiB body, so both buffers a request can hold are bounded.
MAX_REQ=1048576
MAX_RESP=1114112
gateway_config big "$P_BIG" "$A_BIG" "$UUID_MD5" BENCH_SECRET_MD5 MD5 "$KEY_MD5" "" \
  "limits:
  max_request_body_bytes: $MAX_REQ
  max_response_body_bytes: $MAX_RESP"

nginx_conf "$WORK" "$P_EMU_PLAIN" "$P_NGINX"
# The peer signs for the MD5 tenant and talks to the verifying emulator, as nxgate-md5 does;
# it reads the secret from the same environment variable as nxgate's config names.
nginx_lua_conf "$WORK" "$P_EMU" "$P_LUA" "$UUID_MD5" BENCH_SECRET_MD5 "$KEY_MD5"
[ "$PIN" = 1 ] || sed -i 's/^worker_processes 1;/worker_processes auto;/' "$WORK/nginx.conf" "$WORK/nginx-lua.conf"

# ---------------------------------------------------------------- start everything
start() { # name cpus cmd...  (output appended to $WORK/name.log)
  local name=$1 cpus=$2; shift 2
  local cmd=("$@")
  [ "$PIN" = 1 ] && cmd=(taskset -c "$cpus" "$@")
  # A simple command, so $! is the process itself (taskset execs it), not a subshell.
  "${cmd[@]}" >>"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  eval "PID_${name//-/_}=$!"
}
export BENCH_SECRET_MD5=$SECRET_MD5 BENCH_SECRET_SHA=$SECRET_SHA
start emu-plain "$UPSTREAM_CPUS" "$BIN" emulator --listen "127.0.0.1:$P_EMU_PLAIN" \
  --tenant "$UUID_MD5=$SECRET_MD5" --skip-request-verification
start emu "$UPSTREAM_CPUS" "$BIN" emulator --listen "127.0.0.1:$P_EMU" \
  --tenant "$UUID_MD5=$SECRET_MD5" --tenant "$UUID_SHA=$SECRET_SHA"
start nginx "$GATEWAY_CPUS" "$NGINX" -e "$WORK/nginx-error.log" -c "$WORK/nginx.conf"
start nginx-lua "$GATEWAY_CPUS" "$NGINX" -e "$WORK/nginx-lua-error.log" -c "$WORK/nginx-lua.conf"
start passthrough "$GATEWAY_CPUS" "$PASSTHROUGH" "127.0.0.1:$P_PT" "127.0.0.1:$P_EMU_PLAIN"
start gw-md5 "$GATEWAY_CPUS" "$BIN" run -c "$WORK/md5.yaml"
start gw-sha256 "$GATEWAY_CPUS" "$BIN" run -c "$WORK/sha256.yaml"
start gw-limits "$GATEWAY_CPUS" "$BIN" run -c "$WORK/limits.yaml"
# The same MD5 gateway with its per-request access log off (RUST_LOG=warn): what the log costs.
RUST_LOG=warn start gw-nolog "$GATEWAY_CPUS" "$BIN" run -c "$WORK/nolog.yaml"

BODY_1K="$WORK/body-1k.json"
printf '{"data":"%s"}' "$(head -c $((1024 - 11)) /dev/zero | tr '\0' x)" >"$BODY_1K"

check() { # url key: one POST must answer 200 with the emulator's success envelope
  local url=$1 key=$2 out
  out=$(curl -sS -m 5 -o - -w '\n%{http_code}' -H 'content-type: application/json' \
    -H "authorization: Bearer $key" --data-binary @"$BODY_1K" "$url" 2>&1) || return 1
  [ "${out##*$'\n'}" = 200 ] && grep -q '"code":0' <<<"$out"
}
wait_ready() { # url key
  local i
  for i in $(seq 1 200); do check "$1" "$2" && return 0; sleep 0.1; done
  echo "not ready: $1" >&2; return 1
}
PATH_=/callcentre/api/v3/ping
URL_DIRECT=http://127.0.0.1:$P_EMU_PLAIN$PATH_
URL_NGINX=http://127.0.0.1:$P_NGINX$PATH_
URL_LUA=http://127.0.0.1:$P_LUA$PATH_
URL_PT=http://127.0.0.1:$P_PT$PATH_
URL_NOLOG=http://127.0.0.1:$P_NOLOG$PATH_
URL_MD5=http://127.0.0.1:$P_MD5$PATH_
URL_SHA=http://127.0.0.1:$P_SHA$PATH_
URL_LIM=http://127.0.0.1:$P_LIM$PATH_
wait_ready "$URL_DIRECT" "$KEY_MD5"
wait_ready "$URL_NGINX" "$KEY_MD5"
wait_ready "$URL_LUA" "$KEY_MD5"
wait_ready "$URL_PT" "$KEY_MD5"
wait_ready "$URL_NOLOG" "$KEY_MD5"
wait_ready "$URL_MD5" "$KEY_MD5"
wait_ready "$URL_SHA" "$KEY_SHA"
wait_ready "$URL_LIM" "$KEY_LIM"
with_children() { echo "$1" $(pgrep -P "$1" || true); } # an nginx master and its worker
NGINX_PIDS() { with_children "$PID_nginx"; }
NGINX_LUA_PIDS() { with_children "$PID_nginx_lua"; }

# ---------------------------------------------------------------- measuring
ticks() { # utime+stime (clock ticks) summed over PIDs
  local t=0 p v
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] || continue
    v=$(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')
    t=$((t + v))
  done
  echo "$t"
}
hwm_kib() { local p s=0 v; for p in "$@"; do v=$(awk '/^VmHWM/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0); s=$((s + ${v:-0})); done; echo "$s"; }
rss_kib() { local p s=0 v; for p in "$@"; do v=$(awk '/^VmRSS/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0); s=$((s + ${v:-0})); done; echo "$s"; }
reset_hwm() { local p; for p in "$@"; do echo 5 >"/proc/$p/clear_refs" 2>/dev/null || true; done; }
truncate_logs() { local f; for f in "$WORK"/*.log; do : >"$f"; done; }
CLK_TCK=$(getconf CLK_TCK)
RAW="$WORK/raw.tsv"
printf 'row\tconns\tbody\trequests\tduration_us\tp50_us\tp99_us\tp999_us\tmax_us\terrors\tgw_cpu_ticks\tgw_hwm_kib\tup_cpu_ticks\n' >"$RAW"
OUT_TSV=$RAW

measure() { # row conns body_bytes url key "gateway pids" upstream_pid  (appends to $OUT_TSV)
  local row=$1 c=$2 bytes=$3 url=$4 key=$5 gw=$6 up=$7 res
  check "$url" "$key" || { echo "sanity check failed for $row ($url)" >&2; exit 1; }
  echo "  $row, $c connections, $bytes-byte body..." >&2
  reset_hwm $gw
  BODY_BYTES=$bytes CLIENT_KEY=$key pin "$LOADGEN_CPUS" wrk -t1 -c"$c" -d"${WARMUP}s" --timeout 10s \
    -s "$ROOT/bench/post.lua" "$url" >/dev/null
  local g0 u0 g1 u1
  g0=$(ticks $gw); u0=$(ticks "$up")
  res=$(BODY_BYTES=$bytes CLIENT_KEY=$key pin "$LOADGEN_CPUS" wrk -t1 -c"$c" -d"${DURATION}s" --timeout 10s \
    -s "$ROOT/bench/post.lua" "$url" | grep '^RESULT')
  g1=$(ticks $gw); u1=$(ticks "$up")
  local hwm; hwm=$(hwm_kib $gw)
  v() { tr ' ' '\n' <<<"$res" | awk -F= -v k="$1" '$1 == k {print $2}'; }
  local errors=$(( $(v err_connect) + $(v err_read) + $(v err_write) + $(v err_status) + $(v err_timeout) ))
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$row" "$c" "$bytes" "$(v requests)" \
    "$(v duration_us)" "$(v p50_us)" "$(v p99_us)" "$(v p999_us)" "$(v max_us)" "$errors" \
    "$((g1 - g0))" "$hwm" "$((u1 - u0))" >>"$OUT_TSV"
  check "$url" "$key" || { echo "sanity check failed after $row ($url)" >&2; exit 1; }
  truncate_logs
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
echo "measuring (${DURATION}s per row after ${WARMUP}s warm-up; load average $LOAD_BEFORE)..." >&2
# Interleaved: all the rows at one concurrency, then the next concurrency.
for c in $CONNS; do
  measure direct "$c" 1024 "$URL_DIRECT" "$KEY_MD5" "" "$PID_emu_plain"
  measure nginx "$c" 1024 "$URL_NGINX" "$KEY_MD5" "$(NGINX_PIDS)" "$PID_emu_plain"
  measure nginx-lua "$c" 1024 "$URL_LUA" "$KEY_MD5" "$(NGINX_LUA_PIDS)" "$PID_emu"
  measure pingora-passthrough "$c" 1024 "$URL_PT" "$KEY_MD5" "$PID_passthrough" "$PID_emu_plain"
  measure nxgate-md5 "$c" 1024 "$URL_MD5" "$KEY_MD5" "$PID_gw_md5" "$PID_emu"
  measure nxgate-sha256 "$c" 1024 "$URL_SHA" "$KEY_SHA" "$PID_gw_sha256" "$PID_emu"
  measure nxgate-md5-limits "$c" 1024 "$URL_LIM" "$KEY_LIM" "$PID_gw_limits" "$PID_emu"
  measure nxgate-md5-nolog "$c" 1024 "$URL_NOLOG" "$KEY_MD5" "$PID_gw_nolog" "$PID_emu"
done

# A configured rate limit against none, paired: nxgate-md5-limits and nxgate-md5 alternate
# PAIRS times at each of PAIR_CONNS, the order swapped every pair, so a drift of this noisy
# machine falls on both sides alike; the report gives each pair's ratio and their median.
PAIRS_RAW="$WORK/pairs.tsv"
head -1 "$RAW" >"$PAIRS_RAW"
if [ "$PAIRS" -gt 0 ]; then
  OUT_TSV=$PAIRS_RAW
  for c in $PAIR_CONNS; do
    for i in $(seq 1 "$PAIRS"); do
      order="none limits"
      [ $((i % 2)) = 0 ] && order="limits none"
      for r in $order; do
        if [ "$r" = none ]; then
          measure "pair$i-nxgate-md5" "$c" 1024 "$URL_MD5" "$KEY_MD5" "$PID_gw_md5" "$PID_emu"
        else
          measure "pair$i-nxgate-md5-limits" "$c" 1024 "$URL_LIM" "$KEY_LIM" "$PID_gw_limits" "$PID_emu"
        fi
      done
    done
  done
  OUT_TSV=$RAW
fi

BIG_IDLE_KIB=0
if [ "$BIG" = 1 ]; then
  # A fresh gateway, so its peak is this test's alone; the others are stopped to free CPU.
  kill "$PID_gw_md5" "$PID_gw_sha256" "$PID_gw_limits" "$PID_gw_nolog" "$PID_nginx" "$PID_nginx_lua" "$PID_passthrough" 2>/dev/null || true
  start gw-big "$GATEWAY_CPUS" "$BIN" run -c "$WORK/big.yaml"
  URL_BIG=http://127.0.0.1:$P_BIG$PATH_
  wait_ready "$URL_BIG" "$KEY_MD5"
  sleep 1
  BIG_IDLE_KIB=$(awk '/^VmRSS/{print $2}' "/proc/$PID_gw_big/status")
  for c in $BIG_CONNS; do
    measure nxgate-md5-1MiB "$c" "$BIG_BYTES" "$URL_BIG" "$KEY_MD5" "$PID_gw_big" "$PID_emu"
  done
fi

# ---------------------------------------------------------------- requests in flight
# Memory per request in flight: NXCloud SLOW_MS away (the emulator's `slow` fault on every
# request), INFLIGHT_CONNS callers each with one request outstanding, for the nginx-lua peer
# and nxgate-md5. Fresh instances against their own slow emulator, the others stopped; RSS
# (VmRSS over the server's processes) sampled every 0.5 s over the measured seconds, the
# largest sample kept. Per request = (that sample - RSS before the load) / INFLIGHT_CONNS:
# the caller's connection, the request, and the upstream connection it holds.
INFLIGHT_RAW="$WORK/inflight.tsv"
printf 'row\tserver\tconns\trequests\tduration_us\tp50_us\tp99_us\terrors\tidle_kib\tmax_kib\tmean_kib\tsamples\n' >"$INFLIGHT_RAW"
if [ "$INFLIGHT" = 1 ]; then
  echo "requests in flight ($INFLIGHT_CONNS callers, upstream ${SLOW_MS} ms away)..." >&2
  kill "$PID_gw_md5" "$PID_gw_sha256" "$PID_gw_limits" "$PID_gw_nolog" "$PID_nginx" "$PID_nginx_lua" \
    "$PID_passthrough" ${PID_gw_big:+"$PID_gw_big"} 2>/dev/null || true
  mkdir -p "$WORK/inflight"
  IF_WCONN=$((2 * INFLIGHT_CONNS + 1024))
  nginx_lua_conf "$WORK/inflight" "$P_EMU_SLOW" "$P_LUA_SLOW" "$UUID_MD5" BENCH_SECRET_MD5 "$KEY_MD5" \
    "worker_rlimit_nofile $((2 * IF_WCONN));" "$IF_WCONN"
  [ "$PIN" = 1 ] || sed -i 's/^worker_processes 1;/worker_processes auto;/' "$WORK/inflight/nginx-lua.conf"
  gateway_config inflight "$P_GW_SLOW" "$A_GW_SLOW" "$UUID_MD5" BENCH_SECRET_MD5 MD5 "$KEY_MD5" "" "" "$P_EMU_SLOW"
  start emu-slow "$UPSTREAM_CPUS" "$BIN" emulator --listen "127.0.0.1:$P_EMU_SLOW" \
    --tenant "$UUID_MD5=$SECRET_MD5" --fault slow --slow-ms "$SLOW_MS"
  start inflight-nginx-lua "$GATEWAY_CPUS" "$NGINX" -e "$WORK/inflight/nginx-lua-error.log" -c "$WORK/inflight/nginx-lua.conf"
  start inflight-gw "$GATEWAY_CPUS" "$BIN" run -c "$WORK/inflight.yaml"
  declare -A IF_URL=([nginx-lua]=http://127.0.0.1:$P_LUA_SLOW$PATH_ [nxgate-md5]=http://127.0.0.1:$P_GW_SLOW$PATH_)
  for s in nginx-lua nxgate-md5; do wait_ready "${IF_URL[$s]}" "$KEY_MD5"; done
  declare -A IF_PIDS=([nginx-lua]="$(with_children "$PID_inflight_nginx_lua")" [nxgate-md5]=$PID_inflight_gw)
  sleep 1
  inflight_row() { # server
    local name=$1 url=${IF_URL[$1]} pids=${IF_PIDS[$1]} idle res out="$WORK/inflight-$1.out" wpid
    local t_end max=0 sum=0 n=0 r
    echo "  inflight-$INFLIGHT_CONNS, $name..." >&2
    check "$url" "$KEY_MD5" || { echo "sanity check failed for inflight $name ($url)" >&2; exit 1; }
    idle=$(rss_kib $pids)
    BODY_BYTES=1024 CLIENT_KEY=$KEY_MD5 pin "$LOADGEN_CPUS" wrk -t1 -c"$INFLIGHT_CONNS" -d"$((WARMUP + DURATION))s" \
      --timeout 10s -s "$ROOT/bench/post.lua" "$url" >"$out" &
    wpid=$!
    PIDS+=("$wpid")
    sleep "$WARMUP"
    t_end=$((SECONDS + DURATION))
    while [ "$SECONDS" -lt "$t_end" ] && kill -0 "$wpid" 2>/dev/null; do
      r=$(rss_kib $pids); n=$((n + 1)); sum=$((sum + r)); [ "$r" -gt "$max" ] && max=$r
      sleep 0.5
    done
    wait "$wpid" || true
    res=$(grep '^RESULT' "$out")
    v() { tr ' ' '\n' <<<"$res" | awk -F= -v k="$1" '$1 == k {print $2}'; }
    local errors=$(( $(v err_connect) + $(v err_read) + $(v err_write) + $(v err_status) + $(v err_timeout) ))
    printf 'inflight-%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$INFLIGHT_CONNS" "$name" "$INFLIGHT_CONNS" \
      "$(v requests)" "$(v duration_us)" "$(v p50_us)" "$(v p99_us)" "$errors" "$idle" "$max" "$((n > 0 ? sum / n : 0))" "$n" \
      >>"$INFLIGHT_RAW"
    check "$url" "$KEY_MD5" || { echo "sanity check failed after inflight $name ($url)" >&2; exit 1; }
    truncate_logs
  }
  for s in nginx-lua nxgate-md5; do inflight_row "$s"; done
  kill "$PID_inflight_nginx_lua" "$PID_inflight_gw" "$PID_emu_slow" 2>/dev/null || true
fi
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- idle connections and flood
# Memory per idle keep-alive caller connection, and whether memory comes back after a
# flood, for nginx, the nginx-lua peer and nxgate-md5. Fresh instances (in $WORK/idle, with
# room for the connections: the throughput configs above stay as they were), started after
# every throughput row, the others stopped. RSS is VmRSS summed over the server's processes
# (nginx: master + worker).
IDLE_RAW="$WORK/idle.tsv"
# idle rows: loaded = RSS with the connections open, after = RSS once they closed;
# flood rows: ok = requests, loaded = peak (VmHWM), before = RSS just before the flood,
# after = RSS waited_s seconds after it.
printf 'row\tserver\tconns\tok\terrors\tidle_kib\tloaded_kib\tafter_kib\twaited_s\tbefore_kib\n' >"$IDLE_RAW"
declare -A SRV_URL=() SRV_KEY=() SRV_PIDS=() SRV_IDLE=() FLOOD_END=() FLOOD_LINE=() FLOOD_BEFORE=()
idle_row() { # server: open IDLE_CONNS keep-alive connections, one request each, and hold them
  local name=$1 url=${SRV_URL[$1]} key=${SRV_KEY[$1]} pids=${SRV_PIDS[$1]}
  local out="$WORK/idle-$name.out" idle loaded after pid i ok closed cmd
  echo "  idle-$IDLE_CONNS, $name..." >&2
  check "$url" "$key" || { echo "sanity check failed for idle-$IDLE_CONNS $name ($url)" >&2; exit 1; }
  idle=$(rss_kib $pids)
  SRV_IDLE[$name]=$idle
  cmd=(python3 "$ROOT/bench/idle_conns.py" -n "$IDLE_CONNS" --key "$key" --open-secs 60 --hold-secs 90 "$url")
  [ "$PIN" = 1 ] && cmd=(taskset -c "$LOADGEN_CPUS" "${cmd[@]}")
  "${cmd[@]}" >"$out" </dev/null &
  pid=$!
  PIDS+=("$pid")
  for i in $(seq 1 700); do # the tool gives up opening after 60 s
    grep -q '^READY' "$out" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  sleep 2 # let the server finish its bookkeeping of the last answers
  loaded=$(rss_kib $pids)
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  sleep 2
  after=$(rss_kib $pids)
  ok=$(sed -n 's/^READY ok=\([0-9]*\).*/\1/p' "$out")
  closed=$(sed -n 's/^DONE .*server_closed=\([0-9]*\).*/\1/p' "$out")
  # errors: connections that got no 2xx answer, or that the server closed while they were
  # held (before the tool closed them, i.e. possibly before RSS was read).
  printf 'idle-%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$IDLE_CONNS" "$name" "$IDLE_CONNS" "${ok:-0}" \
    "$((IDLE_CONNS - ${ok:-0} + ${closed:-0}))" "$idle" "$loaded" "$after" 2 "$idle" >>"$IDLE_RAW"
  check "$url" "$key" || { echo "sanity check failed after idle-$IDLE_CONNS $name ($url)" >&2; exit 1; }
}
flood_row() { # server: FLOOD_CONNS connections of wrk load for FLOOD_SECS; the peak is kept
  local name=$1 url=${SRV_URL[$1]} key=${SRV_KEY[$1]} pids=${SRV_PIDS[$1]} res hwm before
  echo "  flood-$FLOOD_CONNS, $name..." >&2
  before=$(rss_kib $pids)
  FLOOD_BEFORE[$name]=$before
  reset_hwm $pids
  res=$(BODY_BYTES=1024 CLIENT_KEY=$key pin "$LOADGEN_CPUS" wrk -t1 -c"$FLOOD_CONNS" -d"${FLOOD_SECS}s" \
    --timeout 10s -s "$ROOT/bench/post.lua" "$url" | grep '^RESULT')
  FLOOD_END[$name]=$(date +%s)
  hwm=$(hwm_kib $pids)
  v() { tr ' ' '\n' <<<"$res" | awk -F= -v k="$1" '$1 == k {print $2}'; }
  local errors=$(( $(v err_connect) + $(v err_read) + $(v err_write) + $(v err_status) + $(v err_timeout) ))
  FLOOD_LINE[$name]="flood-$FLOOD_CONNS\t$name\t$FLOOD_CONNS\t$(v requests)\t$errors\t${SRV_IDLE[$name]}\t$hwm"
  truncate_logs
  local f; for f in "$WORK"/idle/*.log; do : >"$f"; done
}
IDLE_STARTED=$SECONDS
if [ "$IDLE" = 1 ] && [ "$(ulimit -n)" -lt $((IDLE_CONNS + FLOOD_CONNS + 1024)) ]; then
  echo "skipping the idle and flood rows: ulimit -n is $(ulimit -n)" >&2
  IDLE=0
fi
if [ "$IDLE" = 1 ]; then
  echo "idle connections ($IDLE_CONNS) and flood ($FLOOD_CONNS connections, ${FLOOD_SECS} s, RSS ${SETTLE_SECS} s later)..." >&2
  kill "$PID_gw_md5" "$PID_gw_sha256" "$PID_gw_limits" "$PID_gw_nolog" "$PID_nginx" "$PID_nginx_lua" \
    "$PID_passthrough" ${PID_gw_big:+"$PID_gw_big"} 2>/dev/null || true
  # A flood holds a caller and an upstream connection per request in flight.
  WCONN=$((IDLE_CONNS > 2 * FLOOD_CONNS ? IDLE_CONNS : 2 * FLOOD_CONNS))
  WCONN=$((WCONN + 1024))
  NOFILE=$(ulimit -n)
  NOFILE=$((2 * WCONN < NOFILE ? 2 * WCONN : NOFILE))
  mkdir -p "$WORK/idle"
  nginx_conf "$WORK/idle" "$P_EMU_PLAIN" "$P_NGINX_IDLE" "worker_rlimit_nofile $NOFILE;" "$WCONN"
  nginx_lua_conf "$WORK/idle" "$P_EMU" "$P_LUA_IDLE" "$UUID_MD5" BENCH_SECRET_MD5 "$KEY_MD5" \
    "worker_rlimit_nofile $NOFILE;" "$WCONN"
  [ "$PIN" = 1 ] || sed -i 's/^worker_processes 1;/worker_processes auto;/' "$WORK/idle/nginx.conf" "$WORK/idle/nginx-lua.conf"
  gateway_config idle "$P_GW_IDLE" "$A_GW_IDLE" "$UUID_MD5" BENCH_SECRET_MD5 MD5 "$KEY_MD5"
  start idle-nginx "$GATEWAY_CPUS" "$NGINX" -e "$WORK/idle/nginx-error.log" -c "$WORK/idle/nginx.conf"
  start idle-nginx-lua "$GATEWAY_CPUS" "$NGINX" -e "$WORK/idle/nginx-lua-error.log" -c "$WORK/idle/nginx-lua.conf"
  start idle-gw "$GATEWAY_CPUS" "$BIN" run -c "$WORK/idle.yaml"
  SRV_URL=([nginx]=http://127.0.0.1:$P_NGINX_IDLE$PATH_ [nginx-lua]=http://127.0.0.1:$P_LUA_IDLE$PATH_
    [nxgate-md5]=http://127.0.0.1:$P_GW_IDLE$PATH_)
  SRV_KEY=([nginx]=$KEY_MD5 [nginx-lua]=$KEY_MD5 [nxgate-md5]=$KEY_MD5)
  for s in nginx nginx-lua nxgate-md5; do wait_ready "${SRV_URL[$s]}" "${SRV_KEY[$s]}"; done
  SRV_PIDS=([nginx]="$(with_children "$PID_idle_nginx")" [nginx-lua]="$(with_children "$PID_idle_nginx_lua")"
    [nxgate-md5]=$PID_idle_gw)
  sleep 1
  for s in nginx nginx-lua nxgate-md5; do idle_row "$s"; done
  for s in nginx nginx-lua nxgate-md5; do flood_row "$s"; done
  # Each server's RSS SETTLE_SECS after its own flood ended (later if the others' floods
  # took longer than that); the seconds actually waited go in the row.
  for s in nginx nginx-lua nxgate-md5; do
    wait_s=$((FLOOD_END[$s] + SETTLE_SECS - $(date +%s)))
    [ "$wait_s" -gt 0 ] && sleep "$wait_s"
    printf '%b\t%s\t%s\t%s\n' "${FLOOD_LINE[$s]}" "$(rss_kib ${SRV_PIDS[$s]})" "$(($(date +%s) - FLOOD_END[$s]))" \
      "${FLOOD_BEFORE[$s]}" >>"$IDLE_RAW"
  done
fi
IDLE_SECS=$((SECONDS - IDLE_STARTED))

# ---------------------------------------------------------------- report
mkdir -p "$(dirname "$OUT")"
BASE=${OUT%.md}
cp "$RAW" "$BASE.tsv"
rm -f "$BASE.inflight.tsv" "$BASE.pairs.tsv"
if [ "$PAIRS" -gt 0 ]; then cp "$PAIRS_RAW" "$BASE.pairs.tsv"; fi
if [ "$INFLIGHT" = 1 ]; then cp "$INFLIGHT_RAW" "$BASE.inflight.tsv"; fi
rm -f "$BASE.idle.tsv"
if [ "$IDLE" = 1 ]; then cp "$IDLE_RAW" "$BASE.idle.tsv"; fi
# CONN_BUF: the fixed per-request buffers besides the two bodies: Pingora's two of 64 KiB
# (the request and upstream response body readers' BODY_BUFFER_SIZE) and nxgate's 16 KiB
# write gathering (net::downstream::WRITE_COALESCE_BYTES); the listeners' L4 buffers are off.
printf 'CLK_TCK=%s\nBIG_IDLE_KIB=%s\nMAX_REQ=%s\nMAX_RESP=%s\nCONN_BUF=147456\nFLOOD_SECS=%s\nSETTLE_SECS=%s\nIDLE_SECS=%s\nSLOW_MS=%s\n' \
  "$CLK_TCK" "$BIG_IDLE_KIB" "$MAX_REQ" "$MAX_RESP" "$FLOOD_SECS" "$SETTLE_SECS" "$IDLE_SECS" "$SLOW_MS" >"$BASE.env"
{
  echo "## nxgate benchmark run, $STARTED"
  echo
  echo "- machine: $(nproc) CPUs, $(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)," \
    "$(awk '/^MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM, Linux $(uname -r)"
  echo "- nxgate $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?') (release build);" \
    "$(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2); $("$NGINX" -v 2>&1 | sed 's/^nginx version: //')"
  if [ "$PIN" = 1 ]; then
    echo "- pinning: wrk on CPU $LOADGEN_CPUS, emulator on CPU $UPSTREAM_CPUS, gateway (nginx: 1 worker; Pingora and nxgate: 1 worker thread) on CPU $GATEWAY_CPUS"
  else
    echo "- pinning: none (every process may use every CPU)"
  fi
  echo "- ${DURATION} s measured per row after ${WARMUP} s warm-up at the same concurrency; rows interleaved per concurrency;" \
    "wrk -t1, POST $PATH_ with a 1024-byte JSON body; load average before $LOAD_BEFORE, after $LOAD_AFTER"
  echo "- nginx-lua: nginx + libnginx-mod-http-lua doing nxgate's whole job for the MD5 tenant (bench/nginx-lua.conf.tmpl:" \
    "bearer key, sign, ngx.location.capture over a keep-alive pool to the verifying emulator, verify the answer, access log)"
  if [ "$IDLE" = 1 ]; then
    echo "- idle and flood rows (after the others): fresh nginx, nginx-lua and nxgate-md5 instances, same pinning" \
      "(nginx worker_connections $WCONN); caller connections from bench/idle_conns.py and wrk on CPU $LOADGEN_CPUS; ${IDLE_SECS} s in all"
  fi
} >"$BASE.head.md"
bash "$ROOT/bench/report.sh" "$BASE" | tee "$OUT"
echo "results: $OUT (raw: ${OUT%.md}.tsv)" >&2
