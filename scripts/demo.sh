#!/usr/bin/env bash
# The demo: emulator + gateway on loopback, a signed and verified round trip, a tampered
# response being refused, a campaign's callbacks (through a receiver outage) and a replayed
# Idempotency-Key. Needs no NXCloud account.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo run --locked --quiet -- demo
