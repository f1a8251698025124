"""`vlcache-serve`: serve a vision-language model on SGLang with the vlcache plugin.

With no arguments it builds (on first use) and serves the embedded tiny Qwen2-VL on CPU, on loopback.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import shlex

from service.sglang_process import SGLangServer, SGLangServerConfig


def _example_image_data_url() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (56, 56), (200, 30, 30)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def example_curl(url: str) -> str:
    body = {
        "model": "default",
        "max_tokens": 16,
        "temperature": 0,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": _example_image_data_url()}},
                    {"type": "text", "text": "Describe the image."},
                ],
            }
        ],
    }
    return (
        f"curl -s {url}/v1/chat/completions -H 'Content-Type: application/json' "
        f"-d {shlex.quote(json.dumps(body))}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vlcache-serve", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: the embedded tiny Qwen2-VL)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--context-length", type=int, default=8192)
    parser.add_argument("--max-total-tokens", type=int, default=32768)
    args, extra = parser.parse_known_args(argv)  # anything else goes to SGLang as is

    if args.model is None:
        from radix_ext.models.tiny_qwen2vl import ensure_tiny_qwen2vl

        args.model = str(ensure_tiny_qwen2vl())
    config = SGLangServerConfig(
        model_path=args.model,
        host=args.host,
        port=args.port,
        device=args.device,
        dtype=args.dtype,
        context_length=args.context_length,
        max_total_tokens=args.max_total_tokens,
        extra_args=extra,
    )
    server = SGLangServer(config).start()
    try:
        server.wait_healthy()
        print(f"\n[vlcache] serving {args.model} at {config.url} (OpenAI-compatible API: {config.url}/v1)")
        print("[vlcache] try it:\n")
        print(example_curl(config.url) + "\n", flush=True)
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
