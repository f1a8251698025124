"""Run an SGLang server (with the vlcache plugin, loaded through its entry point) as a child process.

The child binds to loopback and its log goes where the caller says (inherited by default).
`stop()` asks SGLang's main process to shut down (SIGTERM: it drains, tells its scheduler to exit and
reaps its children, which is a clean exit), and only SIGKILLs the process group if that takes longer
than the grace period. Sending SIGTERM to the whole group instead kills the scheduler under the main
process, which SGLang reads as a crash ("Triggering SIGQUIT", crash diagnostics, a 5 s sleep).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import IO

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class SGLangServerConfig:
    """The command line of an SGLang server. Defaults: SGLang's CPU engine on the embedded tiny model."""

    model_path: str
    host: str = "127.0.0.1"
    port: int = 30000
    device: str = "cpu"
    dtype: str = "float32"
    context_length: int = 8192
    max_total_tokens: int = 32768
    max_running_requests: int = 8
    kv_compression: bool = True  # select the vlcache plugin (`--radix-cache-backend vlcache`)
    # SGLang's request timestamps (first_token_latency, queue_time, e2e_latency) in meta_info, from
    # which the gateway reports the timings of plain answers; also SGLang's own /metrics.
    enable_metrics: bool = True
    # SGLang's own warm-up request at start. On, `/health` answers 200 only after one real multimodal
    # request went through, so the first client request does not pay the one-time cost, and SGLang
    # waits for its HTTP socket before its post-warm-up `/freeze_gc` call. Off (`--skip-server-warmup`),
    # SGLang posts `/freeze_gc` before its socket is bound and logs a ConnectionRefusedError traceback
    # (harmless); the test tier starts servers without warm-up to save time.
    server_warmup: bool = False
    extra_args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def argv(self) -> list[str]:
        args = [
            sys.executable, "-m", "sglang.launch_server",
            "--model-path", self.model_path,
            "--host", self.host,
            "--port", str(self.port),
            "--device", self.device,
            "--dtype", self.dtype,
            "--context-length", str(self.context_length),
            "--max-total-tokens", str(self.max_total_tokens),
            "--max-running-requests", str(self.max_running_requests),
            # every server here serves images: SGLang leaves Gemma 3's vision off unless asked
            "--enable-multimodal",
        ]  # fmt: skip
        if not self.server_warmup:
            args += ["--skip-server-warmup"]
        if self.kv_compression:
            args += ["--radix-cache-backend", "vlcache"]
        if self.enable_metrics:
            args += ["--enable-metrics"]
        if self.device == "cpu":
            # The CPU engine: no CUDA graphs, no overlap scheduler, plain-torch attention and sampling.
            args += [
                "--attention-backend", "torch_native",
                "--sampling-backend", "pytorch",
                "--mm-attention-backend", "sdpa",
                "--cuda-graph-backend-decode", "disabled",
                "--cuda-graph-backend-prefill", "disabled",
                "--disable-overlap-schedule",
                "--sleep-on-idle",  # an idle scheduler otherwise busy-polls a core; we have two
            ]  # fmt: skip
        return args + list(self.extra_args)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.device == "cpu":
            env["SGLANG_USE_CPU_ENGINE"] = "1"
        return env


class SGLangServer:
    """Owns one SGLang server process group: start, wait until healthy, stop."""

    def __init__(self, config: SGLangServerConfig, log: IO | None = None, extra_env: dict | None = None):
        self.config = config
        self._log = log
        self._extra_env = extra_env or {}
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return self.config.url

    def start(self) -> SGLangServer:
        env = self.config.env() | self._extra_env
        self.process = subprocess.Popen(
            self.config.argv(), env=env, stdout=self._log, stderr=subprocess.STDOUT if self._log else None,
            start_new_session=True,  # its own process group, so stop() reaches the scheduler too
        )  # fmt: skip
        return self

    def wait_healthy(self, timeout_s: float = 300.0, progress_every_s: float = 5.0, progress=None) -> float:
        """Poll `/health` until it answers 200; returns the seconds it took.

        `progress(elapsed_s)` is called every `progress_every_s` while waiting (default: a printed line).
        Raises RuntimeError if the process exits, TimeoutError after `timeout_s`.
        """
        if progress is None:

            def progress(elapsed: float) -> None:
                print(f"[vlcache] waiting for SGLang at {self.url} ... {elapsed:.0f}s", flush=True)

        start = last = time.monotonic()
        with httpx.Client(timeout=5.0, trust_env=False) as client:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"SGLang server exited with code {self.process.returncode} during start")
                try:
                    if client.get(f"{self.url}/health").status_code == 200:
                        return time.monotonic() - start
                except httpx.TransportError:
                    pass
                now = time.monotonic()
                if now - start > timeout_s:
                    raise TimeoutError(f"SGLang server not healthy after {timeout_s:.0f}s at {self.url}")
                if now - last >= progress_every_s:
                    progress(now - start)
                    last = now
                time.sleep(0.5)

    def abort_all(self) -> None:
        """Abort every request SGLang holds (best effort), so its own drain at SIGTERM has nothing to wait for."""
        try:
            httpx.post(f"{self.url}/abort_request", json={"abort_all": True}, timeout=5.0, trust_env=False)
        except httpx.HTTPError:
            pass

    def terminate(self) -> None:
        """Ask SGLang to shut down (SIGTERM to its main process) and return at once; `stop()` then
        waits for it. SGLang notices the signal within 5 s (its watchdog's poll) and exits a few
        seconds later: callers with other work to do send this first and `stop()` afterwards."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, grace_s: float = 15.0) -> bool:
        """SIGTERM SGLang's main process, wait up to `grace_s` for it, then SIGKILL what is left of its
        process group. True when it exited on its own within the grace period (a clean stop)."""
        if self.process is None or self.process.poll() is not None:
            return True
        pgid = os.getpgid(self.process.pid)
        self.terminate()
        try:
            self.process.wait(grace_s)
            clean = True
        except subprocess.TimeoutExpired:
            clean = False
        try:
            os.killpg(pgid, signal.SIGKILL)  # children that outlived the parent (none after a clean stop)
        except ProcessLookupError:
            pass
        self.process.wait()
        return clean

    def __enter__(self) -> SGLangServer:
        self.start()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
