"""The vlcache plugin inside the real SGLang runtime (CPU engine, tiny Qwen2-VL, float32)."""

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from service.sglang_process import SGLangServerConfig, free_port
from service.sglang_request import modalities
from testkit import flush_when_idle, make_image, mp4_data_url, png_data_url
from tests.integration.conftest import running_sglang

IMAGE = make_image((448, 448), (200, 30, 30))
OTHER_IMAGE = make_image((224, 336), (20, 120, 200), 1)


def chat_prompt(processor, parts, text="Describe the image in one sentence."):
    content = [{"type": p} for p in parts] + [{"type": "text", "text": text}]
    messages = [{"role": "user", "content": content}]  # tokenize=False: a bare tokenizer (InternVL) gives text too
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_dir)


def body(prompt, images=(), vl=None, max_new_tokens=16, videos=(), **sampling):
    params = {"temperature": 0, "max_new_tokens": max_new_tokens, **sampling}
    if vl is not None:
        params["custom_params"] = {"vl_cache": vl}
    out = {"text": prompt, "sampling_params": params}
    if images:
        out["image_data"] = [png_data_url(img) for img in images]
        out |= modalities(len(images))
    if videos:
        out["video_data"] = list(videos)
    return out


def generate(client, payload):
    resp = client.post("/generate", json=payload)
    assert resp.status_code == 200, resp.text
    return resp.json()


def report_of(result):
    (report,) = result["meta_info"]["vl_cache"]  # request-level: exactly one report per request
    return report


def pool_state(client):
    return client.get("/get_server_info").json()["internal_states"][0]["vl_cache"]


# --- parity --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vl", [{"policy": "full"}, {"policy": "vlcache", "budget": 1.0}])
@pytest.mark.parametrize("parts,images", [(["image"], [IMAGE]), (["image", "image"], [IMAGE, OTHER_IMAGE])])
def test_uncompressed_output_is_token_identical_to_stock_sglang(client, vlcache_client, processor, vl, parts, images):
    prompt = chat_prompt(processor, parts)
    stock = generate(client, body(prompt, images))
    ours = generate(vlcache_client, body(prompt, images, vl))
    assert ours["output_ids"] == stock["output_ids"]
    report = report_of(ours)
    assert not report["compressed"] and report["kv_bytes_kept"] == report["kv_bytes_full"]


@pytest.mark.parametrize("policy", ["vlcache", "h2o", "snapkv", "pyramidkv"])
def test_kept_positions_match_the_reference_engine(vlcache_client, processor, reference_model, policy):
    from radix_ext.reference.engine import generate_from_inputs

    prompt = chat_prompt(processor, ["image"])
    ours = generate(vlcache_client, body(prompt, [IMAGE], {"policy": policy, "budget": 0.1, "report_kept": True}, 8))
    inputs = processor(text=[prompt], images=[IMAGE], return_tensors="pt")
    reference = generate_from_inputs(reference_model, inputs, policy, 0.1, max_new_tokens=8)
    report = report_of(ours)
    assert report["compressed"]
    assert report["kept_tokens_per_layer"] == reference.selection.layer_budgets
    for layer, keep in enumerate(reference.selection.keep):
        assert report["kept_positions"][layer] == keep.tolist(), f"layer {layer}"
    assert ours["output_ids"][:8] == reference.tokens[:8]


# --- memory --------------------------------------------------------------------------------------------


def test_physical_slots_held_equal_kept_tokens_plus_decode_tokens(vlcache_client, processor):
    assert vlcache_client.post("/flush_cache").status_code == 200
    payload = body(
        chat_prompt(processor, ["image"]), [IMAGE], {"policy": "vlcache", "budget": 0.1}, 400, ignore_eos=True
    )
    payload["stream"] = True
    report, checked = None, 0
    with vlcache_client.stream("POST", "/generate", json=payload) as resp:
        for line in resp.iter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            chunk = json.loads(line[5:])
            report = report or (chunk["meta_info"].get("vl_cache") or [None])[0]
            if report and len(chunk["output_ids"]) >= 3:
                state = pool_state(vlcache_client)
                # Everything held beyond the prompt's kept tokens is the same set of decode (and tree) slots
                # in every layer: held[l] - kept[l] is one number, the logical slots beyond the prompt.
                beyond_prompt = state["logical_slots_used"] - report["prompt_tokens"]
                assert beyond_prompt >= 1
                expected = [k + beyond_prompt for k in report["kept_tokens_per_layer"]]
                assert state["physical_slots_used_per_layer"] == expected
                checked += 1
                if checked == 3:
                    break  # closing the stream aborts the request
    assert checked == 3 and report["compressed"]
    assert sum(report["kept_tokens_per_layer"]) < 0.11 * 4 * report["prompt_tokens"]


REUSE = ("lazy", "compressed", "off")
VL = {"policy": "vlcache", "budget": 0.1}


def test_burst_of_mixed_requests_then_flush_frees_every_slot(vlcache_client, vlcache_server, processor):
    one, two = chat_prompt(processor, ["image"]), chat_prompt(processor, ["image", "image"])
    video = chat_prompt(processor, ["video"], "Describe the video.")
    text = chat_prompt(processor, [], "How many objects are there? Count them and give the number. " * 6)
    clip = mp4_data_url()
    jobs = []
    for i in range(13):
        jobs += [
            ("plain", body(one, [IMAGE], {"policy": "vlcache", "budget": 0.1}, 6 + i % 5)),
            ("plain", body(one, [IMAGE], {"policy": "full"}, 4)),  # shares the image prefix in the tree
            (
                "plain",
                body(two, [IMAGE, OTHER_IMAGE], {"policy": ["h2o", "snapkv", "vlcache"][i % 3], "budget": 0.2}, 5),
            ),
            ("abort", body(one, [OTHER_IMAGE], {**VL, "reuse": REUSE[i % 3]}, 300, ignore_eos=True)),
            # The same prompt again and again: after the first, a hit on its compressed turn.
            ("plain", body(one, [IMAGE], {**VL, "reuse": "compressed"}, 4 + i % 3)),
        ]
        if i % 4 == 0:
            jobs += [("plain", body(video, videos=[clip], vl={"policy": "vlcache", "budget": 0.1}, max_new_tokens=4)),
                     ("plain", body(text, vl={"policy": "streamingllm", "budget": 0.5}, max_new_tokens=4))]  # fmt: skip
    assert len(jobs) >= 50

    def run(job):
        kind, payload = job
        with httpx.Client(base_url=vlcache_server.url, timeout=120) as c:
            if kind == "plain":
                return report_of(generate(c, payload))["compressed"]
            with c.stream("POST", "/generate", json={**payload, "stream": True}) as resp:
                for n, _line in enumerate(resp.iter_lines()):
                    if n >= 3:
                        return "aborted"  # leaving the block closes the connection mid-decode

    with ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = list(pool.map(run, jobs))
    assert outcomes.count("aborted") == 13 and True in outcomes and False in outcomes

    flush_when_idle(vlcache_client)
    state = pool_state(vlcache_client)
    assert state["logical_slots_used"] == 0
    assert state["physical_slots_used_per_layer"] == [0] * len(state["physical_slots_used_per_layer"])
    assert state["compressed_requests"] == 0
    assert generate(vlcache_client, body(one, [IMAGE], {"policy": "vlcache", "budget": 0.1}, 4))["output_ids"]


# --- admission -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_pool_server(tiny_model_dir, tmp_path_factory):
    """A pool of 1200 token slots: three uncompressed 294-token image prompts fit at once. A low
    schedule conservativeness keeps SGLang's reservation for future decode tokens small, so the
    prompts, not the reservations, decide how many requests fit. SGLang's input blocker
    (`SGLANG_ENABLE_COLOCATED_BATCH_GEN`) hands the scheduler a batch `/generate` only once every
    request of it is tokenized: all arrive in one step, however slow the image processing."""
    config = SGLangServerConfig(
        model_path=str(tiny_model_dir), port=free_port(), max_running_requests=8, max_total_tokens=1200,
        extra_args=["--schedule-conservativeness", "0.02"],
    )  # fmt: skip
    env = {"SGLANG_ENABLE_COLOCATED_BATCH_GEN": "1"}
    with running_sglang(config, tmp_path_factory, "small-pool", env) as server:
        yield server


def _peak_after_batch(client, prompt, images, vl):
    """Run one batch `/generate` (one request per image) to completion; return the scheduler's own
    record of the most requests holding KV at once (a maximum since the server started)."""
    sampling = {"temperature": 0, "max_new_tokens": 150, "ignore_eos": True, "custom_params": {"vl_cache": vl}}
    batch = {
        "text": [prompt] * len(images),
        "image_data": [[png_data_url(i)] for i in images],
        "sampling_params": sampling,
    }
    results = generate(client, batch)
    assert [len(r["output_ids"]) for r in results] == [150] * len(images)
    return pool_state(client)["peak_running_requests"]


def test_compression_admits_more_concurrent_requests_into_a_small_pool(small_pool_server, processor):
    prompt = chat_prompt(processor, ["image"])
    # A different image per request: identical prompts would share one prefix in the radix tree.
    images = [make_image((448, 448), (40 * i, 200 - 30 * i, 90), i) for i in range(6)]
    with httpx.Client(base_url=small_pool_server.url, timeout=600) as c:
        full = _peak_after_batch(c, prompt, images, {"policy": "full"})
        # The record only grows: it exceeds `full` only if the compressed batch ran more at once.
        after_compressed = _peak_after_batch(c, prompt, images, {"policy": "vlcache", "budget": 0.1})
    print(f"peak running requests of 6 in a 1200-slot pool: full={full}, vlcache@0.1={after_compressed}")
    assert 1 <= full <= 4
    assert after_compressed > full


# --- retraction ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def retracting_server(tiny_model_dir, tmp_path_factory):
    """SGLang's own test switch retracts running requests every few decode steps: a retracted request
    is prefilled again (prompt and outputs so far) and compressed again."""
    config = SGLangServerConfig(model_path=str(tiny_model_dir), port=free_port(), max_running_requests=4)
    env = {"SGLANG_TEST_RETRACT": "1", "SGLANG_TEST_RETRACT_INTERVAL": "5"}
    with running_sglang(config, tmp_path_factory, "retract", env) as server:
        yield server


@pytest.mark.parametrize("reuse", ["lazy", "compressed"])
def test_retracted_requests_are_compressed_again_and_release_everything(retracting_server, processor, reuse):
    """`compressed`: a retracted request comes back over its own compressed turn, or compresses again."""
    prompt = chat_prompt(processor, ["image"])
    images = [make_image((448, 448), (30 * i, 90, 200 - 20 * i), i) for i in range(4)]
    vl = {"policy": "vlcache", "budget": 0.1, "reuse": reuse}

    def run(img):
        with httpx.Client(base_url=retracting_server.url, timeout=120) as c:
            return generate(c, body(prompt, [img], vl, 24, ignore_eos=True))

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, images))
    assert all(len(r["output_ids"]) == 24 and report_of(r)["compressed"] for r in results)
    assert sum(r["meta_info"]["num_retractions"] for r in results) > 0
    with httpx.Client(base_url=retracting_server.url, timeout=30) as c:
        flush_when_idle(c)
        state = pool_state(c)
    assert state["logical_slots_used"] == 0 and not any(state["physical_slots_used_per_layer"])


# --- bad options ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "vl,needle",
    [
        ({"policy": "nope"}, "unknown policy 'nope'"),
        ({"policy": "vlcache", "budget": 0}, "budget must be a number in (0, 1]"),
        ({"policy": "vlcache", "budget": 1.5}, "budget must be a number in (0, 1]"),
        ({"policy": "vlcache", "budget": "half"}, "budget must be a number in (0, 1]"),
        ({"policy": "vlcache", "window": 3}, "unknown option(s) ['window']"),
        ({"policy": "vlcache", "min_prompt_tokens": "abc"}, "min_prompt_tokens"),
        ({"policy": "vlcache", "sparsity_threshold": 0}, "sparsity_threshold"),
        ({"policy": "snapkv", "pool_kernel": 4}, "pool_kernel"),
        ("vlcache", "must be an object"),
    ],
)
def test_bad_options_fail_the_request_and_the_next_one_succeeds(vlcache_client, processor, vl, needle):
    prompt = chat_prompt(processor, ["image"])
    resp = vlcache_client.post("/generate", json=body(prompt, [IMAGE], vl, 4))
    assert resp.status_code == 400
    assert needle in resp.json()["error"]["message"]
    assert generate(vlcache_client, body(prompt, [IMAGE], {"policy": "vlcache", "budget": 0.1}, 4))["output_ids"]
