"""PromptLayout: span validation and the post-vision rows `P` (docs/algorithm.md sections 1 and 4)."""

import dataclasses

import pytest
import torch

from radix_ext.policy import PromptLayout


def _rows(layout):
    rows = layout.post_vision_rows()
    assert rows.dtype == torch.long and rows.dim() == 1
    return rows.tolist()


def test_single_image_post_vision_rows_start_after_the_image():
    layout = PromptLayout(20, [(3, 12)])
    assert layout.has_visual and layout.num_visual_tokens == 9
    assert layout.post_vision_start == 12
    assert _rows(layout) == list(range(12, 20))


def test_several_spans_in_any_order_are_sorted_and_p_starts_after_the_last():
    layout = PromptLayout(50, [(30, 40), (2, 10), (10, 20)])  # adjacent spans (video frames) are allowed
    assert layout.visual_spans == ((2, 10), (10, 20), (30, 40))
    assert layout.num_visual_tokens == 28
    assert layout.post_vision_start == 40
    assert _rows(layout) == list(range(40, 50))
    mask = layout.visual_mask()
    assert mask.dtype == torch.bool and mask.tolist() == [2 <= i < 20 or 30 <= i < 40 for i in range(50)]


def test_no_visual_token_gives_no_post_vision_rows():
    layout = PromptLayout(30)
    assert not layout.has_visual and layout.num_visual_tokens == 0
    assert layout.post_vision_start is None
    assert _rows(layout) == []
    assert not layout.visual_mask().any()


@pytest.mark.parametrize("m, start, expected_first", [(100, 10, 68), (100, 90, 68), (20, 5, 0), (32, 0, 0), (33, 1, 1)])
def test_prompt_ending_on_a_visual_token_uses_the_last_min_32_m_rows(m, start, expected_first):
    layout = PromptLayout(m, [(start, m)])
    assert layout.post_vision_start == m
    assert _rows(layout) == list(range(expected_first, m))
    assert len(_rows(layout)) == min(32, m)


def test_prompt_ending_on_a_visual_token_after_several_spans():
    layout = PromptLayout(64, [(0, 10), (40, 64)])
    assert _rows(layout) == list(range(32, 64))


def test_last_rows_and_all_rows():
    layout = PromptLayout(10, [(2, 4)])
    assert layout.last_rows(3).tolist() == [7, 8, 9]
    assert layout.last_rows(32).tolist() == list(range(10))  # more than the prompt: the whole prompt
    assert layout.last_rows(0).tolist() == []
    assert layout.all_rows().tolist() == list(range(10))
    assert layout.all_rows().dtype == torch.long and layout.last_rows(3).dtype == torch.long


@pytest.mark.parametrize(
    "spans",
    [
        [(0, 10), (5, 15)],  # overlap
        [(0, 10), (9, 10)],  # second inside the first
        [(0, 30), (10, 12), (20, 25)],  # the first covers both others
        [(5, 5)],  # empty
        [(7, 3)],  # reversed
        [(-1, 4)],  # before the prompt
        [(10, 21)],  # past the end
        [(20, 25)],  # entirely past the end
    ],
)
def test_invalid_spans_are_rejected(spans):
    with pytest.raises(ValueError):
        PromptLayout(20, spans)


def test_negative_length_rejected_and_span_touching_the_end_accepted():
    with pytest.raises(ValueError):
        PromptLayout(-1)
    assert PromptLayout(20, [(0, 20)]).visual_spans == ((0, 20),)


def test_layout_is_frozen_and_hashable():
    a, b = PromptLayout(20, [(1, 3)]), PromptLayout(20, ((1, 3),))
    assert a == b and hash(a) == hash(b)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.num_tokens = 5
