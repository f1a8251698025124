# vlcache-serve images, two targets (README "Deploy"):
#   docker build --target gpu -t vlcache-serve:gpu .   # SGLang 0.5.23 + CUDA deps + the plugin; mount a model
#   docker build --target cpu -t vlcache-serve:cpu .   # the CPU lock, the embedded grid-VQA model (models/grid-vqa) copied in
# Both: non-root (uid 10001), no compilers or pip caches in the final stage, a HEALTHCHECK on the
# gateway's /health, the venv at /opt/venv on PATH. Linted by hadolint in `make test`
# (tests/fast/deploy); never built in CI (no container engine there).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- gpu: build the venv ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS gpu-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY radix_ext ./radix_ext
COPY service ./service
COPY vlmodels ./vlmodels
# `.[gpu]` = sglang==0.5.23 with its own CUDA pins (torch, flashinfer, sglang-kernel, torchcodec);
# smg (SMG, the router) for the scale-out layout (deploy/components/router). Not editable: the final stage
# carries the venv only. The CPU shims' .pth is never written here.
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir ".[gpu]" "smg==1.13.0"

# --- gpu: the final image -----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS gpu
# FFmpeg's shared libraries: torchcodec (SGLang's video decoder) loads them at run time.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --home-dir /tmp vlcache
COPY --from=gpu-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HF_HOME=/tmp/hf \
    SGLANG_PLUGINS=vlcache
USER 10001
EXPOSE 8000 30000
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
# The gateway on :8000 starts SGLang (plugin selected) on loopback: pass --model /models/<name>.
# In Kubernetes each container overrides this (deploy/base: `sglang` and `gateway`).
ENTRYPOINT ["vlcache-serve", "--device", "cuda", "--host", "0.0.0.0"]

# --- cpu: build the venv from the lock and the embedded model ------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY constraints/cpu.lock ./constraints/cpu.lock
COPY scripts/install_cpu.sh ./scripts/install_cpu.sh
COPY pyproject.toml README.md ./
COPY radix_ext ./radix_ext
COPY cpu_shims ./cpu_shims
COPY service ./service
COPY vlmodels ./vlmodels
# The embedded model (trained, committed; 2 MB): the container starts with no download.
COPY models/grid-vqa ./models/grid-vqa
# The same install as `make install`: the exact lock with --no-deps (CPU torch, SGLang without its
# CUDA pins), the project editable from /app, the CPU shims' .pth.
RUN VENV=/opt/venv bash scripts/install_cpu.sh

# --- cpu: the final image -----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /tmp vlcache
COPY --from=cpu-build /opt/venv /opt/venv
COPY --from=cpu-build /app /app
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HF_HOME=/tmp/hf \
    HF_HUB_OFFLINE=1 \
    SGLANG_PLUGINS=vlcache
USER 10001
EXPOSE 8000 30000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
# No arguments: the embedded model on CPU, SGLang as a child on loopback, the gateway on :8000.
ENTRYPOINT ["vlcache-serve", "--host", "0.0.0.0"]
