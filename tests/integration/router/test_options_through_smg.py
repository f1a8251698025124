"""Scale-out through SGLang's own router (sglang-router, `round_robin`) in front of two real CPU
workers with the plugin selected, the gateway attached to the router (`--backend-url`), as
`make serve-router` starts them. 12 mixed requests (one or two images, a video, streaming or not,
several policies): every answer 200, both workers served some, each compressed one reports its
KV. The router drops `sampling_params.custom_params`, so the per-request options fall back to the
workers' defaults (`VLCACHE_POLICY=snapkv`, `VLCACHE_BUDGET=0.3` here): the reports say so."""

import contextlib
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from service.app import create_app
from service.config import GatewaySettings
from service.router_launch import RouterConfig, SGLangRouter, worker_env
from service.sglang_process import SGLangServer, SGLangServerConfig, free_port
from testkit import make_image, mp4_data_url, png_data_url, running_server

WORKER_DEFAULTS = {"policy": "snapkv", "budget": 0.3}


@pytest.fixture(scope="module")
def router_stack(tiny_model_dir, tmp_path_factory):
    """(gateway URL, router, worker URLs): two workers, the router, a gateway; torn down together."""
    env = worker_env(WORKER_DEFAULTS["policy"], WORKER_DEFAULTS["budget"])
    logs = tmp_path_factory.mktemp("router-stack")
    with contextlib.ExitStack() as stack:
        workers = []
        for i in range(2):  # start both, then wait: they load side by side
            config = SGLangServerConfig(model_path=str(tiny_model_dir), port=free_port(), max_running_requests=4)
            worker = SGLangServer(config, log=stack.enter_context(open(logs / f"worker{i}.log", "w")), extra_env=env)
            stack.callback(worker.stop)
            workers.append(worker.start())
        for worker in workers:
            worker.wait_healthy()
        urls = [w.url for w in workers]
        log = stack.enter_context(open(logs / "router.log", "w"))
        router = stack.enter_context(SGLangRouter(RouterConfig(urls, str(tiny_model_dir)), log=log))
        app = create_app(GatewaySettings(backend_url=router.url, tokenizer_path=str(tiny_model_dir)))
        with running_server(app, ready_path="/ready", timeout_s=300) as url:
            yield url, router, urls


def _served(worker_url: str) -> float:
    """Requests a worker finished, from SGLang's own Prometheus counter."""
    text = httpx.get(f"{worker_url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("sglang:num_requests_total")
    )


def _requests():
    images = [png_data_url(make_image((224, 224), (30 * i, 160, 90), i)) for i in range(4)]
    video = mp4_data_url()
    policies = [{"policy": "vlcache", "budget": 0.1}, {"policy": "h2o", "budget": 0.2}, {"policy": "full"}, None]
    out = []
    for i in range(12):
        media = [{"type": "image_url", "image_url": {"url": images[i % 4]}}]
        if i % 4 == 1:
            media.append({"type": "image_url", "image_url": {"url": images[(i + 1) % 4]}})
        if i % 6 == 5:
            media = [{"type": "video_url", "video_url": {"url": video}}]
        content = [*media, {"type": "text", "text": f"Describe it ({i})."}]
        body = {"model": "default", "max_tokens": 6, "temperature": 0, "stream": i % 3 == 0,
                "messages": [{"role": "user", "content": content}]}  # fmt: skip
        if policies[i % 4] is not None:
            body["vl_cache"] = policies[i % 4]
        if body["stream"]:
            body["stream_options"] = {"include_usage": True}
        out.append(body)
    return out


def _send(url, body):
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


def test_twelve_mixed_requests_through_the_router_reach_both_workers(router_stack):
    url, router, workers = router_stack
    with httpx.Client(timeout=10) as c:
        assert set(router.registered_workers(c)) == set(workers)
    before = [_served(w) for w in workers]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda b: _send(url, b), _requests()))
    assert [status for status, _ in results] == [200] * 12
    served = [_served(w) - b for w, b in zip(workers, before, strict=True)]
    print("requests served per worker:", served)
    assert sum(served) == 12 and min(served) >= 1
    for _, usage in results:
        report = usage["kv_cache"]
        # custom_params does not survive the router: every request ran with the workers' defaults.
        assert (report["policy"], report["budget"]) == (WORKER_DEFAULTS["policy"], WORKER_DEFAULTS["budget"])
        assert report["compressed"], report
        assert report["kv_bytes_kept"] < report["kv_bytes_full"]
        assert len(report["kept_tokens_per_layer"]) == len(report["freed_slots_per_layer"])
