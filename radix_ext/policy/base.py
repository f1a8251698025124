"""The policy interface and its registry (one small dataclass per method, kvpress style)."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from radix_ext.contract import check_budget  # one budget rule for the policies and the gateway (re-exported)
from radix_ext.policy.layout import PromptLayout
from radix_ext.policy.selection import Selection, keep_all
from radix_ext.policy.stats import DEFAULT_SPARSITY_THRESHOLD, LayerStats

DEFAULT_MIN_PROMPT_TOKENS = 64  # docs/algorithm.md section 4 (decision): shorter prompts are not compressed


@dataclass
class Policy(ABC):
    """A KV-cache compression method.

    An engine asks `query_rows(layout)` which prompt rows it needs statistics for, computes one
    `attention_stats` per layer over those rows (with `sparsity_threshold`), and calls `select` once,
    after prefill, to learn which prompt positions each layer keeps.

    Options of every policy: `min_prompt_tokens` (int >= 0, default 64: shorter prompts are left
    whole), `sparsity_threshold` (`p` in (0, 1), default 0.01: the cutoff of the layer sparsity).
    Subclasses add theirs as dataclass fields; `get_policy` refuses any other name.
    """

    name: ClassVar[str]
    min_prompt_tokens: int = DEFAULT_MIN_PROMPT_TOKENS
    sparsity_threshold: float = DEFAULT_SPARSITY_THRESHOLD

    def __post_init__(self):
        require_int(self, "min_prompt_tokens", low=0)
        require_number(self, "sparsity_threshold", low=0.0, high=1.0, open_low=True, open_high=True)

    @abstractmethod
    def query_rows(self, layout: PromptLayout) -> torch.Tensor:
        """Sorted prompt positions whose attention rows `select` needs (may be empty)."""

    def select(self, stats: list[LayerStats], layout: PromptLayout, budget: float) -> Selection:
        """Pick the kept prompt positions of every layer. `stats` has one entry per layer, in order."""
        check_budget(budget)
        if not stats:
            raise ValueError("select needs one LayerStats per layer; got none")
        m = layout.num_tokens
        if any(s.num_keys != m for s in stats):
            raise ValueError(f"every LayerStats must cover the {m} prompt keys of the layout")
        reason = self.skip_reason(layout, budget)
        if reason:
            return Selection(self.name, self.options(), budget, m, keep_all(len(stats), m), False, reason=reason)
        return self._select(stats, layout, budget)

    def skip_reason(self, layout: PromptLayout, budget: float) -> str:
        """Why this request is left whole ('' when it is compressed)."""
        if budget >= 1.0:
            return "budget 1.0 keeps every token"
        if layout.num_tokens < max(1, self.min_prompt_tokens):
            return f"prompt shorter than min_prompt_tokens={self.min_prompt_tokens}"
        return ""

    @abstractmethod
    def _select(self, stats: list[LayerStats], layout: PromptLayout, budget: float) -> Selection: ...

    def options(self) -> dict:
        return dataclasses.asdict(self)

    def _selection(self, layout, budget, keep, **figures) -> Selection:
        return Selection(self.name, self.options(), budget, layout.num_tokens, keep, True, **figures)


def require_int(policy, name: str, low: int | None = None) -> None:
    """Options arrive from requests: refuse wrong types and ranges with a ValueError naming them."""
    value = getattr(policy, name)
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        bound = "" if low is None else f" >= {low}"
        raise ValueError(f"option {name} of policy {policy.name!r} must be an integer{bound}, got {value!r}")


def require_number(policy, name: str, low: float, high: float, open_low=False, open_high=False) -> None:
    value = getattr(policy, name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value > low if open_low else value >= low) and (value < high if open_high else value <= high)
    if not ok:
        interval = f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
        raise ValueError(f"option {name} of policy {policy.name!r} must be a number in {interval}, got {value!r}")


def require_bool(policy, name: str) -> None:
    if not isinstance(getattr(policy, name), bool):
        raise ValueError(
            f"option {name} of policy {policy.name!r} must be true or false, got {getattr(policy, name)!r}"
        )


_REGISTRY: dict[str, type[Policy]] = {}


def register_policy(cls: type[Policy]) -> type[Policy]:
    _REGISTRY[cls.name] = cls
    return cls


def available_policies() -> list[str]:
    return sorted(_REGISTRY)


def get_policy(name: str, **options) -> Policy:
    """The policy `name` with `options` (defaults: docs/algorithm.md section 5). Unknown names or options
    raise ValueError naming what is allowed."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown policy {name!r}; available: {', '.join(available_policies())}")
    cls = _REGISTRY[name]
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for policy {name!r}; allowed: {sorted(allowed)}")
    return cls(**options)
