"""The wire contract between the gateway (`service/`) and the SGLang plugin (`radix_ext/sglang`).

One definition, imported by both sides (downward: this module imports nothing of ours, and only
pydantic outside the standard library, so the gateway gets neither SGLang nor torch from it):

- `REQUEST_KEY`: the key of a request's options in SGLang's `custom_params`
  (`{"vl_cache": {"policy": ..., "budget": ..., <policy options>, "report_kept": ...}}`) and of the
  report in `meta_info` (a one-element list: SGLang's request-level `customized_info`);
- the option names (`OPTION_POLICY`, `OPTION_BUDGET`, `OPTION_REPORT_KEPT`); every other key of the
  object is a policy option, checked by the policy itself;
- `POLICIES`: the names of the policy library (a fast test checks they equal
  `radix_ext.policy.available_policies()`);
- the budget rule, `BUDGET_MIN < budget <= BUDGET_MAX` (`check_budget`), used by the policies and
  by the gateway;
- `KVReport`: the per-request report the plugin builds (`compressor.compress_request`) and the
  gateway parses (`service/kv_report.py`). Unknown fields are refused on both sides, so a field
  renamed on one side fails a test rather than a dashboard.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

REQUEST_KEY = "vl_cache"
OPTION_POLICY = "policy"
OPTION_BUDGET = "budget"
OPTION_REPORT_KEPT = "report_kept"

POLICIES = (
    "full", "h2o", "h2o_sparsity", "pyramidkv", "random", "snapkv", "streamingllm", "vlcache", "vlcache_uniform",
)  # fmt: skip

BUDGET_MIN, BUDGET_MAX = 0.0, 1.0  # exclusive, inclusive: the kept fraction of prompt tokens
BUDGET_RULE = f"a number in ({BUDGET_MIN:g}, {BUDGET_MAX:g}] (the kept fraction of prompt tokens)"


def check_budget(budget) -> float:
    """The budget as a float; ValueError naming the rule for anything else (booleans, strings, NaN, 0, 1.5)."""
    ok = isinstance(budget, (int, float)) and not isinstance(budget, bool)
    if not (ok and math.isfinite(budget) and BUDGET_MIN < float(budget) <= BUDGET_MAX):
        raise ValueError(f"budget must be {BUDGET_RULE}, got {budget!r}")
    return float(budget)


class KVReport(BaseModel):
    """KV-cache figures of one request, measured inside SGLang right after its prefill."""

    model_config = ConfigDict(extra="forbid")

    policy: str
    budget: float = Field(description="requested fraction of prompt tokens to keep")
    compressed: bool
    reason: str | None = Field(default=None, description="why the prompt was left whole (empty when compressed)")
    prompt_tokens: int = Field(ge=0, description="the prompt length m")
    visual_tokens: int | None = Field(default=None, ge=0, description="image and video tokens of the prompt")
    kept_tokens_per_layer: list[int] = Field(description="k[l]: prompt tokens kept per layer")
    freed_slots_per_layer: list[int] | None = Field(default=None, description="physical KV slots freed per layer")
    layer_sparsity: list[float | None] | None = Field(
        default=None, description="gamma[l], where the policy computed it"
    )
    kv_bytes_full: int = Field(ge=0, description="prompt K+V bytes over all layers without compression")
    kv_bytes_kept: int = Field(ge=0, description="prompt K+V bytes over all layers after compression")
    realized_budget: float = Field(description="sum(kept_tokens_per_layer) / (layers * prompt_tokens)")
    scoring_ms: float = Field(ge=0, description="time spent scoring and selecting")
    kept_positions: list[list[int]] | None = Field(
        default=None, description=f"kept prompt positions per layer (only with `{OPTION_REPORT_KEPT}: true`)"
    )
    reused_prefix_tokens: int | None = Field(
        default=None,
        ge=0,
        description="prompt tokens read as an earlier turn left them compressed (`reuse: compressed`); "
        "only the rest was prefilled, and nothing was scored",
    )

    def to_wire(self) -> dict:
        """The JSON object the plugin puts in `meta_info[REQUEST_KEY]` (absent optional fields left out)."""
        return self.model_dump(exclude_none=True)
