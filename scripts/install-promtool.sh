#!/usr/bin/env bash
# Installs promtool, which tests/observability.rs checks and unit-tests the alerting rules
# in deploy/prometheus/ with, if it is missing:
#   promtool   (Debian prometheus)   `promtool check rules` / `promtool test rules`
# Debian ships promtool only inside the prometheus package; its postinst may try to start
# the prometheus service, which fails harmlessly where there is no init system (a
# container): what counts is that the package installs and promtool runs.
# Safe to run again: silent when promtool is already there.
# Can be sourced (by scripts/test.sh) or run on its own.
(
set -euo pipefail

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"

if ! command -v promtool >/dev/null 2>&1; then
  echo "installing: prometheus (for promtool)" >&2
  $sudo apt-get update -qq >&2
  # policy-rc.d exit 101 would be the polite way to keep the service from starting, but
  # it is machine-wide state: leave it alone and let invoke-rc.d fail in a container.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >&2
fi

command -v promtool >/dev/null 2>&1 || {
  echo "install-promtool: promtool is still not on PATH after installing prometheus" >&2
  exit 1
}
promtool --version >/dev/null 2>&1 || {
  echo "install-promtool: promtool is on PATH but does not run" >&2
  exit 1
}
)
