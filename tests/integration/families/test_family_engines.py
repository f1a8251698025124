"""Every VLM family of vlmodels/families/ on the real SGLang engine (CPU, float32): the plugin leaving a
two-image prompt whole (`full`) is stock SGLang, token for token and logprob for logprob; `vlcache` at
budget 0.1 finds the visual spans, keeps a budgeted number of tokens per layer and frees the rest."""

import pytest

from service.media.visual_tokens import VisualTokenCost
from testkit import make_image
from tests.integration.sglang.test_logprob_parity import UNCOMPRESSED_ATOL, generate_with_logprobs, max_abs_diff
from tests.integration.sglang.test_vlcache_plugin import body, chat_prompt, pool_state, report_of

IMAGES = [make_image((448, 448), (200, 30, 30)), make_image((224, 336), (20, 120, 200), 1)]
MAX_NEW_TOKENS = 8
BUDGET = 0.1

# The test matrix: one entry per family (xfail entries say exactly why SGLang's CPU engine fails).
MATRIX = [
    pytest.param("qwen2_5_vl", id="qwen2_5_vl"),
    pytest.param("qwen3_vl", id="qwen3_vl"),
    pytest.param("gemma3", id="gemma3"),
    pytest.param("llava_onevision", id="llava_onevision"),
    pytest.param("llava_next", id="llava_next"),
    pytest.param("internvl", id="internvl"),
]

pytestmark = pytest.mark.parametrize("family_clients", MATRIX, indirect=True)


def _prompt(model_dir, images=IMAGES):
    from transformers import AutoProcessor

    return chat_prompt(AutoProcessor.from_pretrained(model_dir), ["image"] * len(images))


def _visual_tokens(model_dir, prompt, engine_prompt_tokens, images=IMAGES):
    """How many visual tokens the images take in SGLang's prompt: what the family's own processor
    expands them to, or, where SGLang's model code pads the prompt itself (original LLaVA's anyres), the
    engine's prompt length less the text's tokens (each image's one placeholder replaced). InternVL has no
    HF processor (SGLang tiles the images itself): the gateway's estimate, SGLang's tiles x tokens per tile
    (the fast tests check its tiling against SGLang's), so the engine's count checks the estimate too."""
    from transformers import AutoConfig, AutoProcessor

    cost = VisualTokenCost.from_model_dir(model_dir)
    if cost.tokens_per_tile is not None:
        return sum(cost.image(*image.size) for image in images)
    processor = AutoProcessor.from_pretrained(model_dir)
    if cost.engine_counts:
        return engine_prompt_tokens - (len(processor.tokenizer(prompt)["input_ids"]) - len(images))
    ids = processor(text=[prompt], images=images, return_tensors="pt")["input_ids"][0]
    return int((ids == AutoConfig.from_pretrained(model_dir).image_token_id).sum())


def test_full_is_stock_sglang_in_tokens_and_logprobs(family_clients):
    _, model_dir, stock_client, plugin_client = family_clients
    prompt = _prompt(model_dir)
    stock, stock_lp = generate_with_logprobs(
        stock_client, body(prompt, IMAGES, max_new_tokens=MAX_NEW_TOKENS, ignore_eos=True)
    )
    ours, our_lp = generate_with_logprobs(
        plugin_client, body(prompt, IMAGES, {"policy": "full"}, MAX_NEW_TOKENS, ignore_eos=True)
    )  # random weights may pick EOS early: compare every one of the MAX_NEW_TOKENS steps
    visual = _visual_tokens(model_dir, prompt, stock["meta_info"]["prompt_tokens"])
    assert not report_of(ours)["compressed"] and report_of(ours)["visual_tokens"] == visual > 0  # images seen
    assert ours["output_ids"] == stock["output_ids"] and len(stock["output_ids"]) == MAX_NEW_TOKENS
    assert max_abs_diff(our_lp, stock_lp) <= UNCOMPRESSED_ATOL


# One image alone: original-format LLaVA tiles it (anyres), two or more are one tile each.
@pytest.mark.parametrize("images", [IMAGES, IMAGES[:1]], ids=["two_images", "one_image"])
def test_vlcache_compresses(family_clients, images):
    _, model_dir, _, plugin_client = family_clients
    prompt = _prompt(model_dir, images)
    assert plugin_client.post("/flush_cache").status_code == 200  # nothing cached: every prompt slot is owned
    vl = {"policy": "vlcache", "budget": BUDGET, "reuse": "off"}
    report = report_of(generate_with_logprobs(plugin_client, body(prompt, images, vl, MAX_NEW_TOKENS))[0])
    layers = len(report["kept_tokens_per_layer"])
    assert report["compressed"], report.get("reason")
    assert (
        report["visual_tokens"] == _visual_tokens(model_dir, prompt, report["prompt_tokens"], images) > 0
    )  # the visual spans were found, all of them
    assert layers >= 2 and all(0 < k < report["prompt_tokens"] for k in report["kept_tokens_per_layer"])
    assert abs(report["realized_budget"] - BUDGET) <= 0.005
    freed = [report["prompt_tokens"] - k for k in report["kept_tokens_per_layer"]]
    assert report["freed_slots_per_layer"] == freed  # evicted slots went back to each layer's free list
    state = pool_state(plugin_client)  # finished, reuse off: nothing held
    assert state["logical_slots_used"] == 0 and not any(state["physical_slots_used_per_layer"])
