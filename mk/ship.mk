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

.PHONY: base-image image test-image chart-crds chart-rbac chart-dashboards chart-sync chart-check

# The local base: minbase bookworm + python3 + venv, rebuilt only when podman lacks it.
base-image:  ## local Debian base image for `make image` (debootstrap, cached in podman)
	@if podman image exists $(BASE_LOCAL); then echo "$(BASE_LOCAL) present"; else \
	  set -e; dir=$$(mktemp -d /var/tmp/beco-base.XXXXXX); \
	  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm $$dir http://deb.debian.org/debian; \
	  chroot $$dir apt-get clean; rm -rf $$dir/var/lib/apt/lists/*; \
	  tar -C $$dir -c . | podman import - $(BASE_LOCAL); rm -rf $$dir; fi

image: base-image  ## the container image (both entrypoints), built with buildah on the local base
	@start=$$(date +%s); \
	buildah bud --runtime $(OCI_RUNTIME) $(PODMAN_LIMITS) --layers --build-arg BASE_IMAGE=$(BASE_LOCAL) \
	  $(if $(wildcard $(PIP_CA)),--secret id=pip_ca$(comma)src=$(PIP_CA)) -t $(IMAGE) -f Dockerfile . && \
	echo "built $(IMAGE) in $$(( $$(date +%s) - start ))s, $$(podman image inspect $(IMAGE) --format '{{.Size}}') bytes"

test-image: image venv  ## run every node role from the image and a tiny network across containers
	BECO_IMAGE=$(IMAGE) BECO_OCI_RUNTIME=$(OCI_RUNTIME) $(PY) -m pytest -q -ra tests/ship/test_image.py -m image -p no:cacheprovider
