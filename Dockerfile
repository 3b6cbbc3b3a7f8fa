# syntax=docker/dockerfile:1
# One image for both entrypoints: `beco-node --role rendezvous|validator|user|sst` and
# `beco-operator`. Build with Docker/Podman/Buildah:
#   docker build -t beco:dev .
#   buildah bud --build-arg BASE_IMAGE=localhost/debian-base:bookworm -t localhost/beco:dev .
# BASE_IMAGE must provide python3 (3.11+) with the venv module; both stages use it, so the
# virtualenv copied into the final stage points at the same interpreter.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
# Build tooling pinned too, so the project wheel is built the same way every time.
# Behind a TLS-intercepting proxy, pass its CA: --secret id=pip_ca,src=/path/ca-bundle.crt
RUN --mount=type=secret,id=pip_ca,required=false \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && python3 -m venv /opt/build \
 && /opt/build/bin/pip install -q setuptools==80.9.0 wheel==0.45.1 \
 && python3 -m venv /opt/beco
WORKDIR /src
# 1. the runtime dependencies only (no test or lint tools), binary wheels only (no compiler
#    needed anywhere), every version fixed by requirements.lock. A layer of its own: source
#    changes don't reinstall them.
COPY pyproject.toml requirements.lock ./
RUN --mount=type=secret,id=pip_ca,required=false \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && python3 -c "import tomllib; print('\\n'.join(tomllib.load(open('pyproject.toml','rb'))['project']['dependencies']))" > /tmp/runtime.txt \
 && /opt/beco/bin/pip install -q --only-binary=:all: -c requirements.lock -r /tmp/runtime.txt
# 2. the project itself as a wheel (pure Python), its dependencies already in place;
# 3. fail the build if anything is installed that the lock does not pin exactly.
COPY README.md ./
COPY node ./node
COPY operator ./operator
RUN /opt/build/bin/pip wheel -q --no-deps --no-build-isolation -w /wheels . \
 && /opt/beco/bin/pip install -q --no-index --find-links /wheels -c requirements.lock /wheels/beco-*.whl \
 && /opt/beco/bin/pip freeze --all --exclude pip --exclude setuptools \
    | grep -v '^beco[ =@]' > /tmp/installed.txt \
 && /opt/beco/bin/python -c "import re,sys; n=lambda s: re.sub(r'[-_.]+','-',s).lower(); \
lock={n(l.strip()) for l in open('requirements.lock') if '==' in l}; \
bad=[l.strip() for l in open('/tmp/installed.txt') if n(l.strip()) not in lock]; \
sys.exit('not pinned by requirements.lock: %s' % bad if bad else 0)" \
 && { /opt/beco/bin/pip uninstall -q -y pip setuptools 2>/dev/null || true; } \
 && find /opt/beco -name '__pycache__' -prune -exec rm -rf {} + \
 && /opt/beco/bin/python -c "import beco_node.cli.node_main, beco_operator.main" \
 && test -x /opt/beco/bin/beco-node && test -x /opt/beco/bin/beco-operator

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="beco" \
      org.opencontainers.image.description="BECO identity network node and Kubernetes operator" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric UID so that Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 beco \
 && useradd --system --uid 10001 --gid beco --home-dir /var/lib/beco --create-home \
    --shell /usr/sbin/nologin beco
COPY --from=builder /opt/beco /opt/beco
ENV PATH=/opt/beco/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /var/lib/beco
USER 10001:10001
# Public API 9001 (user nodes), metrics 9100 by default; the operator and the chart set the
# command and flags (`beco-node --role ...` or `beco-operator`).
EXPOSE 9001
CMD ["beco-node", "--help"]
