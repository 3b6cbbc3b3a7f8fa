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

.PHONY: cluster-tools cluster-up cluster-down e2e-k8s

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
