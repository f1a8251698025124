"""Shared fixtures: the embedded tiny Qwen2-VL, built once per machine into the project cache."""

import os

import pytest

# SGLang's Triton kernels run in Triton's interpreter on a CPU-only machine (tests/fast/sglang/test_triton_views.py).
# It must be set before anything imports triton, which SGLang does at import: here, before any test module loads.
if not os.environ.get("CUDA_VISIBLE_DEVICES") and not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def tiny_model_dir():
    from vlmodels.tiny_qwen2vl import ensure_tiny_qwen2vl

    return ensure_tiny_qwen2vl()
