"""`vlcache-serve`: the REST gateway in front of SGLang (with the vlcache plugin).

With no arguments it serves the embedded model (the trained grid-VQA Qwen2-VL committed in
`models/grid-vqa/`): it starts SGLang on it as a child process bound to loopback, and serves the gateway on http://127.0.0.1:8000. With `--backend-url` it
attaches to an SGLang server that already runs. Every option is also a `VLCACHE_*` environment
variable (see service/config.py); flags win over the environment. Unknown flags go to SGLang as is.
"""

from __future__ import annotations

import argparse
import base64
import json
import shlex

from service.config import GatewaySettings
from vlmodels.grid_vqa.spec import EXAMPLE_QUESTION


def _example_image_data_url() -> str:
    """The embedded model's example grid (`models/grid-vqa/example.png`, 100 visual tokens): the
    question `EXAMPLE_QUESTION` has one right answer, so the first request shows the model reads it."""
    from vlmodels.grid_vqa.spec import example_image_path

    return "data:image/png;base64," + base64.b64encode(example_image_path().read_bytes()).decode()


def example_body(model: str) -> dict:
    return {
        "model": model,
        "max_tokens": 16,
        "temperature": 0,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": _example_image_data_url()}},
                    {"type": "text", "text": EXAMPLE_QUESTION},
                ],
            }
        ],
        "vl_cache": {"policy": "vlcache", "budget": 0.1},
    }


def example_curl(url: str, model: str, with_key: bool = False) -> str:
    # The key itself is never printed: the snippet reads it from the environment.
    auth = '-H "Authorization: Bearer $VLCACHE_API_KEY" ' if with_key else ""
    return (
        f"curl -s {url}/v1/chat/completions {auth}-H 'Content-Type: application/json' "
        f"-d {shlex.quote(json.dumps(example_body(model)))}"
    )


def example_python(url: str, model: str, with_key: bool = False) -> str:
    key = 'os.environ["VLCACHE_API_KEY"]' if with_key else '"unused"'
    return f'''import os
from openai import OpenAI

client = OpenAI(base_url="{url}/v1", api_key={key})
image = "{_example_image_data_url()}"
resp = client.chat.completions.create(
    model="{model}", max_tokens=16, temperature=0,
    messages=[{{"role": "user", "content": [
        {{"type": "image_url", "image_url": {{"url": image}}}},
        {{"type": "text", "text": "{EXAMPLE_QUESTION}"}}]}}],
    extra_body={{"vl_cache": {{"policy": "vlcache", "budget": 0.1}}}},
)
print(resp.choices[0].message.content)
print(resp.usage.model_extra)  # kv_cache (the VL-Cache report) and timings'''


def parse_args(argv: list[str] | None) -> tuple[dict, list[str]]:
    """CLI flags -> settings overrides (only the flags given) and the extra args for SGLang."""
    parser = argparse.ArgumentParser(prog="vlcache-serve", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--backend-url", help="attach to this SGLang server instead of starting one (VLCACHE_BACKEND_URL)")
    add("--routing-key-header", help="behind a router: send each chat's routing key in this header")
    add("--model", help="model folder for the started SGLang (default: the embedded grid-VQA model)")
    add("--tokenizer-path", help="where to load the chat template (default: the path SGLang reports)")
    add("--served-model-name", help="the model id clients send (default: the model folder's name)")
    add("--host", help="gateway bind address (default 127.0.0.1)")
    add("--port", type=int, help="gateway port (default 8000)")
    add("--sglang-port", type=int, help="port of the started SGLang, on loopback (default: a free one)")
    add("--device", choices=["cpu", "cuda"], help="device of the started SGLang (default cpu)")
    add("--dtype")
    add("--context-length", type=int)
    add("--max-total-tokens", type=int)
    add("--max-running-requests", type=int)
    add("--default-policy", help="VL-Cache policy for requests that name none (default: the plugin's, vlcache at 0.1)")
    add("--default-budget", type=float)
    add(
        "--verbose",
        action="store_true",
        default=None,
        help="show SGLang's output here too (it always goes to a log file)",
    )
    add(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="the gateway's own log (default warning; info: one line per request)",
    )
    add("--log-dir", help="folder of SGLang's log file (default: <temp dir>/vlcache-serve)")
    add(
        "--shutdown-timeout",
        dest="shutdown_timeout_s",
        type=float,
        help="seconds in-flight requests get to finish at Ctrl-C (default 5)",
    )
    args, extra = parser.parse_known_args(argv)
    overrides = {key: value for key, value in vars(args).items() if value is not None}
    return overrides, extra


BANNER_END = "[vlcache] serving; Ctrl-C stops"


def print_banner(url: str, model: str, with_key: bool = False) -> None:
    print(f"\n[vlcache] gateway ready at {url} (OpenAI-compatible: {url}/v1, docs: {url}/docs, metrics: {url}/metrics)")
    if with_key:
        print("[vlcache] an API key is configured: the examples read it from $VLCACHE_API_KEY")
    print("[vlcache] try it with curl:\n")
    print(example_curl(url, model, with_key) + "\n")
    print("[vlcache] or with the openai Python client:\n")
    print(example_python(url, model, with_key) + "\n")
    print(BANNER_END, flush=True)


def _banner_printer(settings: GatewaySettings):
    public_host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    url = f"http://{public_host}:{settings.port}"
    with_key = settings.api_key is not None
    return lambda model: print_banner(url, model, with_key)


def main(argv: list[str] | None = None) -> None:
    """Exit codes (service/lifecycle.py): 0 stopped cleanly, 1 failed, 2 bad arguments, 3 stopped with requests
    aborted."""
    from service import lifecycle

    overrides, extra = parse_args(argv)
    settings = GatewaySettings(**overrides)
    if settings.backend_url:
        if extra:
            raise SystemExit(f"unknown arguments {extra}: with --backend-url there is no SGLang to pass them to")
        raise SystemExit(lifecycle.serve_gateway(settings, _banner_printer(settings)))

    from service.sglang_process import SGLangServerConfig, free_port
    from vlmodels.grid_vqa.spec import embedded_model_dir

    model = settings.model or str(embedded_model_dir())
    config = SGLangServerConfig(
        model_path=model,
        host="127.0.0.1",  # the child is private to the gateway
        port=settings.sglang_port or free_port(),
        device=settings.device,
        dtype=settings.dtype,
        context_length=settings.context_length,
        max_total_tokens=settings.max_total_tokens,
        max_running_requests=settings.max_running_requests,
        extra_args=extra,
        server_warmup=True,  # the first request is then fast, and SGLang logs no /freeze_gc traceback
    )
    raise SystemExit(lifecycle.run_with_engine(settings, config, _banner_printer(settings)))


if __name__ == "__main__":
    main()
