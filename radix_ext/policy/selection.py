"""The output of a policy, and the two ways policies pick tokens within a layer."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

RECENT_WINDOW_FRACTION = 0.1  # docs/algorithm.md section 3: w[l] = ceil(0.1 * k[l]) most recent tokens always kept


@dataclass
class Selection:
    """Which prompt positions each layer keeps, plus the figures behind the choice.

    `keep[l]`: sorted, unique CPU `LongTensor` of kept prompt positions in layer `l` (all of `[0, m)`
    when `compressed` is False), whatever device the statistics were computed on.
    `layer_budgets[l]` = `len(keep[l])` = `k[l]`.
    """

    policy: str
    options: dict
    budget: float
    num_tokens: int
    keep: list[torch.Tensor]
    compressed: bool
    layer_sparsity: list[float] | None = None  # gamma[l], where the policy computed it
    layer_fractions: list[float] | None = None  # unrounded beta[l], where the policy has them
    reason: str = ""  # why a request was left uncompressed
    layer_budgets: list[int] = field(init=False)

    def __post_init__(self):
        self.layer_budgets = [int(k.numel()) for k in self.keep]

    @property
    def num_layers(self) -> int:
        return len(self.keep)

    @property
    def realized_budget(self) -> float:
        """`sum_l k[l] / (L * m)`."""
        denom = self.num_layers * self.num_tokens
        return sum(self.layer_budgets) / denom if denom else 1.0


def keep_all(num_layers: int, num_tokens: int) -> list[torch.Tensor]:
    return [torch.arange(num_tokens, dtype=torch.long) for _ in range(num_layers)]


def recent_window(k: int, fraction: float = RECENT_WINDOW_FRACTION) -> int:
    return min(k, math.ceil(fraction * k))


def keep_top_with_window(scores: torch.Tensor, k: int, window: int) -> torch.Tensor:
    """The `window` most recent positions plus the `k - window` best-scoring others, sorted (on the CPU).

    Ties break toward the lower position (stable sort over positions in order).
    """
    scores = scores.detach().to("cpu", torch.float32)  # index lists are small; selections live on the CPU
    m = scores.numel()
    k = min(k, m)
    window = min(window, k)
    head = m - window
    order = torch.sort(scores[:head], descending=True, stable=True).indices
    chosen = torch.cat([order[: k - window], torch.arange(head, m)])
    return torch.sort(chosen).values.to(torch.long)


def keep_sinks_and_recent(m: int, k: int, sinks: int) -> torch.Tensor:
    """StreamingLLM: the first `sinks` positions (attention sinks) and the most recent `k - sinks`.

    The recent window (`ceil(0.1 k)`) always survives: with a budget below the sink count, sinks give way.
    """
    k = min(k, m)
    sinks = min(sinks, k - recent_window(k))
    return torch.cat([torch.arange(sinks), torch.arange(m - (k - sinks), m)]).to(torch.long)
