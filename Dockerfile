# cpc-embed: the embedding service, without torch.
#
#   docker build -t cpc-embed .                       # runtime image (the default target)
#   docker build --target train -t cpc-embed-train .  # + torch, for `cpc-embed train/export`
#
# Needs BuildKit (the default builder of current Docker). Behind a TLS-inspecting
# proxy, hand pip the proxy's CA bundle as a build secret; it is mounted only for
# the pip steps and never stored in a layer:
#   docker build --secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt .
# Where no registry is reachable, build a local base first (scripts/docker-base.sh)
# and pass --build-arg BASE_IMAGE=cpc-embed-base:bookworm.
#
# Any base with `python3` (3.11+) and its venv module works: the official slim
# image has it in /usr/local/bin, the Debian base in /usr/bin; both are on PATH.
ARG BASE_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- builder
FROM ${BASE_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Dependencies first, read from pyproject.toml, so that editing the code does
# not reinstall onnxruntime and faiss. Only the base dependencies and the
# `serve` extra: the image never holds torch.
COPY pyproject.toml README.md ./
RUN python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['serve']))" \
        > /tmp/serve-requirements.txt
# EXTRA_PIP adds packages to the image, e.g. `pymilvus` for the Milvus collection
# backend (docker-compose.yml's `milvus` profile); empty by default.
ARG EXTRA_PIP=""
# DL3013: EXTRA_PIP is whatever the builder asks for, pinned or not.
# hadolint ignore=DL3013
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && pip install -r /tmp/serve-requirements.txt \
    && if [ -n "${EXTRA_PIP}" ]; then pip install ${EXTRA_PIP}; fi

# The project itself, not editable; --no-deps because the step above installed
# exactly what `.[serve]` needs. The wheel also carries the `training` package,
# which imports torch only when a training command runs.
COPY service ./service
COPY training ./training
# DL3013 (pin versions) is about registry packages: "." is this project, whose
# dependencies were installed above from its own pyproject.toml.
# hadolint ignore=DL3013
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && pip install --no-deps ".[serve]" \
    && pip check \
    && if python3 -c "import torch" 2>/dev/null; then echo "torch must not be in the serving image" >&2; exit 1; fi

# ---------------------------------------------------------------- train
# Only built on request (`--target train`, or `docker compose --profile train`).
# torch is pinned in the `train` extra; the CPU index keeps the multi-GB CUDA
# build out (pip prefers its 2.13.0+cpu to PyPI's 2.13.0 for the same pin).
FROM builder AS train
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1
# DL3013: "." is this project; torch is pinned in its `train` extra.
# hadolint ignore=DL3013
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && pip install --extra-index-url "${TORCH_INDEX_URL}" ".[serve,train]"
RUN groupadd --system --gid 10001 cpc \
    && useradd --system --uid 10001 --gid cpc --home-dir /tmp --shell /usr/sbin/nologin cpc
WORKDIR /work
USER 10001:10001
ENTRYPOINT ["cpc-embed"]
CMD ["--help"]

# ---------------------------------------------------------------- models
# The default bundles, made readable to everyone: a bundle exported on the host
# may hold owner-only files, which the non-root service could not read. A stage
# of its own, so the runtime image gets them in one layer with the right modes.
FROM ${BASE_IMAGE} AS models
COPY models/ /models/
RUN chmod -R a+rX,go-w /models

# ---------------------------------------------------------------- runtime
# Last, so that a plain `docker build .` builds this stage.
FROM ${BASE_IMAGE} AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CPC_MODELS_DIR=/models \
    CPC_DATA_DIR=/data

# A fixed uid that owns nothing but /data: the code and the models stay
# read-only to the process. /data is created (and chowned) before VOLUME so a
# fresh named volume starts out writable by that user. Home is /tmp, so the
# odd library cache (onnxruntime's telemetry id) has somewhere to go.
RUN groupadd --system --gid 10001 cpc \
    && useradd --system --uid 10001 --gid cpc --home-dir /tmp --shell /usr/sbin/nologin cpc \
    && mkdir -p /data \
    && chown cpc:cpc /data

COPY --from=builder /opt/venv /opt/venv
# The default bundles; mount a folder at /models to serve others.
COPY --from=models /models /models

VOLUME ["/data"]
WORKDIR /data
USER 10001:10001
EXPOSE 8000

# python from the venv, not curl: slim bases have no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["/opt/venv/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

CMD ["cpc-embed", "serve", "--host", "0.0.0.0", "--port", "8000"]
