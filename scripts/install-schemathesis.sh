#!/usr/bin/env bash
# Installs schemathesis (PyPI, pinned) into .abide/schemathesis/ (a Python venv) when it is
# missing or another version; used by the fuzz test (integration-tests/src/fuzz.test.ts) and
# `npm run fuzz`. Needs python3; installs Debian's python3-venv with apt when the venv module is
# missing (CI runs as root on Debian; elsewhere through sudo).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
version="4.32.5"
venv=".abide/schemathesis"

if [[ -x "${venv}/bin/st" ]] && [[ "$("${venv}/bin/st" --version 2>/dev/null)" == *"${version}" ]]; then
  exit 0
fi

if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    sudo="sudo"
  fi
  ${sudo} apt-get update && ${sudo} env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv
fi

rm -rf "${venv}"
mkdir -p .abide
python3 -m venv "${venv}"
"${venv}/bin/python" -m pip install --quiet --disable-pip-version-check "schemathesis==${version}"
"${venv}/bin/st" --version
