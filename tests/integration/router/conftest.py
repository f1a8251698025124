"""One scale-out stack for every router test (started once: two CPU SGLang workers cost the most).

`make serve-router`'s layout on loopback: two real CPU SGLang workers (tiny model, plugin selected,
server defaults `WORKER_DEFAULTS`), SMG in front of them (`round_robin`, sticky sessions on the
gateway's routing-key header, health checks every second), and three gateways: `keyed` (through SMG,
sending each chat's routing key, as `make serve-router` runs it), `plain` (through SMG, no key: every
request follows the policy) and `single` (straight to worker 0: the one-worker reference).
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.config import GatewaySettings
from service.router_launch import RouterConfig, SMGRouter, worker_env
from service.routing_key import ROUTING_KEY_HEADER
from service.sglang_process import SGLangServer, SGLangServerConfig, free_port
from testkit import running_server, stop_in_background

WORKER_DEFAULTS = {"policy": "snapkv", "budget": 0.3}


@dataclass
class RouterStack:
    workers: list[SGLangServer]
    router: SMGRouter
    keyed: str  # gateway URLs
    plain: str
    single: str
    logs: Path
    worker_env: dict
    _open_logs: list = field(default_factory=list)

    @property
    def worker_urls(self) -> list[str]:
        return [w.url for w in self.workers]

    def served(self) -> list[float]:
        """Requests each worker finished (SGLang's own `sglang:num_requests_total`)."""
        return [self.served_on(i) for i in range(len(self.workers))]

    def served_on(self, i: int) -> float:
        """Requests worker i finished (it must be up)."""
        return _counter(f"{self.worker_urls[i]}/metrics", "sglang:num_requests_total")

    def healthy_in_router(self) -> dict[str, bool]:
        """Worker URL -> whether SMG counts it healthy (its `GET /workers`)."""
        workers = httpx.get(f"{self.router.url}/workers", timeout=10).json()["workers"]
        return {w["url"]: w["is_healthy"] for w in workers}

    def kill(self, i: int) -> None:
        """SIGKILL worker i's whole process group (HTTP server, scheduler, detokenizer): a crash."""
        process = self.workers[i].process
        os.killpg(os.getpgid(process.pid), signal.SIGKILL)
        process.wait()

    def restart(self, i: int) -> None:
        """Worker i again, on the same port and settings; returns once it answers /health."""
        old = self.workers[i]
        log = open(self.logs / f"worker{i}-restarted.log", "w")  # closed with the stack (see router_stack)
        self._open_logs.append(log)
        self.workers[i] = SGLangServer(old.config, log=log, extra_env=self.worker_env).start()
        self.workers[i].wait_healthy()

    def stop_workers(self) -> None:
        """SIGTERM every worker; they shut down while the next tests run (and the session waits for them)."""
        stop_in_background(*self.workers)
        for log in self._open_logs:
            log.close()


def _counter(url: str, name: str) -> float:
    text = httpx.get(url, timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


@pytest.fixture(scope="package")
def router_stack(tiny_model_dir, tmp_path_factory):
    """The stack of the module docstring; torn down after the package's last test."""
    env = worker_env(WORKER_DEFAULTS["policy"], WORKER_DEFAULTS["budget"])
    logs = tmp_path_factory.mktemp("router-stack")
    model = str(tiny_model_dir)
    with contextlib.ExitStack() as stack:
        workers = []
        for i in range(2):  # start both, then wait: they load side by side
            config = SGLangServerConfig(model_path=model, port=free_port(), max_running_requests=4)
            log = stack.enter_context(open(logs / f"worker{i}.log", "w"))
            workers.append(SGLangServer(config, log=log, extra_env=env).start())
        state = RouterStack(workers, None, "", "", "", logs, env)
        stack.callback(state.stop_workers)
        for worker in workers:
            worker.wait_healthy()
        config = RouterConfig([w.url for w in workers], model, health_check_interval_s=1)
        state.router = stack.enter_context(SMGRouter(config, log=stack.enter_context(open(logs / "smg.log", "w"))))

        def gateway(backend_url, key_header=None):
            settings = GatewaySettings(backend_url=backend_url, tokenizer_path=model, routing_key_header=key_header)
            return stack.enter_context(running_server(create_app(settings), ready_path="/ready", timeout_s=300))

        state.keyed = gateway(state.router.url, ROUTING_KEY_HEADER)
        state.plain = gateway(state.router.url)
        state.single = gateway(workers[0].url)
        print(f"[router tests] logs in {logs}")
        yield state
