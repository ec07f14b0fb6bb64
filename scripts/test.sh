#!/usr/bin/env bash
# The whole test suite: unit, integration (real binary against the emulator), CLI,
# and secret scans. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# Rate-limit, callback and Redis fleet tests run real redis-server, redis-sentinel and
# redis-cli (cluster create) on loopback ports.
nxgate_install redis-server:redis-server redis-sentinel:redis-sentinel redis-cli:redis-tools
# The h2c test uses curl's HTTP/2 prior-knowledge client.
nxgate_install curl:curl
# tests/deploy.rs lints and validates deploy/ with hadolint, kubernetes-validate, systemd-analyze.
bash scripts/install-deploy-tools.sh
# tests/observability.rs runs promtool (Debian's prometheus package) over the alert rules.
bash scripts/install-promtool.sh
# Style and lints are part of the suite: formatted to rustfmt.toml, no clippy warning.
cargo fmt --all --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo build --locked --workspace --all-targets
# Thread count through the environment: `-- --test-threads` would also reach the
# criterion bench binaries (run once each here, as a smoke test), which refuse it.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
summary() { awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"; }
status=0
# tests/edge.rs floods each TLS listener with 3,000 connections: the test and the gateway
# each hold about 6,000 descriptors. Raise the soft limit to the hard one where allowed.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
RUST_TEST_THREADS="${NXGATE_TEST_THREADS:-4}" cargo test --locked --workspace --exclude nxgate-fuzz --all-targets --no-fail-fast 2>&1 | tee "$log" || status=$?
if [ "$status" -ne 0 ]; then
  summary
  exit "$status"
fi
# Fuzz the parsers for a bounded time (NXGATE_FUZZ_SECS per target, default 60).
bash scripts/fuzz.sh
# One closing line for the whole cargo test run (the fuzzer's output comes after it).
summary
