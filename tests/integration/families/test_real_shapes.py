"""Qwen3-VL at Qwen3-VL-8B's attention geometry (36 layers, 32 query heads over 8 KV heads of 128; small
widths elsewhere), served in bfloat16 with compression: the pool holds the real model's bytes per token and
layer, and a compressed turn kept for reuse holds, in every layer, its kept tokens plus the decoded ones."""

import httpx
import pytest

from service.sglang_process import SGLangServerConfig, free_port
from tests.integration.conftest import running_sglang
from tests.integration.families.test_family_engines import BUDGET, IMAGES, MAX_NEW_TOKENS, _prompt, _visual_tokens
from tests.integration.sglang.test_logprob_parity import generate_with_logprobs
from tests.integration.sglang.test_vlcache_plugin import body, pool_state, report_of

LAYERS, KV_HEADS, HEAD_DIM, BF16_BYTES = 36, 8, 128, 2


@pytest.fixture(scope="module")
def real_shape(tmp_path_factory):
    from vlmodels.families import QWEN3_VL_8B_SHAPE, ensure_family

    model_dir = ensure_family("qwen3_vl", spec=QWEN3_VL_8B_SHAPE)
    # 4096 slots of 36 x 4 KiB: 600 MB of bf16 KV, room for the two-image prompt and its reply
    config = SGLangServerConfig(
        model_path=str(model_dir), port=free_port(), dtype="bfloat16", max_total_tokens=4096, max_running_requests=2
    )
    with (
        running_sglang(config, tmp_path_factory, "real-shape") as server,
        httpx.Client(base_url=server.url, timeout=httpx.Timeout(300.0)) as client,
    ):
        yield model_dir, client


def test_compressed_turn_holds_kept_plus_decoded_slots_per_layer_at_8b_geometry(real_shape):
    model_dir, client = real_shape
    prompt = _prompt(model_dir)
    assert client.post("/flush_cache").status_code == 200
    vl = {"policy": "vlcache", "budget": BUDGET, "reuse": "compressed"}  # the turn stays cached, compressed
    result, _ = generate_with_logprobs(client, body(prompt, IMAGES, vl, MAX_NEW_TOKENS, ignore_eos=True))
    report, m = report_of(result), result["meta_info"]["prompt_tokens"]
    assert report["compressed"], report.get("reason")
    assert report["visual_tokens"] == _visual_tokens(model_dir, prompt, m) > 0
    assert len(report["kept_tokens_per_layer"]) == LAYERS and abs(report["realized_budget"] - BUDGET) <= 0.005

    token_bytes = 2 * KV_HEADS * HEAD_DIM * BF16_BYTES  # K and V of one token in one layer
    assert report["kv_bytes_full"] == m * LAYERS * token_bytes
    assert report["kv_bytes_kept"] == sum(report["kept_tokens_per_layer"]) * token_bytes
    state = pool_state(client)
    assert state["kv_bytes_per_token_per_layer"] == token_bytes
    decoded = len(result["output_ids"]) - 1  # the last output token's KV is never computed
    assert state["tree_cached_slots"] == m + decoded == state["logical_slots_used"]
    assert state["physical_slots_used_per_layer"] == [k + decoded for k in report["kept_tokens_per_layer"]]
