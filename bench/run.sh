#!/usr/bin/env bash
# nxgate load benchmark: what the gateway costs, against the physical limit (direct to the
# emulator) and a plain reverse proxy (nginx), in one run on loopback. See BENCHMARKS.md.
#
#   bash bench/run.sh            # installs wrk + nginx if missing, builds --release, runs
#
# Knobs (environment): DURATION=10 (s measured per row), WARMUP=2 (s per row, not measured),
# CONNS="1 16 128", PIN=1 (0 = no CPU pinning), LOADGEN_CPUS=0 UPSTREAM_CPUS=0
# GATEWAY_CPUS=1 (taskset lists), BIG=1 (0 = skip the 1 MiB memory rows),
# OUT=bench/results/latest.md, KEEP=0 (1 = keep the temp dir with configs and logs).
#
# Everything listens on 127.0.0.1 (free ports picked at start), every wrk run is bounded by
# -d, and every process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-"1 16 128"}
PIN=${PIN:-1}
LOADGEN_CPUS=${LOADGEN_CPUS:-0}
UPSTREAM_CPUS=${UPSTREAM_CPUS:-0}
GATEWAY_CPUS=${GATEWAY_CPUS:-1}
BIG=${BIG:-1}
OUT=${OUT:-bench/results/latest.md}
KEEP=${KEEP:-0}
BIG_CONNS=${BIG_CONNS:-"16 128"}
BIG_BYTES=1048576

# ---------------------------------------------------------------- prerequisites and build
source scripts/setup.sh
source bench/lib.sh
nxgate_install wrk:wrk curl:curl taskset:util-linux
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || nxgate_install nginx:nginx
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
echo "building nxgate (release)..." >&2
cargo build --release --locked >&2
# The bare-Pingora baseline: reuses nxgate's compiled dependencies (same lock, same target dir).
cargo build --release --locked -p pingora-passthrough >&2
BIN=$ROOT/target/release/nxgate
PASSTHROUGH=$ROOT/target/release/pingora-passthrough

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

for v in P_EMU_PLAIN P_EMU P_NGINX P_PT P_NOLOG A_NOLOG P_MD5 P_SHA P_LIM P_BIG A_MD5 A_SHA A_LIM A_BIG; do free_port "$v"; done

# ---------------------------------------------------------------- configs
gateway_config() { # name port admin_port uuid secret_env algorithm key extra_tenant_yaml limits_yaml
  cat >"$WORK/$1.yaml" <<EOF
listen: ["127.0.0.1:$2"]
upstream:
  url: "http://127.0.0.1:$P_EMU"
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
[ "$PIN" = 1 ] || sed -i 's/^worker_processes 1;/worker_processes auto;/' "$WORK/nginx.conf"

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
URL_PT=http://127.0.0.1:$P_PT$PATH_
URL_NOLOG=http://127.0.0.1:$P_NOLOG$PATH_
URL_MD5=http://127.0.0.1:$P_MD5$PATH_
URL_SHA=http://127.0.0.1:$P_SHA$PATH_
URL_LIM=http://127.0.0.1:$P_LIM$PATH_
wait_ready "$URL_DIRECT" "$KEY_MD5"
wait_ready "$URL_NGINX" "$KEY_MD5"
wait_ready "$URL_PT" "$KEY_MD5"
wait_ready "$URL_NOLOG" "$KEY_MD5"
wait_ready "$URL_MD5" "$KEY_MD5"
wait_ready "$URL_SHA" "$KEY_SHA"
wait_ready "$URL_LIM" "$KEY_LIM"
NGINX_PIDS() { echo "$PID_nginx" $(pgrep -P "$PID_nginx" || true); }

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
reset_hwm() { local p; for p in "$@"; do echo 5 >"/proc/$p/clear_refs" 2>/dev/null || true; done; }
truncate_logs() { local f; for f in "$WORK"/*.log; do : >"$f"; done; }
CLK_TCK=$(getconf CLK_TCK)
RAW="$WORK/raw.tsv"
printf 'row\tconns\tbody\trequests\tduration_us\tp50_us\tp99_us\tp999_us\tmax_us\terrors\tgw_cpu_ticks\tgw_hwm_kib\tup_cpu_ticks\n' >"$RAW"

measure() { # row conns body_bytes url key "gateway pids" upstream_pid
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
    "$((g1 - g0))" "$hwm" "$((u1 - u0))" >>"$RAW"
  check "$url" "$key" || { echo "sanity check failed after $row ($url)" >&2; exit 1; }
  truncate_logs
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
echo "measuring (${DURATION}s per row after ${WARMUP}s warm-up; load average $LOAD_BEFORE)..." >&2
# Interleaved: all five rows at one concurrency, then the next concurrency.
for c in $CONNS; do
  measure direct "$c" 1024 "$URL_DIRECT" "$KEY_MD5" "" "$PID_emu_plain"
  measure nginx "$c" 1024 "$URL_NGINX" "$KEY_MD5" "$(NGINX_PIDS)" "$PID_emu_plain"
  measure pingora-passthrough "$c" 1024 "$URL_PT" "$KEY_MD5" "$PID_passthrough" "$PID_emu_plain"
  measure nxgate-md5 "$c" 1024 "$URL_MD5" "$KEY_MD5" "$PID_gw_md5" "$PID_emu"
  measure nxgate-sha256 "$c" 1024 "$URL_SHA" "$KEY_SHA" "$PID_gw_sha256" "$PID_emu"
  measure nxgate-md5-limits "$c" 1024 "$URL_LIM" "$KEY_LIM" "$PID_gw_limits" "$PID_emu"
  measure nxgate-md5-nolog "$c" 1024 "$URL_NOLOG" "$KEY_MD5" "$PID_gw_nolog" "$PID_emu"
done

BIG_IDLE_KIB=0
if [ "$BIG" = 1 ]; then
  # A fresh gateway, so its peak is this test's alone; the others are stopped to free CPU.
  kill "$PID_gw_md5" "$PID_gw_sha256" "$PID_gw_limits" "$PID_gw_nolog" "$PID_nginx" "$PID_passthrough" 2>/dev/null || true
  start gw-big "$GATEWAY_CPUS" "$BIN" run -c "$WORK/big.yaml"
  URL_BIG=http://127.0.0.1:$P_BIG$PATH_
  wait_ready "$URL_BIG" "$KEY_MD5"
  sleep 1
  BIG_IDLE_KIB=$(awk '/^VmRSS/{print $2}' "/proc/$PID_gw_big/status")
  for c in $BIG_CONNS; do
    measure nxgate-md5-1MiB "$c" "$BIG_BYTES" "$URL_BIG" "$KEY_MD5" "$PID_gw_big" "$PID_emu"
  done
fi
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- report
mkdir -p "$(dirname "$OUT")"
BASE=${OUT%.md}
cp "$RAW" "$BASE.tsv"
# CONN_BUF: the fixed per-connection buffers besides the two bodies: Pingora's three of
# 64 KiB (the downstream L4 read buffer, DEFAULT_L4_READ_BUFFER_SIZE, and the request and
# upstream response body readers' BODY_BUFFER_SIZE) and nxgate's 16 KiB downstream write
# buffer (server::DOWNSTREAM_WRITE_BUFFER).
printf 'CLK_TCK=%s\nBIG_IDLE_KIB=%s\nMAX_REQ=%s\nMAX_RESP=%s\nCONN_BUF=212992\n' \
  "$CLK_TCK" "$BIG_IDLE_KIB" "$MAX_REQ" "$MAX_RESP" >"$BASE.env"
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
} >"$BASE.head.md"
bash "$ROOT/bench/report.sh" "$BASE" | tee "$OUT"
echo "results: $OUT (raw: ${OUT%.md}.tsv)" >&2
