"""The policy tests run many tiny tensor ops: one intra-op thread avoids OpenMP overhead (and
contention on busy CI machines), which otherwise dominates their runtime by orders of magnitude."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _single_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
