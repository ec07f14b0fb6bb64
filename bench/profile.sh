#!/usr/bin/env bash
# Where a proxied request's CPU goes, counted rather than timed (so it holds on a busy
# machine): user-space instructions per request under valgrind's callgrind, and system
# calls per request under strace, for nginx, bare Pingora and nxgate, each in front of the
# emulator on loopback. Hardware counters (perf stat -e instructions) are not available in
# this VM; callgrind counts instructions exactly (it cannot see the kernel, strace covers
# that side).
#
#   bash bench/profile.sh        # after bench/run.sh has built everything (or it builds)
#   ONLY="nxgate-md5 nxgate-md5-nolog" bash bench/profile.sh   # only these rows
#   (rows: nginx pingora-passthrough nxgate-md5 nxgate-md5-nolog nxgate-md5-limits)
#   NXGATE_BIN=/path/to/nxgate ONLY=nxgate-md5 bash bench/profile.sh   # a prebuilt nxgate
#
# Output: a markdown table on stdout and in $SUMMARY (default bench/results/profile.md,
# tracked), and the raw callgrind files under $OUT_DIR (default bench/results/raw/profile,
# ignored by git: they are megabytes and carry machine paths) for
# `callgrind_annotate --inclusive=yes FILE`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT_DIR=${OUT_DIR:-bench/results/raw/profile}
SUMMARY=${SUMMARY:-bench/results/profile.md}
case $SUMMARY in /*) ;; *) SUMMARY=$ROOT/$SUMMARY ;; esac
SECS=${SECS:-10}

source scripts/setup.sh
source bench/lib.sh
nxgate_install wrk:wrk curl:curl valgrind:valgrind strace:strace taskset:util-linux
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || nxgate_install nginx:nginx
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [ -n "${NXGATE_BIN:-}" ]; then
  # A prebuilt nxgate (another commit's, say), as in bench/run.sh; the rows other than
  # nxgate's still come from this tree.
  BIN=$(realpath "$NXGATE_BIN")
else
  cargo build --release --locked >&2
  BIN=$ROOT/target/release/nxgate
fi
if [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" pingora-passthrough "* ]]; then
  cargo build --release --locked -p pingora-passthrough >&2
fi
PASSTHROUGH=$ROOT/target/release/pingora-passthrough
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)

bench_workdir profile
for v in P_PLAIN P_EMU P_GW; do free_port "$v"; done

single_tenant_gateway "$WORK/gw.yaml" "$P_GW" "$P_EMU"
# The same tenant with a rate limit and a concurrency cap that never refuse: what admission
# costs when it is configured (bench/run.sh's nxgate-md5-limits row).
sed 's/^    client_keys_sha256: .*/&\n    rate_limit: { per_second: 10000000, burst: 10000000 }\n    max_in_flight: 100000/' \
  "$WORK/gw.yaml" >"$WORK/gw-limits.yaml"
nginx_conf "$WORK" "$P_PLAIN" "$P_GW" "master_process off;"
taskset -c 0 "$BIN" emulator --listen "127.0.0.1:$P_PLAIN" --tenant "$UUID=$SECRET" --skip-request-verification >"$WORK/emu-plain.log" 2>&1 &
PIDS+=($!)
taskset -c 0 "$BIN" emulator --listen "127.0.0.1:$P_EMU" --tenant "$UUID=$SECRET" >"$WORK/emu.log" 2>&1 &
PIDS+=($!)
printf '{"data":"%s"}' "$(head -c $((1024 - 11)) /dev/zero | tr '\0' x)" >"$WORK/body.json"
URL=http://127.0.0.1:$P_GW/callcentre/api/v3/ping
load() { # conns secs
  BODY_BYTES=1024 CLIENT_KEY=$KEY taskset -c 0 wrk -t1 -c"$1" -d"$2s" -s "$ROOT/bench/post.lua" "$URL" | grep '^RESULT' | grep -o 'requests=[0-9]*' | cut -d= -f2
}
ready() {
  local i
  for i in $(seq 1 150); do
    curl -s -o /dev/null -m 2 -H "authorization: Bearer $KEY" --data-binary @"$WORK/body.json" "$URL" && return 0
    sleep 0.2
  done
  echo "not ready: $URL" >&2; return 1
}

ROWS=()
profile() { # name cmd...   (the target listens on $URL; the process to count is the one started)
  local name=$1; shift
  # ONLY="nxgate-md5 nxgate-md5-nolog" profiles just those rows (e.g. before/after a change).
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return 0; fi
  echo "  $name: callgrind..." >&2
  valgrind --tool=callgrind --callgrind-out-file="$OUT_DIR/callgrind.$name" "$@" >"$WORK/$name.cg.log" 2>&1 &
  local v=$!
  ready
  load 4 3 >/dev/null
  callgrind_control -z "$v" >/dev/null
  local n; n=$(load 4 "$SECS")
  callgrind_control -d "$v" >/dev/null
  kill "$v"; wait "$v" 2>/dev/null || true
  local dump; dump=$(ls -t "$OUT_DIR/callgrind.$name".* 2>/dev/null | head -1)
  [ -n "$dump" ] && mv "$dump" "$OUT_DIR/callgrind.$name.out"
  rm -f "$OUT_DIR/callgrind.$name" "$OUT_DIR/callgrind.$name".[0-9]*
  local ir; ir=$(callgrind_annotate --threshold=100 --auto=no "$OUT_DIR/callgrind.$name.out" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}')

  echo "  $name: strace..." >&2
  taskset -c 1 "$@" >"$WORK/$name.log" 2>&1 &
  local p=$!
  ready
  # strace spans the whole wrk run, so every request wrk completed was traced.
  strace -c -f -p "$p" -o "$WORK/$name.strace" >/dev/null 2>&1 &
  local st=$!
  sleep 1
  local per; per=$(load 16 3)
  kill -INT "$st" 2>/dev/null || true; wait "$st" 2>/dev/null || true
  kill "$p"; wait "$p" 2>/dev/null || true
  local calls; calls=$(awk '$NF ~ /^[a-z_0-9]+$/ && $NF != "total" && $4 ~ /^[0-9]+$/ {s += $4} END{print s+0}' "$WORK/$name.strace")
  local sends; sends=$(awk '$NF ~ /^(sendto|sendmsg|writev|write)$/ {s += $4} END{print s+0}' "$WORK/$name.strace")
  local top; top=$(awk -v n="$per" '$NF ~ /^[a-z_0-9]+$/ && $NF != "total" && $4 ~ /^[0-9]+$/ {printf "%s %.1f\n", $NF, $4 / n}' "$WORK/$name.strace" \
    | sort -k2 -rn | head -8 | awk '{printf "%s %s, ", $1, $2}' | sed 's/, $//')
  ROWS+=("$name|$n|$ir|$((ir / n))|$per|$calls|$sends|$top")
}
profile nginx "$NGINX" -e "$WORK/nginx-error.log" -c "$WORK/nginx.conf"
profile pingora-passthrough "$PASSTHROUGH" "127.0.0.1:$P_GW" "127.0.0.1:$P_PLAIN"
profile nxgate-md5 "$BIN" run -c "$WORK/gw.yaml"
RUST_LOG=warn profile nxgate-md5-nolog "$BIN" run -c "$WORK/gw.yaml"
profile nxgate-md5-limits "$BIN" run -c "$WORK/gw-limits.yaml"

{
echo "## Instructions and system calls per request ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
echo
echo "callgrind: $SECS s at 4 connections after 3 s warm-up, user-space instructions of the whole proxy process / requests completed."
echo "strace -c -f: attached for a whole 3 s run at 16 connections (strace slows the proxy: the counts per request matter, not the rate)."
echo
echo "| proxy | requests (callgrind) | instructions | instructions / request | vs nginx | syscalls / request | of which send/sendto/writev/write | per request, by call (top 8) |"
echo "|---|---:|---:|---:|---:|---:|---:|---|"
base=""
for r in "${ROWS[@]}"; do
  IFS='|' read -r name n ir per_req win calls sends top <<<"$r"
  [ -z "$base" ] && base=$per_req
  awk -v name="$name" -v n="$n" -v ir="$ir" -v pr="$per_req" -v b="$base" -v w="$win" -v c="$calls" -v s="$sends" -v top="$top" \
    'BEGIN{printf "| %s | %d | %d | %d | %.1f | %.1f | %.1f | %s |\n", name, n, ir, pr, pr / b, c / w, s / w, top}'
done
} | tee "$SUMMARY"
