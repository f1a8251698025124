"""Where the visual tokens are in a prompt, and which rows are "post-vision"."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch

# docs/algorithm.md section 4 (decision): a prompt that ends on a visual token scores with its last 32 rows.
TAIL_ROWS_WHEN_NO_TEXT_AFTER_VISION = 32


@dataclass(frozen=True)
class PromptLayout:
    """A prompt of `num_tokens` tokens whose visual tokens occupy `visual_spans` (`[start, end)`).

    Several images or video frames give several spans, in any order; they must not overlap.
    """

    num_tokens: int
    visual_spans: tuple[tuple[int, int], ...] = ()

    def __init__(self, num_tokens: int, visual_spans=()):
        spans = tuple(sorted((int(s), int(e)) for s, e in visual_spans))
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        for s, e in spans:
            if not 0 <= s < e <= num_tokens:
                raise ValueError(f"visual span [{s}, {e}) is empty or outside the prompt [0, {num_tokens})")
        for (_, end), (start, _) in pairwise(spans):
            if start < end:
                raise ValueError(f"visual spans overlap at position {start}")
        object.__setattr__(self, "num_tokens", int(num_tokens))
        object.__setattr__(self, "visual_spans", spans)

    @property
    def has_visual(self) -> bool:
        return bool(self.visual_spans)

    @property
    def num_visual_tokens(self) -> int:
        return sum(e - s for s, e in self.visual_spans)

    @property
    def post_vision_start(self) -> int | None:
        """`v` of docs/algorithm.md: the first position after the last visual token (None without visual tokens)."""
        return self.visual_spans[-1][1] if self.visual_spans else None

    def post_vision_rows(self) -> torch.Tensor:
        """`P` of docs/algorithm.md: `[v, m)`, or the last `min(32, m)` rows when the prompt ends on a visual token.

        Empty when the prompt has no visual token (VL-Cache then does not compress).
        """
        v = self.post_vision_start
        if v is None:
            return torch.empty(0, dtype=torch.long)
        if v == self.num_tokens:
            v = self.num_tokens - min(TAIL_ROWS_WHEN_NO_TEXT_AFTER_VISION, self.num_tokens)
        return torch.arange(v, self.num_tokens, dtype=torch.long)

    def last_rows(self, n: int) -> torch.Tensor:
        return torch.arange(max(0, self.num_tokens - n), self.num_tokens, dtype=torch.long)

    def all_rows(self) -> torch.Tensor:
        return torch.arange(self.num_tokens, dtype=torch.long)

    def visual_mask(self) -> torch.Tensor:
        mask = torch.zeros(self.num_tokens, dtype=torch.bool)
        for s, e in self.visual_spans:
            mask[s:e] = True
        return mask


def visual_spans_from_ids(token_ids, visual_token_ids) -> list[tuple[int, int]]:
    """Maximal runs of visual placeholder tokens (e.g. `<|image_pad|>`, `<|video_pad|>`) as `[start, end)`."""
    ids = torch.as_tensor(token_ids).flatten()
    is_visual = torch.isin(ids, torch.as_tensor(list(visual_token_ids), dtype=ids.dtype))
    spans, start = [], None
    for pos, flag in enumerate(is_visual.tolist() + [False]):
        if flag and start is None:
            start = pos
        elif not flag and start is not None:
            spans.append((start, pos))
            start = None
    return spans
