"""The transformers reference engine on the tiny Qwen2-VL: parity, positions, per-layer KV lengths."""

import numpy as np
import pytest
import torch
from PIL import Image

from radix_ext.policy import available_policies
from radix_ext.reference import generate
from radix_ext.reference.engine import generate_from_inputs, prompt_layout

NEW_TOKENS = 10


def _image(size, color):
    img = Image.new("RGB", size, color)
    img.paste(
        (255 - color[0], 255 - color[1], 255 - color[2]), (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2)
    )
    return img


def _video(frames=4, size=(112, 112)):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8) for _ in range(frames)]


def _chat(*parts, text="Describe what you see in one sentence."):
    return [{"role": "user", "content": [*({"type": p} for p in parts), {"type": "text", "text": text}]}]


PROMPTS = {
    "one-image": dict(messages=_chat("image"), images=[_image((448, 448), (200, 30, 30))]),
    "two-images": dict(
        messages=_chat("image", "image"), images=[_image((224, 224), (20, 90, 200)), _image((336, 224), (250, 200, 0))]
    ),
    "video": dict(messages=_chat("video"), videos=[_video()]),
    "no-image": dict(messages=_chat(text="How many objects are there? " * 12)),
}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, processor


def _inputs(processor, prompt):
    text = processor.apply_chat_template(prompt["messages"], add_generation_prompt=True)
    return processor(text=[text], images=prompt.get("images"), videos=prompt.get("videos"), return_tensors="pt")


def _plain_generate(model, inputs, n=NEW_TOKENS):
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=n)  # stock DynamicCache
    return out[0, inputs["input_ids"].shape[1] :].tolist()


@pytest.mark.parametrize("policy,budget", [("full", 0.1), ("vlcache", 1.0), ("h2o", 1.0)])
@pytest.mark.parametrize("prompt", ["one-image", "two-images"])
def test_uncompressed_runs_are_token_identical_to_dynamic_cache(tiny, policy, budget, prompt):
    model, processor = tiny
    inputs = _inputs(processor, PROMPTS[prompt])
    result = generate_from_inputs(model, inputs, policy, budget, NEW_TOKENS)
    assert not result.selection.compressed
    assert result.tokens == _plain_generate(model, inputs)
    assert result.kv_bytes_kept == result.kv_bytes_full


def test_logprobs_equal_a_full_forward_over_prompt_and_answer(tiny):
    """`ReferenceResult.logprobs` (from the incremental decode) against one cache-free forward."""
    model, processor = tiny
    inputs = _inputs(processor, PROMPTS["one-image"])
    result = generate_from_inputs(model, inputs, "full", 0.1, NEW_TOKENS)
    m, answer = inputs["input_ids"].shape[1], torch.tensor(result.tokens)
    ids = torch.cat([inputs["input_ids"], answer[None]], 1)
    full = {**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if "mm_token_type_ids" in inputs:  # the answer's tokens are text (type 0)
        full["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(answer)[None]], 1)
    with torch.no_grad():
        logits = model(**full).logits[0, m - 1 : -1]
    expected = torch.log_softmax(logits.float(), -1).gather(1, answer[:, None])[:, 0]
    assert len(result.logprobs) == len(result.tokens) >= 4
    assert result.logprobs == pytest.approx(expected.tolist(), abs=1e-4)


def test_forced_tokens_continue_the_prompt_as_if_they_were_part_of_it(tiny):
    """Full cache: feeding a follow-up's tokens one per step gives the tokens (and logprobs) of one
    prompt holding them; compressed, the forced tokens are still returned verbatim."""
    model, processor = tiny
    inputs = _inputs(processor, PROMPTS["one-image"])
    follow_up = processor.tokenizer("<|im_end|>\n<|im_start|>user\nAnd the colour?<|im_end|>\n")["input_ids"]
    forced = generate_from_inputs(model, inputs, "full", 1.0, len(follow_up) + 4, forced_tokens=follow_up)
    assert forced.tokens[: len(follow_up)] == follow_up
    ids = torch.cat([inputs["input_ids"], torch.tensor([follow_up])], 1)
    longer = {**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if "mm_token_type_ids" in inputs:
        longer["mm_token_type_ids"] = torch.cat(
            [inputs["mm_token_type_ids"], torch.zeros_like(ids[:, : len(follow_up)])], 1
        )
    direct = generate_from_inputs(model, longer, "full", 1.0, 4)
    assert forced.tokens[len(follow_up) :] == direct.tokens
    assert forced.logprobs[len(follow_up) :] == pytest.approx(direct.logprobs, abs=1e-4)
    compressed = generate_from_inputs(model, inputs, "vlcache", 0.1, len(follow_up) + 2, forced_tokens=follow_up)
    assert compressed.selection.compressed and compressed.tokens[: len(follow_up)] == follow_up


def test_compressed_decode_keeps_logical_positions(tiny):
    """After eviction, decode step t still gets position m + t (plus Qwen2-VL's M-RoPE delta)."""
    model, processor = tiny
    inputs = _inputs(processor, PROMPTS["one-image"])
    m = inputs["input_ids"].shape[1]
    seen = []
    rotary = model.model.language_model.rotary_emb
    hook = rotary.register_forward_hook(lambda mod, args, out: seen.append(args[1].clone()))
    try:
        result = generate_from_inputs(model, inputs, "vlcache", 0.1, NEW_TOKENS)
    finally:
        hook.remove()
    assert result.selection.compressed and max(result.selection.layer_budgets) < m
    delta = int(model.model.rope_deltas.flatten()[0])
    decode_positions = [int(p[0, 0, -1]) - delta for p in seen[1:]]  # seen[0] is the prefill
    assert decode_positions == list(range(m, m + len(decode_positions)))
    assert len(decode_positions) == len(result.tokens) - 1  # the last token is never fed back


@pytest.mark.parametrize("policy", ["vlcache", "snapkv", "pyramidkv"])
def test_per_layer_kv_lengths_equal_the_selection(tiny, policy):
    model, processor = tiny
    inputs = _inputs(processor, PROMPTS["one-image"])
    just_prefill = generate_from_inputs(model, inputs, policy, 0.1, max_new_tokens=1)
    assert just_prefill.physical_lengths == just_prefill.selection.layer_budgets
    full_run = generate_from_inputs(model, inputs, policy, 0.1, max_new_tokens=NEW_TOKENS)
    decoded = len(full_run.tokens) - 1
    assert full_run.physical_lengths == [k + decoded for k in full_run.selection.layer_budgets]
    assert full_run.selection.keep[0].tolist() == just_prefill.selection.keep[0].tolist()  # deterministic


def test_vlcache_budgets_follow_layer_sparsity_on_a_real_model(tiny):
    model, processor = tiny
    result = generate(model, processor, **PROMPTS["one-image"], policy="vlcache", budget=0.1, max_new_tokens=1)
    s = result.selection
    m, L = result.prompt_tokens, s.num_layers
    assert sum(s.layer_budgets) == round(0.1 * L * m)
    densest, sparsest = int(np.argmin(s.layer_sparsity)), int(np.argmax(s.layer_sparsity))
    assert s.layer_budgets[densest] >= s.layer_budgets[sparsest]
    assert result.kv_bytes_kept / result.kv_bytes_full == pytest.approx(s.realized_budget)


def test_prompt_layout_finds_image_and_video_spans(tiny):
    model, processor = tiny
    two = prompt_layout(model, _inputs(processor, PROMPTS["two-images"])["input_ids"])
    assert len(two.visual_spans) == 2 and two.num_visual_tokens == 64 + 96
    video = prompt_layout(model, _inputs(processor, PROMPTS["video"])["input_ids"])
    assert len(video.visual_spans) == 1 and video.num_visual_tokens == 2 * 4 * 4  # 4 frames -> 2 temporal patches
    assert not prompt_layout(model, _inputs(processor, PROMPTS["no-image"])["input_ids"]).has_visual


@pytest.mark.parametrize("prompt", list(PROMPTS))
@pytest.mark.parametrize("policy", available_policies())
def test_every_policy_runs_on_every_prompt(tiny, policy, prompt):
    model, processor = tiny
    result = generate(model, processor, **PROMPTS[prompt], policy=policy, budget=0.1, max_new_tokens=2)
    s = result.selection
    assert len(result.tokens) >= 1 and s.num_layers == model.config.get_text_config().num_hidden_layers
    decoded = len(result.tokens) - 1
    assert result.physical_lengths == [k + decoded for k in s.layer_budgets]
    for keep in s.keep:
        assert torch.equal(keep, torch.unique(keep)) and int(keep.max()) < result.prompt_tokens
    should_compress = policy != "full" and not (policy.startswith("vlcache") and prompt == "no-image")
    assert s.compressed == should_compress
