#!/usr/bin/env bash
# Runs nxgate's cargo-fuzz targets (fuzz/): config parsing, response verification, and
# what crosses the gateway (headers, routes, tenant selection). Each target runs for
# NXGATE_FUZZ_SECS seconds (default 60); any crash, panic, timeout or OOM fails the script.
#
# Works on a stable toolchain: cargo-fuzz needs nightly-only rustc flags, which
# RUSTC_BOOTSTRAP=1 unlocks. Built without a sanitizer (all of the fuzzed code is safe
# Rust) and in the dev profile. The targets depend on nxgate-core only, so no Pingora is
# compiled; the instrumented build goes to fuzz/target (ignored) so its RUSTFLAGS never
# invalidate the workspace's own target/.
# New inputs the fuzzer finds go to fuzz/target/corpus/ (ignored); the seeds in
# fuzz/corpus/ are only read. Crashing inputs are kept in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${NXGATE_FUZZ_SECS:-60}"
targets=(config_parse verify_response request_headers)

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
export CARGO_PROFILE_DEV_DEBUG=0
export CARGO_TARGET_DIR="$PWD/fuzz/target"
flags=(--sanitizer none --dev)

cargo fuzz build "${flags[@]}"

failed=()
for t in "${targets[@]}"; do
  work="fuzz/target/corpus/$t"
  mkdir -p "$work"
  echo "== fuzzing $t for ${secs}s"
  if ! cargo fuzz run "${flags[@]}" "$t" "$work" "fuzz/corpus/$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
    failed+=("$t")
  fi
done

if ((${#failed[@]})); then
  echo "fuzz targets failed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "all fuzz targets ran ${secs}s without a crash"
