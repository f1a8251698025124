# GPU image: SGLang 0.5.23 with its CUDA dependencies and the vlcache plugin (entry point
# `sglang.srt.plugins`). The CPU shims in radix_ext/cpu are never activated here: only the CPU
# install script writes their .pth. Not built in CI (no Docker engine on the CI machines).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

WORKDIR /app
COPY pyproject.toml README.md ./
COPY radix_ext ./radix_ext
COPY service ./service
RUN pip install --no-cache-dir ".[gpu]"

ENV SGLANG_PLUGINS=vlcache \
    VLCACHE_CACHE_DIR=/var/cache/vlcache
EXPOSE 8000
# The gateway on :8000 starts SGLang (plugin selected) on loopback; pass --model for a real model.
ENTRYPOINT ["vlcache-serve", "--device", "cuda", "--host", "0.0.0.0"]
