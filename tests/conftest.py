"""Shared fixtures: the embedded tiny Qwen2-VL, built once per machine into the project cache."""

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir():
    from vlmodels.tiny_qwen2vl import ensure_tiny_qwen2vl

    return ensure_tiny_qwen2vl()
