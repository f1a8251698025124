"""attention_stats: the chunked two-pass computation against a float64 dense reference (docs/algorithm.md section 1)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from radix_ext.policy import attention_stats

from policy_test_helpers import dense_reference


def _check_against_reference(q_rows, k, positions, *, p=0.01, scale=None, **chunks):
    stats = attention_stats(q_rows, k, positions, sparsity_threshold=p, scale=scale, **chunks)
    ref_cols, low, high = dense_reference(q_rows, k, positions, p=p, scale=scale)
    H, r = q_rows.shape[:2]
    assert stats.num_rows == r and stats.num_heads == H and stats.num_keys == k.shape[1]
    assert stats.column_sums.dtype == torch.float32 and stats.column_sums.shape == (H, k.shape[1])
    torch.testing.assert_close(stats.column_sums.double(), ref_cols, rtol=1e-5, atol=1e-5)
    assert stats.sparsity.dtype == torch.float32 and stats.sparsity.shape == (H,)
    s = stats.sparsity.double()
    assert bool((s >= low - 1e-6).all() and (s <= high + 1e-6).all()), (s, low, high)
    assert stats.layer_sparsity == pytest.approx(float(s.mean()), abs=1e-6)
    return stats, ref_cols, low


def test_gqa_small_chunks_arbitrary_sorted_rows_match_dense_reference():
    gen = torch.Generator().manual_seed(0)
    m, d = 23, 8
    q = torch.randn(4, m, d, generator=gen) * 3  # sharp enough that some entries fall under p * rowmax
    k = torch.randn(2, m, d, generator=gen)
    positions = torch.tensor([0, 2, 3, 7, 11, 12, 13, 19, 22])
    stats, _, low = _check_against_reference(q[:, positions], k, positions, row_chunk=3, key_chunk=5)
    assert float(low.min()) > 0.05  # the sparsity check is not vacuous
    # Key columns past the last row are never attended; every row's attention sums to 1.
    assert stats.column_sums.sum(1).tolist() == pytest.approx([len(positions)] * 4, rel=1e-5)


def test_gqa_head_mapping_query_head_h_reads_kv_head_h_over_group():
    # KV head 0 has one outstanding key at position 5, KV head 1 at position 9. Every query head points
    # the same way, so the heads that read KV head 0 (h = 0, 1) must put their mass on key 5.
    m, d = 12, 4
    k = torch.zeros(2, m, d)
    k[0, 5, 0] = 10.0
    k[1, 9, 0] = 10.0
    q = torch.zeros(4, 3, d)
    q[..., 0] = 10.0
    positions = torch.tensor([9, 10, 11])
    stats = attention_stats(q, k, positions, row_chunk=2, key_chunk=4)
    assert stats.column_sums.argmax(1).tolist() == [5, 5, 9, 9]
    assert stats.column_sums[:, [5, 5, 9, 9]].diagonal().tolist() == pytest.approx([3.0] * 4, abs=1e-4)


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 30),
    d=st.sampled_from([2, 4, 8]),
    group=st.sampled_from([(1, 1), (2, 1), (4, 2), (4, 4)]),
    temperature=st.sampled_from([0.0, 0.5, 3.0]),
    p=st.sampled_from([0.01, 0.2]),
    row_chunk=st.integers(1, 7),
    key_chunk=st.integers(1, 9),
    data=st.data(),
)
def test_chunked_stats_equal_dense_reference(m, d, group, temperature, p, row_chunk, key_chunk, data):
    heads, kv_heads = group
    seed = data.draw(st.integers(0, 2**16), label="seed")
    positions = sorted(data.draw(st.sets(st.integers(0, m - 1), min_size=1, max_size=m), label="rows"))
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(heads, len(positions), d, generator=gen) * temperature
    k = torch.randn(kv_heads, m, d, generator=gen)
    _check_against_reference(q, k, torch.tensor(positions), p=p, row_chunk=row_chunk, key_chunk=key_chunk)


def test_default_chunks_and_explicit_scale_match_reference():
    gen = torch.Generator().manual_seed(1)
    q, k = torch.randn(4, 40, 16, generator=gen), torch.randn(2, 40, 16, generator=gen)
    positions = torch.arange(40)
    _check_against_reference(q, k, positions)
    _, cols_scaled, _ = _check_against_reference(q, k, positions, scale=1.0)  # not 1/sqrt(16)
    default_cols = dense_reference(q, k, positions)[0]
    assert not torch.allclose(cols_scaled, default_cols, atol=1e-3)  # the scale matters


def test_low_precision_inputs_are_computed_in_float32():
    gen = torch.Generator().manual_seed(2)
    q, k = torch.randn(4, 6, 8, generator=gen), torch.randn(2, 20, 8, generator=gen)
    positions = torch.tensor([3, 8, 9, 15, 18, 19])
    stats = attention_stats(q.bfloat16(), k.bfloat16(), positions, row_chunk=4, key_chunk=7)
    ref_cols, _, _ = dense_reference(q.bfloat16().float(), k.bfloat16().float(), positions)
    assert stats.column_sums.dtype == torch.float32
    torch.testing.assert_close(stats.column_sums.double(), ref_cols, rtol=1e-5, atol=1e-5)


def test_all_zero_queries_give_uniform_attention_and_sparsity_zero():
    m = 10
    positions = torch.tensor([4, 9])
    stats = attention_stats(torch.zeros(4, 2, 8), torch.randn(2, m, 8), positions, row_chunk=1, key_chunk=3)
    assert stats.sparsity.tolist() == [0.0] * 4
    expected = [1 / 5 + 1 / 10] * 5 + [1 / 10] * 5  # row 4 spreads over 5 keys, row 9 over 10
    for h in range(4):
        assert stats.column_sums[h].tolist() == pytest.approx(expected, abs=1e-6)


def test_one_dominant_key_gives_sparsity_near_one():
    m, d = 40, 4
    k = torch.randn(2, m, d) * 0.1
    k[:, 7] = torch.tensor([20.0, 0, 0, 0])
    positions = torch.arange(30, 40)
    q = torch.zeros(4, 10, d)
    q[..., 0] = 5.0
    stats = attention_stats(q, k, positions, row_chunk=4, key_chunk=6)
    causal = float((positions + 1).sum())
    # every causal entry but the dominant one is below p * rowmax
    assert stats.sparsity.tolist() == pytest.approx([(causal - 10) / causal] * 4, abs=1e-6)
    assert stats.layer_sparsity > 0.97
    assert stats.column_sums.argmax(1).tolist() == [7] * 4
    assert stats.column_sums[:, 7].tolist() == pytest.approx([10.0] * 4, abs=1e-4)


def test_zero_rows_give_no_sparsity_and_zero_column_sums():
    k = torch.randn(2, 13, 8)
    stats = attention_stats(torch.zeros(4, 0, 8), k, torch.empty(0, dtype=torch.long))
    assert stats.sparsity is None and stats.layer_sparsity is None
    assert stats.num_rows == 0
    assert stats.column_sums.shape == (4, 13) and stats.column_sums.dtype == torch.float32
    assert not stats.column_sums.any()


@pytest.mark.parametrize(
    "q_shape, k_shape, positions",
    [
        ((4, 2, 8), (2, 10, 4), [0, 1]),  # head dim mismatch
        ((3, 2, 8), (2, 10, 8), [0, 1]),  # H not a multiple of Hkv
        ((4, 2, 8), (2, 10, 8), [0, 1, 2]),  # wrong number of positions
        ((4, 2, 8), (2, 10, 8), [3, 10]),  # past the prompt
        ((4, 2, 8), (2, 10, 8), [-1, 3]),  # negative
    ],
)
def test_invalid_inputs_raise(q_shape, k_shape, positions):
    with pytest.raises(ValueError):
        attention_stats(torch.zeros(q_shape), torch.zeros(k_shape), torch.tensor(positions))


def test_sparsity_count_uses_threshold_on_logits():
    # One row at position 2 sees three keys with A / rowmax = 1, 0.05, 0.5: with p = 0.1 only the second
    # is below p * rowmax; with p = 0.01 none is; with p = 0.6 the second and third are.
    k = torch.zeros(1, 3, 1)
    k[0, :, 0] = torch.tensor([0.0, math.log(0.05), math.log(0.5)])
    q = torch.ones(1, 1, 1)
    stats = attention_stats(q, k, torch.tensor([2]), scale=1.0, sparsity_threshold=0.1)
    assert stats.sparsity.tolist() == pytest.approx([1 / 3])
    stats = attention_stats(q, k, torch.tensor([2]), scale=1.0, sparsity_threshold=0.01)
    assert stats.sparsity.tolist() == [0.0]
    stats = attention_stats(q, k, torch.tensor([2]), scale=1.0, sparsity_threshold=0.6)
    assert stats.sparsity.tolist() == pytest.approx([2 / 3])


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2)])
@pytest.mark.parametrize("rows", [[0, 1, 2], [40, 41, 90, 119], list(range(64, 120))])
def test_single_pass_equals_the_chunked_passes(heads, kv_heads, rows):
    """Small inputs take the one-pass path; tiny chunks force the two chunked passes on the same input."""
    gen = torch.Generator().manual_seed(len(rows) + heads)
    q = torch.randn(heads, len(rows), 16, generator=gen) * 2
    k = torch.randn(kv_heads, 120, 16, generator=gen) * 2
    pos = torch.tensor(rows)
    one = attention_stats(q, k, pos)
    chunked = attention_stats(q, k, pos, row_chunk=2, key_chunk=7)
    assert one.num_rows == chunked.num_rows and one.causal_entries == chunked.causal_entries
    assert torch.allclose(one.column_sums, chunked.column_sums, atol=1e-5)
    assert torch.allclose(one.sparsity, chunked.sparsity, atol=1e-6)
