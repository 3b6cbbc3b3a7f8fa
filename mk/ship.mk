# Shipping: the container image, the Helm chart and its checks, dashboards and alerts.
# No Docker engine here: the image is built with buildah on a Debian base made locally by
# debootstrap (python3 from Debian bookworm is 3.11, as the default public base image).

IMAGE ?= localhost/beco:dev
BASE_LOCAL ?= localhost/debian-base:bookworm
# crun refuses this machine's hybrid cgroup v1 layout; runc works. Raising limits is not
# permitted here, so containers get lowered ones.
OCI_RUNTIME ?= runc
PODMAN_LIMITS := --ulimit nofile=1024:1024 --ulimit nproc=1024:1024
CHART := charts/beco-operator
# The host's CA bundle reaches PyPI through this machine's TLS proxy; harmless elsewhere.
PIP_CA ?= /etc/ssl/certs/ca-certificates.crt
comma := ,

.PHONY: base-image image test-image prom-crds chart-sync chart-check

# The local base: minbase bookworm + python3 + venv, rebuilt only when podman lacks it.
base-image:  ## local Debian base image for `make image` (debootstrap, cached in podman)
	@if podman image exists $(BASE_LOCAL); then echo "$(BASE_LOCAL) present"; else \
	  set -e; dir=$$(mktemp -d /var/tmp/beco-base.XXXXXX); trap 'rm -rf $$dir' EXIT; \
	  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm $$dir; \
	  chroot $$dir apt-get clean; rm -rf $$dir/var/lib/apt/lists/*; \
	  tar -C $$dir -c . | podman import - $(BASE_LOCAL); fi

image: base-image  ## the container image (both entrypoints), built with buildah on the local base
	@start=$$(date +%s); \
	buildah bud --runtime $(OCI_RUNTIME) $(PODMAN_LIMITS) --layers --build-arg BASE_IMAGE=$(BASE_LOCAL) \
	  $(if $(wildcard $(PIP_CA)),--secret id=pip_ca$(comma)src=$(PIP_CA)) -t $(IMAGE) -f Dockerfile . && \
	echo "built $(IMAGE) in $$(( $$(date +%s) - start ))s, $$(podman image inspect $(IMAGE) --format '{{.Size}}') bytes"

test-image: image venv  ## run every node role from the image and a tiny network across containers
	$(PY) -m pytest -q -ra tests/ship/test_image.py

# The Prometheus Operator's CRDs, from its Go module (the proxy serves it): the schemas the
# chart's ServiceMonitor/PrometheusRule are validated against, installed into the test cluster.
PROM_OP_VERSION := v0.85.0
export BECO_PROM_CRDS := $(CACHE)/prometheus-operator-crds-$(PROM_OP_VERSION)

prom-crds: $(BECO_PROM_CRDS)/.ok  ## Prometheus Operator CRDs (ServiceMonitor, PodMonitor, PrometheusRule)
$(BECO_PROM_CRDS)/.ok:
	@set -e; dir=$$(cd /tmp && GOFLAGS=-mod=mod go mod download -json \
	  github.com/prometheus-operator/prometheus-operator@$(PROM_OP_VERSION) | \
	  $(PYTHON) -c 'import json,sys; print(json.load(sys.stdin)["Dir"])'); \
	mkdir -p $(BECO_PROM_CRDS); \
	for k in servicemonitors podmonitors prometheusrules; do \
	  cp $$dir/example/prometheus-operator-crd/monitoring.coreos.com_$$k.yaml $(BECO_PROM_CRDS)/; done; \
	chmod 644 $(BECO_PROM_CRDS)/*.yaml; touch $@

# The chart's generated inputs: CRDs and RBAC copied from the operator's sources (one source of
# truth; tests fail when a copy is stale), dashboards and alerts from hack/gen_monitoring.py.
chart-sync: venv  ## refresh the chart's CRDs, RBAC rules, dashboards and alerts
	rm -f $(CHART)/crds/*.yaml && cp crds/*.yaml $(CHART)/crds/
	cp deploy/rbac/operator-rbac.yaml $(CHART)/files/operator-rbac.yaml
	$(PY) $(CHART)/hack/gen_monitoring.py

chart-check: venv prom-crds  ## the chart, dashboard and alert checks only
	$(PY) -m pytest -q -ra tests/ship --ignore=tests/ship/test_image.py

# make test builds the image (cached layers: seconds when nothing changed) and runs the
# container test with the rest (tests/ship/test_image.py reads BECO_IMAGE).
export BECO_IMAGE := $(IMAGE)
export BECO_OCI_RUNTIME := $(OCI_RUNTIME)
TEST_DEPS += prom-crds image
