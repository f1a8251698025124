"""Per-request compression plan: options parsed at admission, statistics gathered during prefill."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from radix_ext.policy import LayerStats, Policy, PromptLayout, check_budget, get_policy, merge_layer_stats
from radix_ext.policy.layout import visual_spans_from_ids
from radix_ext.sglang.config import REQUEST_KEY, REUSE_MODES, VLCacheDefaults


@dataclass
class CompressionPlan:
    """What will happen to one request's prompt KV, and the statistics gathered so far.

    `parts[l]` holds one `LayerStats` per prefill chunk that contained scored rows (exact to merge).
    """

    policy: Policy
    budget: float
    layout: PromptLayout
    rows: torch.Tensor
    skip_reason: str
    report_kept: bool = False  # also return the kept positions per layer (for research and tests)
    reuse: str = "lazy"  # one of REUSE_MODES: what a compressed request leaves in the tree (docs/multiturn.md)
    client_skip_insert: bool = False  # SGLang's skip_radix_cache_insert before the plan set it
    # `reuse: compressed` only: the prefix matched in the compressed namespace, set by each prefix match
    # (0 = none usable). Such a follow-up reads that prefix as an earlier turn left it and is not scored.
    reused_prefix: int = 0
    parts: list[list[LayerStats]] = field(default_factory=list)
    scoring_s: float = 0.0

    @property
    def will_compress(self) -> bool:
        return not self.skip_reason and not self.reused_prefix

    @property
    def cache_namespace(self) -> str | None:
        """The radix-tree namespace (`extra_key`) of `reuse: compressed`: KV compressed by one policy, budget
        and option set is only ever read by requests asking for the same (None for the other modes)."""
        return f"vlcache:{self.policy!r}@{self.budget:g}" if self.reuse == "compressed" else None

    def usable_compressed_prefix(self, matched: int) -> int:
        """How much of a compressed-namespace match the request may read (`reuse: compressed`): all of it
        when it covers every visual token (a follow-up: only new text after it), else none, so a prompt
        with images of its own is prefilled and compressed from scratch."""
        end = self.layout.post_vision_start
        return matched if matched > 0 and (end is None or matched >= end) else 0

    @property
    def first_scored_row(self) -> int:
        """Prefix matching must stop here so every scored row is computed (m when none is)."""
        return int(self.rows[0]) if self.rows.numel() else self.layout.num_tokens

    def add_part(self, layer: int, stats: LayerStats, seconds: float) -> None:
        while len(self.parts) <= layer:
            self.parts.append([])
        self.parts[layer].append(stats)
        self.scoring_s += seconds

    def layer_stats(self, num_layers: int, num_heads: int) -> list[LayerStats]:
        m = self.layout.num_tokens
        out = []
        for layer in range(num_layers):
            parts = self.parts[layer] if layer < len(self.parts) else []
            if parts:
                out.append(merge_layer_stats(parts, m))
            else:  # a policy that needs no rows: the layer count and prompt length still go to select()
                out.append(LayerStats(sparsity=None, column_sums=torch.zeros(num_heads, m), num_rows=0))
        return out


@dataclass(frozen=True)
class RequestOptions:
    policy: Policy
    budget: float
    report_kept: bool = False
    reuse: str = "lazy"


def parse_request_options(custom_params: dict | None, defaults: VLCacheDefaults) -> RequestOptions:
    """What a request's `custom_params["vl_cache"]` asks for, server defaults filling the gaps.

    Keys: `policy`, `budget`, `report_kept` (bool), `reuse` (one of `REUSE_MODES`), and the policy's own
    options. Options given without a `policy` extend the server's default options. Raises ValueError
    (TypeError for a bad option type) saying what is allowed.
    """
    raw = (custom_params or {}).get(REQUEST_KEY)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"custom_params.{REQUEST_KEY} must be an object like {{'policy': 'vlcache', 'budget': 0.1}}")
    options = dict(raw)
    report_kept = options.pop("report_kept", False)
    if not isinstance(report_kept, bool):
        raise ValueError("report_kept must be true or false")
    reuse = options.pop("reuse", defaults.reuse)
    if reuse not in REUSE_MODES:
        raise ValueError(f"reuse must be one of {list(REUSE_MODES)}, got {reuse!r}")
    name = options.pop("policy", None)
    budget = options.pop("budget", None)
    if name is None:
        name, options = defaults.policy, {**defaults.options, **options}
    budget = defaults.budget if budget is None else budget
    policy = get_policy(name, **options)
    check_budget(budget)
    return RequestOptions(policy, float(budget), report_kept, reuse)


def prompt_layout_of(req) -> PromptLayout:
    """Visual spans from the request's multimodal items (`offsets` are inclusive `(start, end)` pairs).
    An item without offsets (original-format LLaVA pads the prompt in the model's own `pad_input_ids`
    and records none) is found as the runs of its pad values in the padded prompt."""
    m = len(req.origin_input_ids)
    spans = []
    mm = getattr(req, "multimodal_inputs", None)
    unplaced = set()
    for item in mm.mm_items if mm is not None else []:
        if not item.offsets:
            unplaced |= {v for v in (item.pad_value, *(item.pad_values or ())) if v is not None}
        for start, end in item.offsets or []:
            if start < m:
                spans.append((int(start), min(int(end) + 1, m)))
    if unplaced:
        spans += visual_spans_from_ids(list(req.origin_input_ids), unplaced)
    return PromptLayout(m, _merge_touching(spans))


def _merge_touching(spans):
    merged = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def make_plan(req, defaults: VLCacheDefaults) -> CompressionPlan:
    opts = parse_request_options(req.sampling_params.custom_params, defaults)
    layout = prompt_layout_of(req)
    reason = opts.policy.skip_reason(layout, opts.budget)
    rows = opts.policy.query_rows(layout) if not reason else torch.empty(0, dtype=torch.long)
    return CompressionPlan(
        opts.policy, opts.budget, layout, rows, reason, opts.report_kept, opts.reuse, bool(req.skip_radix_cache_insert)
    )


class Stopwatch:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
