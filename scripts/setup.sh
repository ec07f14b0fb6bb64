#!/usr/bin/env bash
# Installs what a fresh Debian machine with a Rust toolchain lacks for nxgate.
# Sourced by demo.sh and test.sh; safe to run again (installs only what is missing).
set -euo pipefail

[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null || { echo "nxgate needs a Rust toolchain (cargo) on PATH" >&2; exit 1; }

nxgate_install() {
  # Debian package names for the commands passed as "command:package".
  local missing=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing: ${missing[*]}" >&2
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# pingora-core builds zlib-ng, which needs cmake and a C compiler.
nxgate_install cmake:cmake cc:gcc
