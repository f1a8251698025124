"""Multi-turn chats with compression on (`reuse: lazy`, the default): the follow-up is served from the
radix tree, computes what a recomputed follow-up computes, and the cached turns give way under memory
pressure, even while the request that left them is still decoding (docs/multiturn.md)."""

import json

import httpx
import pytest

from service.sglang_process import SGLangServerConfig, free_port
from tests.integration.conftest import data_url, make_image, running_sglang
from tests.integration.sglang.test_vlcache_plugin import flush_when_idle, generate, pool_state, report_of

IMAGES = [make_image((448, 448), (200, 30, 30)), make_image((448, 448), (20, 120, 200), 1)]
LAZY = {"policy": "vlcache", "budget": 0.1, "reuse": "lazy", "report_kept": True}
OFF = {**LAZY, "reuse": "off"}


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_dir)


def chat(processor, turns, images=2):
    """A chat prompt: the images and the first question, then (answer, question) pairs."""
    messages = []
    for i, (question, answer) in enumerate(turns):
        content = [{"type": "image"}] * (images if i == 0 else 0) + [{"type": "text", "text": question}]
        messages.append({"role": "user", "content": content})
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def ask(client, prompt, vl, images=IMAGES, max_new_tokens=8, **sampling):
    params = {"temperature": 0, "max_new_tokens": max_new_tokens, "custom_params": {"vl_cache": vl}, **sampling}
    return generate(
        client, {"text": prompt, "image_data": [data_url(img) for img in images], "sampling_params": params}
    )


def test_follow_up_is_served_from_cache_and_computes_what_a_recomputed_one_does(vlcache_client, processor):
    flush_when_idle(vlcache_client)
    first = chat(processor, [("Describe the images.", None)])
    turn1 = ask(vlcache_client, first, LAZY)
    assert report_of(turn1)["compressed"] and turn1["meta_info"]["cached_tokens"] == 0
    prompt_tokens = turn1["meta_info"]["prompt_tokens"]
    assert pool_state(vlcache_client)["tree_cached_slots"] == prompt_tokens  # the prompt's full KV, nothing else

    follow_up = chat(processor, [("Describe the images.", turn1["text"]), ("Which one is brighter?", None)])
    cached = ask(vlcache_client, follow_up, LAZY)
    report = report_of(cached)
    assert report["compressed"]
    assert cached["meta_info"]["cached_tokens"] >= 512  # both images (2 x 256 visual tokens) from the tree

    flush_when_idle(vlcache_client)
    recomputed = ask(vlcache_client, follow_up, OFF)  # nothing cached, nothing left behind
    assert recomputed["meta_info"]["cached_tokens"] == 0 and pool_state(vlcache_client)["tree_cached_slots"] == 0
    assert cached["output_ids"] == recomputed["output_ids"]
    assert report["kept_positions"] == report_of(recomputed)["kept_positions"]

    flush_when_idle(vlcache_client)
    again = ask(vlcache_client, first, LAZY)  # lazy and off compute the same request identically
    assert again["output_ids"] == turn1["output_ids"]
    flush_when_idle(vlcache_client)
    assert pool_state(vlcache_client)["integrity_at_last_flush"] == "ok"


def test_full_policy_multiturn_is_token_identical_to_stock(client, vlcache_client, processor):
    flush_when_idle(vlcache_client)
    assert client.post("/flush_cache").status_code == 200
    prompt, outputs = [("Describe the images.", None)], []
    for question in ("Which one is brighter?", "And the other?"):
        stock, ours = (ask(c, chat(processor, prompt), {"policy": "full"}) for c in (client, vlcache_client))
        assert ours["output_ids"] == stock["output_ids"]
        assert ours["meta_info"]["cached_tokens"] == stock["meta_info"]["cached_tokens"]
        outputs.append(stock["meta_info"]["cached_tokens"])
        prompt = prompt[:-1] + [(prompt[-1][0], stock["text"]), (question, None)]
    assert outputs[0] == 0
    flush_when_idle(vlcache_client)
    assert pool_state(vlcache_client)["integrity_at_last_flush"] == "ok"


@pytest.fixture(scope="module")
def pressure_server(tiny_model_dir, tmp_path_factory):
    """1500 token slots: five one-image prompts (294 tokens each) cannot all stay cached."""
    config = SGLangServerConfig(model_path=str(tiny_model_dir), port=free_port(), max_total_tokens=1500)
    with running_sglang(config, tmp_path_factory, "pressure") as server:
        yield server


def test_cached_turns_are_evicted_under_pressure(pressure_server, processor):
    prompt = chat(processor, [("Describe the image.", None)], images=1)
    mine, others = (
        make_image((448, 448), (90, 200, 40), 2),
        [make_image((448, 448), (30 * i, 60, 200 - 30 * i), i) for i in range(5)],
    )
    long_run = {"text": prompt, "image_data": [data_url(mine)], "stream": True, "sampling_params": {
        "temperature": 0, "max_new_tokens": 1000, "ignore_eos": True, "custom_params": {"vl_cache": LAZY}}}  # fmt: skip
    with httpx.Client(base_url=pressure_server.url, timeout=120) as c:
        flush_when_idle(c)
        with c.stream("POST", "/generate", json=long_run) as resp:
            lines = (
                json.loads(line[5:])
                for line in resp.iter_lines()
                if line.startswith("data:") and not line.endswith("[DONE]")
            )
            chunk = next(lines)
            assert report_of(chunk)["compressed"]  # compressed: its prompt went to the tree
            for img in others:  # 5 more prompts of 294 tokens: the oldest cached prompt, its, must go
                with httpx.Client(base_url=pressure_server.url, timeout=120) as other:
                    assert report_of(ask(other, prompt, LAZY, [img], 2))["compressed"]
            # Not asserted: that the long request is still running at this instant (a timing window; on a fast
            # machine its 1000 tokens may already be done). What holds either way: the tree gave room back.
            state = pool_state(c)
            assert state["tree_cached_slots"] < 5 * 294
            probe = ask(c, prompt, {"policy": "full"}, [mine], 1)
            assert probe["meta_info"]["cached_tokens"] < 256  # its image is no longer in the tree
            while len(chunk["output_ids"]) < 64:
                chunk = next(lines)
        streamed = chunk["output_ids"]  # closing the stream aborts the rest
        flush_when_idle(c)
        alone = ask(c, prompt, OFF, [mine], len(streamed), ignore_eos=True)
        assert streamed == alone["output_ids"]  # eviction of its cached prompt changed nothing it reads
        flush_when_idle(c)
        state = pool_state(c)
    assert state["integrity_at_last_flush"] == "ok" and state["logical_slots_used"] == 0
