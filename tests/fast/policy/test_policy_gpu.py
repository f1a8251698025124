"""The policy library on a CUDA device: same statistics and the same selections as on the CPU.

Marked `gpu`: skipped on machines without CUDA (CI, developers' CPUs); run on a GPU host with
`pytest -m gpu tests/fast/policy`.
"""

import pytest
import torch

from radix_ext.policy import PromptLayout, attention_stats, available_policies, get_policy

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _layer_inputs(seed, H=8, Hkv=2, m=700, d=64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(H, m, d, generator=g) * 2, torch.randn(Hkv, m, d, generator=g)


def test_attention_stats_on_cuda_match_the_cpu():
    q, k = _layer_inputs(0)
    rows = torch.arange(600, 700)
    cpu = attention_stats(q[:, rows], k, rows, row_chunk=32, key_chunk=128)
    gpu = attention_stats(q[:, rows].cuda(), k.cuda(), rows.cuda(), row_chunk=32, key_chunk=128)
    assert gpu.column_sums.is_cuda
    torch.testing.assert_close(gpu.column_sums.cpu(), cpu.column_sums, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gpu.sparsity.cpu(), cpu.sparsity, rtol=0, atol=2e-4)


@pytest.mark.parametrize("policy", available_policies())
def test_selections_from_cuda_stats_equal_cpu_selections(policy):
    layout = PromptLayout(700, [(20, 600)])
    chosen = get_policy(policy)
    rows = chosen.query_rows(layout)
    selections = {}
    for device in ("cpu", "cuda"):
        stats = []
        for layer in range(4):
            q, k = _layer_inputs(layer)
            stats.append(attention_stats(q[:, rows].to(device), k.to(device), rows.to(device)))
        selections[device] = chosen.select(stats, layout, 0.1)
    cpu, gpu = selections["cpu"], selections["cuda"]
    assert gpu.layer_budgets == cpu.layer_budgets
    for a, b in zip(cpu.keep, gpu.keep, strict=True):
        assert not b.is_cuda
        overlap = len(set(a.tolist()) & set(b.tolist())) / len(a)
        assert overlap >= 0.98  # float32 sums in another order may swap near-ties at the cut
