"""Scale out on loopback: N SGLang workers (plugin selected), SMG in front of them, and the gateway
attached to SMG (`make serve-router`).

    python -m service.router_launch --workers 2 --port 8000 [--policy round_robin] [--no-sticky]

The router is SMG (Shepherd Model Gateway, `smg launch`, sglang-router's successor), not a balancer
of ours; its workers are plain HTTP SGLang servers (its gRPC mode drops `custom_params`).
What holds through it (checked in tests/integration/router):
- `/generate` reaches the worker with `sampling_params.custom_params`, so per-request VL-Cache
  options (policy, budget) run as asked; requests without options get the worker's defaults
  (`VLCACHE_POLICY`, `VLCACHE_BUDGET`: `--worker-policy`, `--worker-budget` here).
- Sticky sessions (default on): SMG pins every routing key to one worker. The gateway sends each
  chat's key (`service.routing_key`, in `ROUTING_KEY_HEADER`), so all turns of a chat land where
  its prefix KV is. Requests without the header follow `--policy` (`round_robin` by default;
  `cache_aware` keys on prompt text, in which an image is a placeholder).
- A dead worker: SMG's health checks (every `health_check_interval_s`) take it out and put it back
  when it answers again. A request it had not started answering is retried on another worker by
  SMG; a stream that had already sent tokens ends with the gateway's in-band error event.
- Each worker gets cores / workers threads (`worker_env`).
- Prometheus: SMG's `smg_*` series on `prometheus_port` (bound to `host`, never 0.0.0.0 here).
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

from service.routing_key import ROUTING_KEY_HEADER
from service.sglang_process import SGLangServer, SGLangServerConfig, free_port


@dataclass
class RouterConfig:
    worker_urls: list[str]
    model_path: str  # SMG loads the tokenizer from here (no hub download)
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    prometheus_port: int = field(default_factory=free_port)
    policy: str = "round_robin"
    sticky: bool = True  # pin each routing key (ROUTING_KEY_HEADER) to one worker
    health_check_interval_s: int = 5  # how soon a dead worker is taken out, and a restarted one back
    # SGLang's /health generates one token and answers after at least 1 s; a CPU worker busy with a long
    # prefill may take far longer, and SMG's default 5 s marks a merely busy worker unhealthy (503s).
    # A dead worker refuses the connection at once, so the long timeout does not slow its removal.
    health_check_timeout_s: int = 60

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def argv(self) -> list[str]:
        args = [
            sys.executable, "-m", "smg", "launch", "--worker-urls", *self.worker_urls,
            "--policy", self.policy, "--host", self.host, "--port", str(self.port),
            "--prometheus-host", self.host, "--prometheus-port", str(self.prometheus_port),
            "--model-path", self.model_path, "--tokenizer-path", self.model_path,
            "--worker-startup-check-interval", "1",
            "--health-check-interval-secs", str(self.health_check_interval_s),
            "--health-check-timeout-secs", str(self.health_check_timeout_s),
            "--health-failure-threshold", "2", "--health-success-threshold", "1",
            "--log-level", "warn",
        ]  # fmt: skip
        if self.sticky:
            args += ["--sticky-sessions", "--routing-key-headers", ROUTING_KEY_HEADER]
        return args


class SMGRouter:
    """Owns one SMG process: start, wait until every worker is registered, stop."""

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

    def __enter__(self) -> SMGRouter:
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


def worker_env(policy: str | None, budget: float | None, workers_per_machine: int = 1) -> dict[str, str]:
    """A worker's server-wide VL-Cache defaults (what requests that name no options get), and its
    share of this machine's cores: CPU workers side by side that each take every core oversubscribe
    them (`make bench-scale-out`: two workers at 2 threads each on 2 cores served 0.34x one worker's
    requests per second, at 1 thread each 1.06x). An `OMP_NUM_THREADS` already set is kept."""
    env = {}
    if workers_per_machine > 1 and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers_per_machine))
    if policy is not None:
        env["VLCACHE_POLICY"] = policy
    if budget is not None:
        env["VLCACHE_BUDGET"] = str(budget)
    return env


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vlcache-serve-router", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--policy", default="round_robin", help="SMG's policy for requests without a routing key")
    parser.add_argument("--no-sticky", action="store_true", help="no routing key: every request follows --policy")
    parser.add_argument("--port", type=int, default=8000, help="the gateway's port")
    parser.add_argument("--model", help="model folder (default: the embedded grid-VQA model)")
    parser.add_argument("--worker-policy", help="VLCACHE_POLICY of every worker (default: the plugin's, vlcache)")
    parser.add_argument("--worker-budget", type=float, help="VLCACHE_BUDGET of every worker (default 0.1)")
    args = parser.parse_args(argv)

    from service.cli import main as gateway_main

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    from vlmodels.grid_vqa.spec import embedded_model_dir

    model = args.model or str(embedded_model_dir())
    env = worker_env(args.worker_policy, args.worker_budget, args.workers)
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
        config = RouterConfig([w.url for w in workers], model, policy=args.policy, sticky=not args.no_sticky)
        router = stack.enter_context(SMGRouter(config))
        key = [] if args.no_sticky else ["--routing-key-header", ROUTING_KEY_HEADER]
        gateway_main(["--backend-url", router.url, "--port", str(args.port), "--tokenizer-path", model, *key])


if __name__ == "__main__":
    main()
