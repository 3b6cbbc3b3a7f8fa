# The real test cluster: the control plane (mk/controlplane.mk) plus three real nodes
# (kubelet, containerd, kube-proxy, kube-router) in zones a, b, c, each in its own network
# namespace, with CoreDNS and the local-path StorageClass; every image built here.
# See tests/cluster/real.py and docs/testing.md.
CLUSTER_BIN := $(shell CACHE=$(CACHE) tools/cluster/bindir)
export BECO_CLUSTER_BIN ?= $(CLUSTER_BIN)
REAL_CLUSTER_DIR ?= $(CURDIR)/.state/real-cluster
E2E_K8S_DIR ?= $(CURDIR)/.state/e2e-k8s
# One real cluster per host: its network namespaces, kubelet paths and sysctls are fixed.
# Runs from several checkouts take turns on this lock instead of tearing each other down.
REAL_CLUSTER_LOCK ?= /run/lock/beco-real-cluster.lock
# What e2e-k8s runs; test paths in PYTEST_ARGS run instead (e.g. PYTEST_ARGS='e2e/kubernetes/test_upgrade.py').
E2E_K8S_TESTS ?= tests/realcluster e2e/kubernetes

.PHONY: cluster-tools cluster-up cluster-down e2e-k8s e2e-kind

cluster-tools:  ## build (or reuse) CoreDNS, kube-router, crictl, local-path-provisioner
	@CACHE=$(CACHE) tools/cluster/build.sh

cluster-up: venv system-packages controlplane cluster-tools base-image  ## start the real 3-zone cluster in .state/real-cluster
	$(PY) -m tests.cluster real-up --workdir $(REAL_CLUSTER_DIR) --images "$(CLUSTER_IMAGES)"
	@echo 'eval "$$($(PY) -m tests.cluster env --workdir $(REAL_CLUSTER_DIR)/control-plane)"'

cluster-down: venv  ## stop the real cluster and undo everything it changed on the host
	$(PY) -m tests.cluster real-down --workdir $(REAL_CLUSTER_DIR)

# Brings the real cluster up (inside pytest, one per test module), runs the cluster's own
# tests and e2e/kubernetes, and tears every cluster down, also when a test fails or pytest is
# killed (the real-down afterwards finds what a killed run left).
e2e-k8s: venv system-packages controlplane cluster-tools base-image image  ## the e2e suite on the real cluster
	@mkdir -p $(dir $(REAL_CLUSTER_LOCK)); exec 8>$(REAL_CLUSTER_LOCK); \
	flock -n 8 || { echo "another real cluster is running on this host; waiting for it"; flock 8; }; \
	rc=0; BECO_REAL_CLUSTER=1 BECO_E2E_WORKDIR=$(E2E_K8S_DIR) BECO_E2E_IMAGE=$(IMAGE) \
	  $(PY) -m pytest -q -ra -p no:cacheprovider $(or $(filter tests/% e2e/%,$(PYTEST_ARGS)),$(E2E_K8S_TESTS)) $(filter-out tests/% e2e/%,$(PYTEST_ARGS)) || rc=$$?; \
	$(PY) -m tests.cluster real-down --workdir $(E2E_K8S_DIR) >/dev/null; exit $$rc

# The same e2e suite on a kind cluster, where Docker exists (not exercised here: no Docker).
# Three workers labelled with zones a, b, c; our image loaded with `kind load docker-image`.
KIND_CLUSTER ?= beco-e2e
KIND_IMAGE ?= beco:e2e
KIND_KUBECONFIG ?= $(CURDIR)/.state/kind-kubeconfig
e2e-kind: venv  ## the e2e suite on a kind cluster (needs docker and kind; not run here)
	@for t in docker kind kubectl helm; do command -v $$t >/dev/null || { \
	  echo "make e2e-kind needs $$t on PATH (docker, kind, kubectl, helm); this machine has no" \
	    "Docker: use make e2e-k8s (the real cluster of tests/cluster/real.py)" >&2; exit 2; }; done
	@docker info >/dev/null 2>&1 || { echo "make e2e-kind: the Docker daemon is not reachable" >&2; exit 2; }
	docker build -t $(KIND_IMAGE) .
	mkdir -p $(CURDIR)/.state
	printf '%s\n' 'kind: Cluster' 'apiVersion: kind.x-k8s.io/v1alpha4' 'nodes:' '- role: control-plane' \
	  '- {role: worker, labels: {topology.kubernetes.io/zone: a}}' \
	  '- {role: worker, labels: {topology.kubernetes.io/zone: b}}' \
	  '- {role: worker, labels: {topology.kubernetes.io/zone: c}}' > $(CURDIR)/.state/kind.yaml
	kind create cluster --name $(KIND_CLUSTER) --config $(CURDIR)/.state/kind.yaml --kubeconfig $(KIND_KUBECONFIG) --wait 180s
	rc=0; kind load docker-image $(KIND_IMAGE) --name $(KIND_CLUSTER) && \
	  BECO_REAL_CLUSTER=1 BECO_E2E_KUBECONFIG=$(KIND_KUBECONFIG) BECO_E2E_IMAGE=$(KIND_IMAGE) \
	  $(PY) -m pytest -q -ra -p no:cacheprovider e2e/kubernetes $(PYTEST_ARGS) || rc=$$?; \
	kind delete cluster --name $(KIND_CLUSTER); exit $$rc
