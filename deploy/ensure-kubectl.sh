#!/usr/bin/env bash
# Makes sure the tools that render k8s/ offline are installed (for the deployment tests and CI):
#   - kubectl: turns YAML into JSON (`kubectl annotate --local -o json`), and renders the
#     kustomizations itself when it embeds kustomize v5 or newer (kubectl 1.27+);
#   - otherwise kustomize v5, built with Go into .abide/bin/kustomize (Debian's kubectl, 1.20,
#     embeds kustomize v2, which knows neither components nor `labels`).
# Idempotent and quick when everything is there. Prints what the tests will use.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$repo/.abide/bin"
kustomize_version="${KUSTOMIZE_VERSION:-v5.7.1}"

log() { echo "[ensure-kubectl] $*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else "$@"
  fi
}

kustomize_major() { # <kustomize binary> → major version, or nothing
  "$1" version 2>/dev/null | sed -n 's/^.*v\([0-9][0-9]*\)\.[0-9].*$/\1/p' | head -n 1
}

if ! command -v kubectl >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    log "kubectl not found: installing Debian's kubernetes-client"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client >/dev/null
  fi
fi
if ! command -v kubectl >/dev/null 2>&1; then
  log "kubectl is missing and could not be installed with apt-get; install kubectl 1.27+ and retry"
  exit 1
fi

embedded="$(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9][0-9]*\)\..*$/\1/p' | head -n 1)"
if [ -n "$embedded" ] && [ "$embedded" -ge 5 ]; then
  log "ok: $(command -v kubectl) (kustomize v$embedded embedded)"
  exit 0
fi

for candidate in "${ABIDE_KUSTOMIZE:-}" "$bin/kustomize" "$(command -v kustomize 2>/dev/null || true)"; do
  if [ -n "$candidate" ] && [ -x "$candidate" ]; then
    major="$(kustomize_major "$candidate")"
    if [ -n "$major" ] && [ "$major" -ge 5 ]; then
      log "ok: $(command -v kubectl) for JSON, $candidate (kustomize v$major) to render"
      exit 0
    fi
  fi
done

if ! command -v go >/dev/null 2>&1; then
  log "kubectl embeds no kustomize v5 and Go is missing: install Go (or kustomize v5 on PATH) and retry"
  exit 1
fi
log "building kustomize $kustomize_version with Go into $bin"
mkdir -p "$bin"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
(cd "$scratch" && GOBIN="$bin" GOFLAGS= go install "sigs.k8s.io/kustomize/kustomize/v5@${kustomize_version}")
log "ok: $(command -v kubectl) for JSON, $bin/kustomize ($("$bin/kustomize" version 2>/dev/null)) to render"
