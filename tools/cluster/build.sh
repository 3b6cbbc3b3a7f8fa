#!/usr/bin/env bash
# Build the real test cluster's extra binaries (CoreDNS, kube-router, crictl,
# local-path-provisioner) from the Go modules in tools/cluster into a version-keyed cache dir:
#   $CACHE/cluster/<coredns>-<kube-router>-<crictl>-<local-path>/{bin/,build.log}
# Same GOMODCACHE/GOCACHE as tools/controlplane/build.sh; a run with the binaries present only
# checks files. kubelet and kube-proxy come with the control plane (tools/controlplane).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"
cache="${CACHE:-${BECO_CACHE:-$HOME/.cache/beco}}"
case "$cache" in /*) ;; *) cache="$PWD/$cache" ;; esac
prefix="$cache/cluster/$COREDNS_VERSION-$KUBE_ROUTER_VERSION-$CRICTL_VERSION-$LOCAL_PATH_VERSION"
bin="$prefix/bin"
parts=(coredns kube-router crictl local-path-provisioner)

complete() {
  [ -f "$prefix/.ok" ] || return 1
  for p in "${parts[@]}"; do [ -x "$bin/$p" ] || return 1; done
}

if complete; then
  echo "cluster binaries cached: $bin"
  exit 0
fi
mkdir -p "$prefix" "$bin"
exec 9>"$cache/cluster/.lock"
if ! flock -n 9; then
  echo "another build of the cluster binaries is running; waiting for it"
  flock 9
fi
if complete; then
  echo "cluster binaries cached: $bin"
  exit 0
fi

check_pin() {  # module-dir module-path version
  grep -Eq "^(require )?[[:space:]]*$2 $3( // indirect)?\$" "$here/$1/go.mod" || {
    echo "tools/cluster/$1/go.mod does not require $2 $3 (see versions.env)" >&2
    exit 2
  }
}
check_pin coredns github.com/coredns/coredns "$COREDNS_VERSION"
check_pin kube-router github.com/cloudnativelabs/kube-router/v2 "$KUBE_ROUTER_VERSION"
check_pin crictl sigs.k8s.io/cri-tools "$CRICTL_VERSION"
check_pin local-path github.com/rancher/local-path-provisioner "$LOCAL_PATH_VERSION"

command -v go >/dev/null || export PATH="/usr/local/go/bin:$PATH"
command -v go >/dev/null || { echo "go not found (Go >= 1.26 is needed)" >&2; exit 2; }
export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build"
export GOWORK=off CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" GOTOOLCHAIN=local

failed=()
start=$(date +%s)
log="$prefix/build.log"
: >"$log"
build() {  # name module-dir ldflags package
  local name=$1 dir=$2 ldflags=$3 pkg=$4 t0
  t0=$(date +%s)
  echo "building $name ..."
  if (cd "$here/$dir" && go build -trimpath -ldflags "-s -w $ldflags" -o "$bin/$name" "$pkg") >>"$log" 2>&1; then
    echo "  $name: $(($(date +%s) - t0))s" | tee -a "$log"
  else
    echo "  $name: FAILED (see $log)" | tee -a "$log" >&2
    tail -n 20 "$log" >&2
    failed+=("$name")
  fi
}
build coredns coredns "-X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" .
build kube-router kube-router \
  "-X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$KUBE_ROUTER_VERSION" \
  github.com/cloudnativelabs/kube-router/v2/cmd/kube-router
build crictl crictl "-X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
  sigs.k8s.io/cri-tools/cmd/crictl
build local-path-provisioner local-path "-X main.VERSION=$LOCAL_PATH_VERSION" \
  github.com/rancher/local-path-provisioner
# The provisioner's upstream manifest (RBAC, Deployment, StorageClass): the harness renders it.
cp "$GOMODCACHE/github.com/rancher/local-path-provisioner@$LOCAL_PATH_VERSION/deploy/local-path-storage.yaml" \
  "$prefix/local-path-storage.yaml"
chmod 644 "$prefix/local-path-storage.yaml"

echo "total: $(($(date +%s) - start))s" | tee -a "$log"
if [ ${#failed[@]} -gt 0 ]; then
  echo "cluster binaries incomplete; failed: ${failed[*]}" >&2
  exit 1
fi
touch "$prefix/.ok"
echo "cluster binaries built: $bin"
