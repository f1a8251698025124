"""`generate()`: one request through a transformers VLM with a policy applied after prefill.

Statistics come from forward hooks on each attention module during prefill: the post-RoPE queries of
the rows the policy needs are recomputed from the module's input (as kvpress does for SnapKV), and
scored against the layer's cached post-RoPE keys with `radix_ext.policy.attention_stats`. A logits
processor, which `generate()` calls first right after the prefill forward, triggers `compress()`.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from radix_ext.policy import PromptLayout, Selection, attention_stats, get_policy, visual_spans_from_ids
from radix_ext.reference.cache import CompressibleCache


@dataclass
class ReferenceResult:
    tokens: list[int]
    selection: Selection
    prompt_tokens: int
    physical_lengths: list[int]  # per layer, at the end of generation (kept prompt + decoded tokens)
    kv_bytes_full: int  # prompt KV of all layers before compression
    kv_bytes_kept: int  # prompt KV of all layers after compression
    logprobs: list[float]  # log-softmax of the raw logits at each generated token (as SGLang's greedy logprobs)


def prompt_layout(model, input_ids: torch.Tensor) -> PromptLayout:
    """The layout of a Qwen2-VL-style prompt: runs of image/video placeholder tokens are visual spans."""
    config = model.config
    visual_ids = [
        i for i in (getattr(config, "image_token_id", None), getattr(config, "video_token_id", None)) if i is not None
    ]
    ids = input_ids[0]
    return PromptLayout(int(ids.numel()), visual_spans_from_ids(ids, visual_ids))


def generate(
    model,
    processor,
    messages: list[dict],
    images=None,
    videos=None,
    policy: str = "vlcache",
    budget: float = 0.1,
    max_new_tokens: int = 16,
    **policy_options,
) -> ReferenceResult:
    """Greedy generation for one chat request with `policy` at `budget` (fraction of prompt KV kept)."""
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[prompt], images=images or None, videos=videos or None, return_tensors="pt")
    return generate_from_inputs(model, inputs, policy, budget, max_new_tokens, **policy_options)


def generate_from_inputs(model, inputs, policy="vlcache", budget=0.1, max_new_tokens=16, forced_tokens=(),
                         **policy_options):  # fmt: skip
    """As `generate`, from processor outputs (batch size 1).

    `forced_tokens` are fed first, one per step over the compressed cache, before greedy decoding
    (they count in `max_new_tokens` and are returned in `tokens`): a later chat turn continued over the
    KV compressed for the first, i.e. what reusing a turn's compressed KV for a follow-up computes."""
    if inputs["input_ids"].shape[0] != 1:
        raise ValueError("the reference engine runs one request at a time (batch size 1)")
    chosen = get_policy(policy, **policy_options)
    layout = prompt_layout(model, inputs["input_ids"])
    text_config = model.config.get_text_config()
    cache = CompressibleCache(text_config.num_hidden_layers, chosen, layout, budget)
    rows = chosen.query_rows(layout)
    m = layout.num_tokens

    attention_modules = [layer.self_attn for layer in _decoder_layers(model)]
    hooks = [
        module.register_forward_hook(_StatsHook(cache, layer_idx, rows), with_kwargs=True)
        for layer_idx, module in enumerate(attention_modules)
    ]
    stop = {}
    if forced_tokens:
        # A forced end-of-turn token must not end generation, and `generate` refills an unset EOS from
        # the model's defaults: EOS becomes the pad token (never part of a chat), and a criterion stops
        # on the real EOS once the forced tokens are in.
        config = copy.deepcopy(model.generation_config)
        eos = config.eos_token_id
        config.eos_token_id = config.pad_token_id
        eos = {eos} if isinstance(eos, int) else set(eos or ())
        after = _EosAfter(eos, m + len(forced_tokens))
        stop = {"generation_config": config, "stopping_criteria": StoppingCriteriaList([after])}
    try:
        with torch.no_grad():
            out = model.generate(
                **inputs,
                **stop,
                past_key_values=cache,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                logits_processor=LogitsProcessorList([_CompressAfterPrefill(cache), _Force(forced_tokens, m)]),
                output_logits=True,
                return_dict_in_generate=True,
            )
    finally:
        for hook in hooks:
            hook.remove()

    selection = cache.compress()  # no-op unless generation stopped before the first decode step
    per_token = 2 * text_config.num_key_value_heads * _head_dim(text_config) * _dtype_bytes(model)
    tokens = out.sequences[0, m:]
    logprobs = [float(torch.log_softmax(step[0].float(), -1)[t]) for step, t in zip(out.logits, tokens, strict=True)]
    return ReferenceResult(
        tokens=tokens.tolist(),
        selection=selection,
        prompt_tokens=m,
        physical_lengths=cache.physical_lengths(),
        kv_bytes_full=per_token * m * text_config.num_hidden_layers,
        kv_bytes_kept=per_token * sum(selection.layer_budgets),
        logprobs=logprobs,
    )


class _StatsHook:
    """Forward hook on one attention module: during prefill, scores the policy's rows for this layer."""

    def __init__(self, cache: CompressibleCache, layer_idx: int, rows: torch.Tensor):
        self.cache, self.layer_idx, self.rows = cache, layer_idx, rows

    def __call__(self, module, args, kwargs, output):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        layer = self.cache.layers[self.layer_idx]
        m = self.cache.layout.num_tokens
        if hidden.shape[1] != m or layer.logical_length != m:
            return  # a decode step, not the prefill
        keys = layer.keys[0]  # [Hkv, m, d], post-RoPE
        queries = _post_rope_queries(module, hidden[:, self.rows], kwargs["position_embeddings"], self.rows)
        self.cache.stats[self.layer_idx] = attention_stats(
            queries, keys, self.rows, scale=module.scaling, sparsity_threshold=self.cache.policy.sparsity_threshold
        )


def _post_rope_queries(module, hidden_rows, position_embeddings, rows) -> torch.Tensor:
    """`[H, r, d]` queries of `rows`, recomputed as the module computes them (projection, then RoPE)."""
    heads = module.config.num_attention_heads
    q = module.q_proj(hidden_rows).view(1, len(rows), heads, module.head_dim).transpose(1, 2)
    cos, sin = (t[:, rows] for t in position_embeddings)
    apply_rotary = sys.modules[type(module).__module__].apply_rotary_pos_emb
    q, _ = apply_rotary(q, q, cos, sin)
    return q[0]


class _CompressAfterPrefill(LogitsProcessor):
    """`generate()` calls logits processors right after each forward; the first one follows prefill."""

    def __init__(self, cache: CompressibleCache):
        self.cache = cache

    def __call__(self, input_ids, scores):
        self.cache.compress()
        return scores


class _Force(LogitsProcessor):
    """The `i`-th generated token is `forced[i]` while `i < len(forced)` (no other logits are touched)."""

    def __init__(self, forced, prompt_len: int):
        self.forced, self.prompt_len = list(forced), prompt_len

    def __call__(self, input_ids, scores):
        i = input_ids.shape[1] - self.prompt_len
        if i < len(self.forced):
            forced = torch.full_like(scores, -torch.inf)
            forced[:, self.forced[i]] = 0.0
            return forced
        return scores


class _EosAfter(StoppingCriteria):
    """Done once a token of `eos` is generated at or after sequence position `start`."""

    def __init__(self, eos: set[int], start: int):
        self.eos, self.start = eos, start

    def __call__(self, input_ids, scores, **kwargs):
        done = input_ids.shape[1] > self.start and int(input_ids[0, -1]) in self.eos
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool)


def _decoder_layers(model):
    language_model = model.model.language_model if hasattr(model.model, "language_model") else model.model
    return language_model.layers


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _dtype_bytes(model) -> int:
    return torch.finfo(model.dtype).bits // 8
