"""Run the gateway (and, unless attached, its SGLang child) in the foreground, as `vlcache-serve` does.

Contract:
- the terminal gets a few `[vlcache]` progress lines (engine starting, waiting with elapsed seconds,
  ready), then the banner (URL, `curl`, `openai` snippet) once the gateway's socket is bound and
  SGLang is connected; SGLang's own output goes to a log file whose path is printed (and, with
  `verbose`, to the terminal as well); the gateway's log is at `settings.log_level`;
- Ctrl-C / SIGTERM stop it: the gateway stops accepting, in-flight requests get up to
  `settings.shutdown_timeout_s` to finish; the rest end with a 503 `server_stopping` (in-band for
  a stream) and are aborted in SGLang; then SGLang gets SIGTERM (its own clean shutdown) and SIGKILL
  only if that takes longer than `ENGINE_GRACE_S`. A second Ctrl-C ends in-flight requests at once;
- the return value is the process exit code: `EXIT_CLEAN` (stopped by a signal, nothing cut off),
  `EXIT_FAILED` (SGLang did not start, or exited on its own, or the gateway could not serve),
  `EXIT_UNCLEAN` (stopped by a signal, but requests had to be aborted or SGLang had to be killed).
"""

from __future__ import annotations

import asyncio
import copy
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import uvicorn

from service.config import GatewaySettings

EXIT_CLEAN, EXIT_FAILED, EXIT_UNCLEAN = 0, 1, 3
ENGINE_GRACE_S = 8.0  # SGLang checks for SIGTERM every 5 s, then drains and reaps its scheduler
UVICORN_MARGIN_S = 3.0
LOG_TAIL_LINES = 30  # shown when SGLang fails to start


def say(message: str) -> None:
    print(f"[vlcache] {message}", flush=True)


class _Stop(Exception):
    """SIGTERM while SGLang is starting (before uvicorn owns the signals)."""


def _raise_stop(signum, frame) -> None:
    raise _Stop()


class GatewayServer(uvicorn.Server):
    """uvicorn's server, plus: a callback once the socket is bound, a line when a stop begins, the
    drain deadline (then `end_inflight()` ends what still runs, cleanly), and no re-raise of the stop
    signal afterwards (the launcher picks the exit code itself)."""

    def __init__(self, config: uvicorn.Config, on_listening: Callable[[], None], inflight: Callable[[], int],
                 end_inflight: Callable[[], None], drain_s: float):  # fmt: skip
        super().__init__(config)
        self._on_listening = on_listening
        self._inflight = inflight
        self._end_inflight = end_inflight
        self._drain_s = drain_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stop_signal: int | None = None
        self.failure: str | None = None

    async def startup(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if self.started:
            self._on_listening()

    def handle_exit(self, sig: int, frame) -> None:
        if self.should_exit:  # a second Ctrl-C / SIGTERM: do not wait for in-flight requests
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._end_inflight)
            return
        self.stop_signal = sig
        self.should_exit = True  # first: a signal arriving while we print is then a second one
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.call_later, self._drain_s, self._end_inflight)
        n = self._inflight()
        wait = f"; waiting up to {self._drain_s:g}s for {n} in-flight request(s)" if n else ""
        say(f"{signal.Signals(sig).name}: stopping{wait}")

    def stop_for(self, failure: str) -> None:
        """Stop serving because something failed (called from another thread)."""
        self.failure = failure
        self.should_exit = True


def _log_config(level: str) -> dict:
    """uvicorn's logging config, with the gateway's own loggers (`service.*`) at the same level."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    for name in ("uvicorn", "uvicorn.error"):
        config["loggers"][name]["level"] = level.upper()
    config["loggers"]["service"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


class _Banner:
    """Print the banner once both have happened: the socket is bound, SGLang is connected."""

    def __init__(self, print_banner: Callable[[str], None]):
        self._print = print_banner
        self._lock = threading.Lock()
        self.listening = False
        self.model: str | None = None
        self.done = False

    def update(self, listening: bool = False, model: str | None = None) -> None:
        with self._lock:
            self.listening = self.listening or listening
            self.model = self.model or model
            if self.listening and self.model and not self.done:
                self.done = True
                self._print(self.model)


def serve_gateway(settings: GatewaySettings, print_banner: Callable[[str], None], engine=None) -> int:
    """Serve the gateway until stopped; `engine` is the SGLang child to watch (None when attached)."""
    from service.app import create_app

    banner = _Banner(print_banner)
    states = []

    def on_ready(state) -> None:
        states.append(state)
        banner.update(model=state.model_name)

    app = create_app(settings, on_ready=on_ready)
    verbose = settings.verbose
    level = "info" if verbose and settings.log_level == "warning" else settings.log_level
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=_log_config(level),
        access_log=level in ("info", "debug"),
        # A backstop only: the gateway ends its own requests at `shutdown_timeout_s` (cancelled
        # requests would be cut mid-answer and uvicorn would log their tracebacks).
        timeout_graceful_shutdown=settings.shutdown_timeout_s + UVICORN_MARGIN_S,
    )  # fmt: skip
    server = GatewayServer(
        config,
        on_listening=lambda: banner.update(listening=True),
        inflight=lambda: states[0].limiter.inflight if states else 0,
        end_inflight=lambda: states[0].stopping.set() if states else None,
        drain_s=settings.shutdown_timeout_s,
    )
    if engine is not None:
        _watch_engine(engine, server)
    server.run()
    if server.failure:
        say(server.failure)
        return EXIT_FAILED
    if server.stop_signal is None:
        return EXIT_FAILED  # uvicorn returned on its own: the socket could not be bound, or start-up failed
    cut_off = states[0].stopped_requests if states else 0
    if cut_off:
        say(f"{cut_off} request(s) did not finish within {settings.shutdown_timeout_s:g}s and were aborted")
    if server.force_exit or cut_off:
        return EXIT_UNCLEAN
    return EXIT_CLEAN


def _watch_engine(engine, server: GatewayServer) -> None:
    """Stop the gateway (exit code 1) if SGLang exits while it serves."""

    def watch() -> None:
        code = engine.process.wait()
        if not server.should_exit:
            server.stop_for(f"SGLang exited unexpectedly (code {code}); its log: {engine.log_path}")

    threading.Thread(target=watch, name="sglang-watch", daemon=True).start()


def _follow(path: Path, stop: threading.Event) -> None:
    """Copy the log file to the terminal as it grows (`--verbose`)."""
    with open(path, errors="replace") as f:
        while True:
            line = f.readline()
            if line:
                print(line, end="", flush=True)
            elif stop.is_set():
                return
            else:
                time.sleep(0.2)


def _progress_lines() -> Callable[[float], None]:
    """A waiting line every 5 s for the first 30 s, then every 15 s (a slow start stays short)."""
    last = [0.0]

    def progress(elapsed: float) -> None:
        if elapsed < 31 or elapsed - last[0] >= 15:
            last[0] = elapsed
            say(f"waiting for SGLang (loading the model, warming up) ... {elapsed:.0f}s")

    return progress


def log_file_for(settings: GatewaySettings, port: int) -> Path:
    folder = Path(settings.log_dir) if settings.log_dir else Path(tempfile.gettempdir()) / "vlcache-serve"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"sglang-{time.strftime('%Y%m%d-%H%M%S')}-{port}.log"


def run_with_engine(settings: GatewaySettings, config, print_banner: Callable[[str], None]) -> int:
    """Start SGLang (`config`, a `SGLangServerConfig`), wait for it, serve the gateway, stop both."""
    from service.sglang_process import SGLangServer

    log_path = log_file_for(settings, config.port)
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    follow_stop = threading.Event()
    with open(log_path, "w") as log:
        engine = SGLangServer(config, log=log)
        engine.log_path = log_path
        plugin = "plugin vlcache" if config.kv_compression else "plugin not selected"
        say(f"model: {config.model_path}")
        say(f"starting SGLang ({plugin}) on {config.url}; its log: {log_path}")
        engine.start()
        if settings.verbose:
            threading.Thread(target=_follow, args=(log_path, follow_stop), daemon=True).start()
        code = EXIT_FAILED
        try:
            try:
                took = engine.wait_healthy(timeout_s=settings.backend_startup_timeout_s, progress=_progress_lines())
            except (RuntimeError, TimeoutError) as exc:
                say(f"{exc}; the end of its log ({log_path}):")
                log.flush()
                print(
                    "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-LOG_TAIL_LINES:]),
                    flush=True,
                )
                return EXIT_FAILED
            say(f"SGLang is ready ({took:.0f}s)")
            code = serve_gateway(settings.model_copy(update={"backend_url": config.url}), print_banner, engine)
        except (KeyboardInterrupt, _Stop):
            say("stopping")
            code = EXIT_CLEAN
        finally:
            # The engine's stop is bounded (ENGINE_GRACE_S, then SIGKILL): a second signal must not cut
            # it short, or SGLang (in a session of its own) would outlive us.
            previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if code == EXIT_UNCLEAN:
                engine.abort_all()  # cut-off requests: nothing left for SGLang's own drain to wait for
            clean = engine.stop(grace_s=ENGINE_GRACE_S)
            follow_stop.set()
            if not clean:
                say(f"SGLang did not stop within {ENGINE_GRACE_S:g}s and was killed")
                code = max(code, EXIT_UNCLEAN) if code != EXIT_FAILED else code
            elif code != EXIT_FAILED:
                say("stopped" + (" cleanly" if code == EXIT_CLEAN else ""))
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)
    return code
