"""Parity in numbers, not only tokens (litgpt style): greedy logprobs compared with a tolerance.

- The plugin leaving a request whole (`full`, or `vlcache` at budget 1.0) against stock SGLang: the same
  tokens and the same logprob at every step, within `UNCOMPRESSED_ATOL` (the plugin server prefills in
  128-token chunks, stock in one pass, so the float32 sums are ordered differently).
- The plugin compressing (budget 0.1) against the transformers reference engine with the same policy:
  the same kept positions, the same tokens, logprobs within `COMPRESSED_ATOL` (two engines, two
  attention implementations over the same kept K/V).
- Guard: compressed and uncompressed logprobs differ by far more than the tolerances from the second
  token on (the first is sampled from the prefill's logits, before compression), so these comparisons
  can tell a compressed cache from an uncompressed one.

SGLang's greedy logprobs are `log_softmax` of the raw logits (`meta_info.output_token_logprobs`, entries
`[logprob, token_id, text]`); the reference engine returns the same quantity (`ReferenceResult.logprobs`).
"""

import pytest
import torch

from tests.integration.sglang.test_vlcache_plugin import IMAGE, OTHER_IMAGE, body, chat_prompt, generate, report_of

MAX_NEW_TOKENS = 8
# Measured on the tiny model (2-core CPU, float32): at most 9.5e-7 uncompressed, 1.7e-6 compressed;
# compression itself moves a logprob by about 0.4 (the guard below). The tolerances sit in between.
UNCOMPRESSED_ATOL = 1e-4
COMPRESSED_ATOL = 1e-4


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def reference_model(tiny_model_dir):
    from transformers import Qwen2VLForConditionalGeneration

    return Qwen2VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def generate_with_logprobs(client, payload):
    """`(token ids, logprobs)` of a greedy `/generate`, read from the logprob entries themselves."""
    result = generate(client, {**payload, "return_logprob": True})
    entries = result["meta_info"]["output_token_logprobs"]
    assert [e[1] for e in entries] == result["output_ids"]
    return result, [e[0] for e in entries]


def max_abs_diff(a, b):
    assert len(a) == len(b)
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("vl", [{"policy": "full"}, {"policy": "vlcache", "budget": 1.0}])
@pytest.mark.parametrize("parts,images", [(["image"], [IMAGE]), (["image", "image"], [IMAGE, OTHER_IMAGE])])
def test_uncompressed_logprobs_equal_stock_sglang(client, vlcache_client, processor, vl, parts, images):
    prompt = chat_prompt(processor, parts)
    stock, stock_logprobs = generate_with_logprobs(client, body(prompt, images, max_new_tokens=MAX_NEW_TOKENS))
    ours, our_logprobs = generate_with_logprobs(vlcache_client, body(prompt, images, vl, MAX_NEW_TOKENS))
    assert not report_of(ours)["compressed"]
    assert ours["output_ids"] == stock["output_ids"] and len(stock["output_ids"]) == MAX_NEW_TOKENS
    assert max_abs_diff(our_logprobs, stock_logprobs) <= UNCOMPRESSED_ATOL


@pytest.mark.parametrize("policy", ["vlcache", "snapkv"])
def test_compressed_logprobs_equal_the_reference_engine(vlcache_client, processor, reference_model, policy):
    from radix_ext.reference.engine import generate_from_inputs

    prompt = chat_prompt(processor, ["image"])
    vl = {"policy": policy, "budget": 0.1, "report_kept": True}
    ours, our_logprobs = generate_with_logprobs(vlcache_client, body(prompt, [IMAGE], vl, MAX_NEW_TOKENS))
    inputs = processor(text=[prompt], images=[IMAGE], return_tensors="pt")
    reference = generate_from_inputs(reference_model, inputs, policy, 0.1, max_new_tokens=MAX_NEW_TOKENS)

    report = report_of(ours)
    assert report["compressed"]
    assert report["kept_positions"] == [keep.tolist() for keep in reference.selection.keep]  # same KV kept
    assert ours["output_ids"] == reference.tokens
    assert max_abs_diff(our_logprobs, reference.logprobs) <= COMPRESSED_ATOL


def test_the_tolerances_tell_compressed_from_uncompressed(vlcache_client, processor):
    prompt = chat_prompt(processor, ["image"])
    whole, whole_logprobs = generate_with_logprobs(vlcache_client, body(prompt, [IMAGE], {"policy": "full"}, 4))
    cut, cut_logprobs = generate_with_logprobs(
        vlcache_client, body(prompt, [IMAGE], {"policy": "vlcache", "budget": 0.1, "reuse": "off"}, 4)
    )  # not `compressed`: an earlier test left this very prompt compressed in the tree, and its first token would read that
    assert report_of(cut)["compressed"] and not report_of(whole)["compressed"]
    # The first token is sampled from the prefill's logits, before compression: equal within tolerance.
    assert cut["output_ids"][0] == whole["output_ids"][0]
    assert abs(cut_logprobs[0] - whole_logprobs[0]) <= COMPRESSED_ATOL
    # From the second step on, one reads a tenth of the prompt KV: far outside the tolerances.
    assert max_abs_diff(cut_logprobs[1:], whole_logprobs[1:]) > 100 * max(COMPRESSED_ATOL, UNCOMPRESSED_ATOL)
