"""Scale out on loopback: N SGLang workers (plugin selected), SGLang's own router in front of them,
and the gateway attached to the router (`make serve-router`).

    python -m service.router_launch --workers 2 --port 8000 [--policy round_robin]

The router is `sglang-router` (`python -m sglang_router.launch_router`), not a balancer of ours.
What holds through it (checked in tests/integration/router):
- `/generate` is re-serialised by the router: `rid`, `image_data`, `video_data` and the typed
  sampling fields pass, `sampling_params.custom_params` does NOT. Per-request VL-Cache options
  therefore fall back to each worker's server-wide defaults (`VLCACHE_POLICY`, `VLCACHE_BUDGET`,
  `VLCACHE_POLICY_OPTIONS` in the worker's environment: `--worker-policy`, `--worker-budget` here);
  the KV report (`meta_info.vl_cache`) comes back and says what ran.
- Policy: `round_robin` (default here) or `power_of_two` (load-aware). `cache_aware` keys on the
  prompt text only: image prompts with the same question look identical to it and all go to one
  worker, and compressed requests never enter the radix tree whose reuse it aims for.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import IO

import httpx

from service.sglang_process import SGLangServer, SGLangServerConfig, free_port


@dataclass
class RouterConfig:
    worker_urls: list[str]
    model_path: str  # the router loads the tokenizer from here (no hub download)
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    prometheus_port: int = field(default_factory=free_port)
    policy: str = "round_robin"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "sglang_router.launch_router", "--worker-urls", *self.worker_urls,
            "--policy", self.policy, "--host", self.host, "--port", str(self.port),
            "--prometheus-host", self.host, "--prometheus-port", str(self.prometheus_port),
            "--model-path", self.model_path, "--tokenizer-path", self.model_path,
            "--worker-startup-check-interval", "1", "--log-level", "warn",
        ]  # fmt: skip


class SGLangRouter:
    """Owns one router process: start, wait until every worker is registered, stop."""

    def __init__(self, config: RouterConfig, log: IO | None = None):
        self.config = config
        self._log = log
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return self.config.url

    def registered_workers(self, client: httpx.Client) -> list[str]:
        """URLs of the workers the router has registered (its `GET /workers`)."""
        workers = client.get(f"{self.url}/workers").json().get("workers", [])
        return [w["url"] for w in workers]

    def __enter__(self) -> SGLangRouter:
        self.process = subprocess.Popen(
            self.config.argv(),
            stdout=self._log,
            stderr=subprocess.STDOUT if self._log else None,
            start_new_session=True,
        )
        try:
            self._wait_registered()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_registered(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=5.0) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the router exited with code {self.process.returncode} during start")
                with contextlib.suppress(httpx.TransportError, ValueError):
                    if set(self.registered_workers(client)) >= set(self.config.worker_urls):
                        print(f"[vlcache] router at {self.url}: {len(self.config.worker_urls)} workers", flush=True)
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the router at {self.url} did not register {self.config.worker_urls}")
                time.sleep(0.5)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __exit__(self, *exc) -> None:
        self.stop()


def worker_env(policy: str | None, budget: float | None) -> dict[str, str]:
    """A worker's server-wide VL-Cache defaults (what requests through the router get)."""
    env = {}
    if policy is not None:
        env["VLCACHE_POLICY"] = policy
    if budget is not None:
        env["VLCACHE_BUDGET"] = str(budget)
    return env


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vlcache-serve-router", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--policy", default="round_robin", help="the router's policy (see the module docstring)")
    parser.add_argument("--port", type=int, default=8000, help="the gateway's port")
    parser.add_argument("--model", help="model folder (default: the embedded grid-VQA model)")
    parser.add_argument("--worker-policy", help="VLCACHE_POLICY of every worker (default: the plugin's, vlcache)")
    parser.add_argument("--worker-budget", type=float, help="VLCACHE_BUDGET of every worker (default 0.1)")
    args = parser.parse_args(argv)

    from service.cli import main as gateway_main

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    from vlmodels.grid_vqa.spec import embedded_model_dir

    model = args.model or str(embedded_model_dir())
    env = worker_env(args.worker_policy, args.worker_budget)
    with contextlib.ExitStack() as stack:
        workers = [
            SGLangServer(SGLangServerConfig(model_path=model, port=free_port()), extra_env=env)
            for _ in range(args.workers)
        ]
        for worker in workers:  # start all, then wait: they load side by side
            stack.callback(worker.stop)
            worker.start()
        for worker in workers:
            worker.wait_healthy()
        router = stack.enter_context(SGLangRouter(RouterConfig([w.url for w in workers], model, policy=args.policy)))
        gateway_main(["--backend-url", router.url, "--port", str(args.port), "--tokenizer-path", model])


if __name__ == "__main__":
    main()
