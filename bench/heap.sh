#!/usr/bin/env bash
# Where the gateway's memory per connection goes, by allocation site: nxgate built with the
# system allocator (heaptrack sees only malloc; the production build uses jemalloc) and run
# under heaptrack in front of a slow emulator, then heaptrack's peak, grouped by the
# innermost frames that name nxgate, Pingora, tokio or http, divided by the connections.
#
#   bash bench/heap.sh                  # 500 requests in flight, NXCloud 100 ms away
#   MODE=idle CONNS=2000 bash bench/heap.sh   # idle keep-alive callers instead
#
# Knobs: MODE=inflight|idle, CONNS=500, SLOW_MS=100, SECS=8 (in-flight load), TOP=30 (rows),
# HEAP_TARGET_DIR=target/heap (its own build, so target/release keeps jemalloc).
# heaptrack slows the gateway, so fewer requests complete than in bench/run.sh; what is
# held per connection is what this counts. Loopback only; every load is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=${MODE:-inflight}
CONNS=${CONNS:-500}
SLOW_MS=${SLOW_MS:-100}
SECS=${SECS:-8}
TOP=${TOP:-30}
HEAP_TARGET_DIR=${HEAP_TARGET_DIR:-target/heap}

source scripts/setup.sh
source bench/lib.sh
nxgate_install heaptrack:heaptrack heaptrack_print:heaptrack wrk:wrk curl:curl
cargo build --release --locked --features system-allocator --target-dir "$HEAP_TARGET_DIR" >&2
BIN=$ROOT/$HEAP_TARGET_DIR/release/nxgate
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

bench_workdir heap
for v in P_EMU P_GW; do free_port "$v"; done
single_tenant_gateway "$WORK/gw.yaml" "$P_GW" "$P_EMU"
"$BIN" emulator --listen "127.0.0.1:$P_EMU" --tenant "$UUID=$SECRET" --fault slow --slow-ms "$SLOW_MS" \
  >"$WORK/emu.log" 2>&1 &
PIDS+=($!)
RUST_LOG=warn heaptrack -o "$WORK/heaptrack" "$BIN" run -c "$WORK/gw.yaml" >"$WORK/gw.log" 2>&1 &
HT=$!
URL=http://127.0.0.1:$P_GW/callcentre/api/v3/ping
for _ in $(seq 1 100); do
  curl -s -o /dev/null -m 2 -H "authorization: Bearer $KEY" --data-binary '{"data":"x"}' "$URL" && break
  sleep 0.2
done
if [ "$MODE" = idle ]; then
  python3 bench/idle_conns.py -n "$CONNS" --key "$KEY" --open-secs 60 --hold-secs 5 "$URL" >&2
else
  BODY_BYTES=1024 CLIENT_KEY=$KEY wrk -t1 -c"$CONNS" -d"${SECS}s" --timeout 10s -s bench/post.lua "$URL" | grep '^RESULT' >&2
fi
GW=$(pgrep -f "^$BIN run -c $WORK/gw.yaml" | head -1)
kill -TERM "$GW"
wait "$HT" || true
heaptrack_print -f "$WORK"/heaptrack*.zst --print-peaks 0 --print-allocators 0 --print-temporary 0 \
  --print-leaks 0 -F "$WORK/stacks.txt" --flamegraph-cost-type peak >/dev/null 2>&1
echo "heap at its peak, $MODE, $CONNS connections (heaptrack; nxgate with the system allocator)"
python3 - "$WORK/stacks.txt" "$CONNS" "$TOP" <<'PY'
import re, sys
path, conns, top = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows, total = [], 0
for line in open(path):
    stack, _, cost = line.rstrip().rpartition(" ")
    total += int(cost)
    rows.append((int(cost), stack.split(";")))
def name(f):
    f = re.sub(r"::h[0-9a-f]{16}", "", f)
    for a, b in (("$LT$", "<"), ("$GT$", ">"), ("$u20$", " "), ("$u7b$$u7b$closure$u7d$$u7d$", "{closure}"), ("..", "::")):
        f = f.replace(a, b)
    return re.sub(r" \(\S+\)$", "", f)[:90]
noise = re.compile(r"alloc::|raw_vec|__rust|_RNv|core::ptr|std::sys|Pin<P>|unsafe_cell|bytes_mut::BytesMut::(reserve|with_capacity)")
print(f"total {total / 1024:.0f} KiB, {total / conns / 1024:.2f} KiB per connection\n")
print("| KiB per connection | allocated in (innermost first) |\n|---:|---|")
for cost, stack in sorted(rows, key=lambda r: -r[0])[:top]:
    frames = [name(f) for f in stack if not noise.search(f)]
    print(f"| {cost / conns / 1024:.2f} | {' < '.join(reversed(frames[-4:]))} |")
PY
