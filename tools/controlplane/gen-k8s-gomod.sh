#!/usr/bin/env bash
# Regenerate k8s/go.mod (and go.sum) for the K8S_VERSION in versions.env: require
# k8s.io/kubernetes and replace each of its staging modules (mapped to ./staging/src in its own
# go.mod, which Go ignores in a dependency) by the published v0.<minor>.<patch> module.
# After a bump, also update ETCD_VERSION (see `grep etcd` in k8s/go.mod) and etcd/go.mod.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/versions.env"
cache="${CACHE:-${BECO_CACHE:-$HOME/.cache/beco}}"
export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build" GOWORK=off GOTOOLCHAIN=local
staging_version="v0.${K8S_VERSION#v1.}"
mod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')"
{
  echo '// Build module for kube-apiserver, kube-controller-manager, kube-scheduler, kubectl,'
  echo '// kubelet and kube-proxy.'
  echo '// k8s.io/kubernetes maps its staging modules to ./staging/src (ignored in a dependency),'
  echo "// so each one is replaced here by its published $staging_version twin. Regenerate with ../gen-k8s-gomod.sh."
  echo 'module beco.local/tools/controlplane/k8s'
  echo
  echo 'go 1.26.0'
  echo
  echo 'tool ('
  for t in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do
    printf '\tk8s.io/kubernetes/cmd/%s\n' "$t"
  done
  echo ')'
  echo
  echo "require k8s.io/kubernetes $K8S_VERSION"
  echo
  echo 'replace ('
  grep -E '=> \./staging/src/' "$mod" | awk '{print $1}' | while read -r m; do
    printf '\t%s => %s %s\n' "$m" "$m" "$staging_version"
  done
  echo ')'
} >"$here/k8s/go.mod"
rm -f "$here/k8s/go.sum"
(cd "$here/k8s" && go mod tidy)
echo "regenerated $here/k8s/go.mod for $K8S_VERSION"
