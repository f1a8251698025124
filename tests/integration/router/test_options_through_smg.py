"""Per-request VL-Cache options survive SMG: 12 mixed requests through gateway -> SMG -> 2 workers
(one or two images, a video; the chat route streaming or not, and the multipart `/v1/generate`
route), each with its own policy and budget or none. Every answer is 200, both workers serve some,
and every KV report says what its request asked for (the workers' defaults, `snapkv` at 0.3, only
for the requests that named nothing)."""

import json
from concurrent.futures import ThreadPoolExecutor

import httpx

from testkit import image_bytes, make_image, mp4_data_url, png_data_url
from tests.integration.router.conftest import WORKER_DEFAULTS

# Asked options, and the (policy, budget) the report must show. None: the request names nothing.
ASKED = [
    ({"policy": "vlcache", "budget": 0.1}, ("vlcache", 0.1)),
    ({"policy": "h2o", "budget": 0.2}, ("h2o", 0.2)),
    ({"policy": "full", "budget": 1.0}, ("full", 1.0)),
    (None, (WORKER_DEFAULTS["policy"], WORKER_DEFAULTS["budget"])),
    ({"policy": "snapkv", "budget": 0.5}, ("snapkv", 0.5)),
    ({"policy": "pyramidkv", "budget": 0.25}, ("pyramidkv", 0.25)),
]


def _chat_body(i: int, images: list[str], video: str) -> dict:
    media = [{"type": "image_url", "image_url": {"url": images[i % 4]}}]
    if i % 4 == 1:
        media.append({"type": "image_url", "image_url": {"url": images[(i + 1) % 4]}})
    if i % 6 == 5:
        media = [{"type": "video_url", "video_url": {"url": video}}]
    body = {"model": "default", "max_tokens": 4, "temperature": 0, "stream": i % 3 == 0,
            "messages": [{"role": "user", "content": [*media, {"type": "text", "text": f"Describe it ({i})."}]}]}  # fmt: skip
    if body["stream"]:
        body["stream_options"] = {"include_usage": True}
    if ASKED[i % len(ASKED)][0] is not None:
        body["vl_cache"] = ASKED[i % len(ASKED)][0]
    return body


def _send_chat(url: str, body: dict) -> tuple[int, dict | None]:
    with httpx.Client(base_url=url, timeout=300) as c:
        if not body["stream"]:
            resp = c.post("/v1/chat/completions", json=body)
            return resp.status_code, resp.json().get("usage")
        usage = None
        with c.stream("POST", "/v1/chat/completions", json=body) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: {"):
                    usage = json.loads(line[6:]).get("usage") or usage
        return resp.status_code, usage


def _send_upload(url: str, i: int) -> tuple[int, dict | None]:
    asked = ASKED[i % len(ASKED)][0] or {}
    form = {"prompt": f"What is this ({i})?", "max_tokens": "4", **{k: str(v) for k, v in asked.items()}}
    files = [("images", (f"{i}.png", image_bytes((224, 224), (40 * i % 255, 90, 200)), "image/png"))]
    resp = httpx.post(f"{url}/v1/generate", data=form, files=files, timeout=300)
    return resp.status_code, resp.json().get("usage")


def test_twelve_mixed_requests_keep_their_own_options_through_smg(router_stack):
    url = router_stack.keyed
    images = [png_data_url(make_image((224, 224), (30 * i, 160, 90), i)) for i in range(4)]
    video = mp4_data_url()

    def send(i: int):  # every fourth request through the multipart route, the rest through chat
        return _send_upload(url, i) if i % 4 == 2 else _send_chat(url, _chat_body(i, images, video))

    before = router_stack.served()
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(send, range(12)))
    assert [status for status, _ in results] == [200] * 12, results
    served = [after - b for after, b in zip(router_stack.served(), before, strict=True)]
    print("requests served per worker:", served)
    assert sum(served) == 12 and min(served) >= 1
    for i, (_, usage) in enumerate(results):
        report = usage["kv_cache"]
        assert (report["policy"], report["budget"]) == ASKED[i % len(ASKED)][1], (i, report)
        if report["policy"] == "full":
            assert report["kv_bytes_kept"] == report["kv_bytes_full"]
        else:
            assert report["compressed"] and report["kv_bytes_kept"] < report["kv_bytes_full"], (i, report)
        assert len(report["kept_tokens_per_layer"]) == len(report["freed_slots_per_layer"])
    # the gateway's load query reaches the workers through SMG too (its `/get_loads`), so a scrape says up
    assert "vlcache_backend_up 1.0" in httpx.get(f"{url}/metrics", timeout=30).text
