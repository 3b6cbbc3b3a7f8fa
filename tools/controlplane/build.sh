#!/usr/bin/env bash
# Build the test control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, kwok, helm) from the official Go modules into a version-keyed cache directory:
#   $CACHE/controlplane/<k8s>-<etcd>-<kwok>-<helm>/{bin/,kwok-stages/,build.log}
# GOMODCACHE and GOCACHE live under $CACHE too, so a rebuild on the same machine is incremental
# and a run with the binaries present only checks files (well under a second).
#
# One Go module per tool: their dependency graphs differ and `replace` lines (needed for the
# k8s.io/kubernetes staging modules) apply only in the main module.
#
# A part that fails to build is reported with its error; the others are still built. The exit
# status is non-zero if any part is missing (helm and kubectl included: other areas need them).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"
cache="${CACHE:-${BECO_CACHE:-$HOME/.cache/beco}}"
case "$cache" in /*) ;; *) cache="$PWD/$cache" ;; esac
key="$K8S_VERSION-$ETCD_VERSION-$KWOK_VERSION-$HELM_VERSION"
prefix="$cache/controlplane/$key"
bin="$prefix/bin"
parts=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy kwok helm)

complete() {
  [ -f "$prefix/.ok" ] || return 1
  for p in "${parts[@]}"; do [ -x "$bin/$p" ] || return 1; done
  [ -d "$prefix/kwok-stages" ]
}

if complete; then
  echo "control plane cached: $bin"
  exit 0
fi

mkdir -p "$prefix" "$bin"
# Several worktrees share the cache: one builder at a time, the others wait and reuse.
exec 9>"$cache/controlplane/.lock"
if ! flock -n 9; then
  echo "another build of the control plane is running; waiting for it"
  flock 9
fi
if complete; then
  echo "control plane cached: $bin"
  exit 0
fi

# Each version in versions.env must be the one its module requires.
check_pin() {  # module-dir module-path version
  grep -Eq "^(require )?[[:space:]]*$2 $3( // indirect)?\$" "$here/$1/go.mod" || {
    echo "tools/controlplane/$1/go.mod does not require $2 $3 (see versions.env)" >&2
    exit 2
  }
}
check_pin k8s k8s.io/kubernetes "$K8S_VERSION"
check_pin etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
check_pin kwok sigs.k8s.io/kwok "$KWOK_VERSION"
check_pin helm helm.sh/helm/v3 "$HELM_VERSION"

command -v go >/dev/null || export PATH="/usr/local/go/bin:$PATH"
command -v go >/dev/null || { echo "go not found (Go >= 1.26 is needed to build the control plane)" >&2; exit 2; }
export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build"
export GOWORK=off CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" GOTOOLCHAIN=local
k8s_minor="${K8S_VERSION#v1.}"
k8s_minor="${k8s_minor%%.*}"

failed=()
start=$(date +%s)
log="$prefix/build.log"
: >"$log"

build() {  # name module-dir ldflags packages...
  local name=$1 dir=$2 ldflags=$3
  shift 3
  local t0 t1
  t0=$(date +%s)
  echo "building $name ..."
  if (cd "$here/$dir" && go build -trimpath -ldflags "-s -w $ldflags" -o "$bin/" "$@") >>"$log" 2>&1; then
    t1=$(date +%s)
    echo "  $name: $((t1 - t0))s" | tee -a "$log"
  else
    echo "  $name: FAILED (see $log)" | tee -a "$log" >&2
    tail -n 20 "$log" >&2
    failed+=("$name")
  fi
}

build etcd etcd "" go.etcd.io/etcd/server/v3
# Go names the binary after the module path minus its /v3 suffix: "server".
if [ -x "$bin/server" ]; then mv -f "$bin/server" "$bin/etcd"; fi

k8s_ld="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
k8s_ld+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$k8s_minor"
k8s_ld+=" -X k8s.io/component-base/version.gitTreeState=clean"
build kubernetes k8s "$k8s_ld" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl \
  k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy

build kwok kwok "" sigs.k8s.io/kwok/cmd/kwok
build helm helm "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" helm.sh/helm/v3/cmd/helm

# kwok v0.8.0 has no built-in stages; ship the ones from its module next to the binaries.
stages_src="$GOMODCACHE/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage"
if [ -d "$stages_src" ]; then
  rm -rf "$prefix/kwok-stages.tmp"
  mkdir -p "$prefix/kwok-stages.tmp"
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
    pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml \
    volume/fast/pvc-provision.yaml volume/fast/pv-bind.yaml volume/fast/pvc-delete.yaml \
    volume/fast/pv-delete.yaml volume/fast/storage-class.yaml; do
    cp "$stages_src/$f" "$prefix/kwok-stages.tmp/"
  done
  chmod -R u+w "$prefix/kwok-stages.tmp"
  rm -rf "$prefix/kwok-stages"
  mv "$prefix/kwok-stages.tmp" "$prefix/kwok-stages"
else
  echo "kwok stage files not found in $stages_src" >&2
  failed+=(kwok-stages)
fi

for p in "${parts[@]}"; do
  [ -x "$bin/$p" ] || { [[ " ${failed[*]} " == *" $p "* ]] || failed+=("$p"); }
done
echo "total: $(($(date +%s) - start))s" | tee -a "$log"
if [ ${#failed[@]} -gt 0 ]; then
  echo "control plane incomplete; failed: ${failed[*]}" >&2
  exit 1
fi
{
  echo "kubernetes $K8S_VERSION"
  echo "etcd $ETCD_VERSION"
  echo "kwok $KWOK_VERSION"
  echo "helm $HELM_VERSION"
  echo "go $(go env GOVERSION)"
} >"$prefix/versions.txt"
touch "$prefix/.ok"
echo "control plane built: $bin"
