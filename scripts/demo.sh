#!/usr/bin/env bash
# The demo: emulator + gateway on loopback, a signed and verified round trip, and a
# tampered response being refused. Needs no NXCloud account.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo run --locked --quiet -- demo
