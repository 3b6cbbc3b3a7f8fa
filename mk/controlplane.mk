# The test control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl,
# kwok and helm, built from the Go modules in tools/controlplane into
# $(CACHE)/controlplane/<versions>/bin (print it with tools/controlplane/bindir).
CONTROLPLANE_BIN := $(shell CACHE=$(CACHE) tools/controlplane/bindir)
export BECO_CONTROLPLANE_BIN ?= $(CONTROLPLANE_BIN)

.PHONY: controlplane controlplane-up controlplane-down

controlplane:  ## build (or reuse from the cache) the test Kubernetes control plane
	@CACHE=$(CACHE) tools/controlplane/build.sh

controlplane-up: venv controlplane  ## start a control plane in .state/cluster (prints the kubeconfig)
	$(PY) -m tests.cluster up --workdir .state/cluster

controlplane-down: venv  ## stop the control plane started by controlplane-up
	$(PY) -m tests.cluster down --workdir .state/cluster

TEST_DEPS += controlplane
