"""`vlcache-serve` as a person runs it: its own SGLang child on the embedded grid-VQA model, a short
readable start, the banner's example answered right, and a graceful stop on Ctrl-C with a request in
flight.

The test waits on events only: the process's output lines (read by a thread into a queue), the
first streamed token, the process's exit.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading

import httpx

from service.cli import BANNER_END, example_body
from service.sglang_process import free_port
from vlmodels.grid_vqa.spec import example_sample

MAX_LINES_BEFORE_SNIPPETS = 30
# The stop is bounded by the CLI's own timers (--shutdown-timeout, then SIGKILL of SGLang's group after 8 s);
# the verdict reads what the stop did (exit code, lines), not the wall clock. This only catches a hang.
STOP_HANG_GUARD_S = 120.0


class Output:
    """The lines a process prints, collected by a thread; `wait_for` blocks until one matches."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)  # end of output: the process closed its stdout

    def wait_for(self, predicate) -> str:
        while True:
            line = self._queue.get()
            assert line is not None, "the process ended before the expected line:\n" + "\n".join(self.lines[-40:])
            self.lines.append(line)
            if predicate(line):
                return line

    def rest(self) -> list[str]:
        while (line := self._queue.get()) is not None:
            self.lines.append(line)
        return self.lines


def test_start_is_short_and_ctrl_c_stops_cleanly_with_a_request_in_flight(tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    argv = [
        sys.executable,
        "-m",
        "service.cli",
        "--port",
        str(port),
        "--log-dir",
        str(tmp_path),
        "--shutdown-timeout",
        "1",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    out = Output(proc.stdout)
    try:
        out.wait_for(lambda line: line == BANNER_END)
        before = out.lines[: next(i for i, line in enumerate(out.lines) if "try it with curl" in line)]
        assert len(before) <= MAX_LINES_BEFORE_SNIPPETS, "\n".join(before)
        assert not any("Traceback" in line for line in out.lines), "\n".join(out.lines)
        log_path = re.search(r"its log: (\S+)", "\n".join(before)).group(1)
        engine_port = int(re.search(r"on http://127\.0\.0\.1:(\d+);", "\n".join(before)).group(1))

        # The request the banner prints (the example grid, EXAMPLE_QUESTION "List the red shapes.", vlcache @ 0.1).
        resp = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=example_body("default"), timeout=120)
        assert resp.status_code == 200, resp.text
        answer = resp.json()["choices"][0]["message"]["content"].strip()
        assert answer == example_sample().answer, (answer, resp.json()["usage"])
        assert resp.json()["usage"]["kv_cache"]["compressed"], resp.json()["usage"]

        # A streamed answer far longer than the 1 s drain time: the stop ends it.
        first_token = threading.Event()
        stream_end: dict = {}

        def stream() -> None:
            body = {"model": "default", "max_tokens": 6000, "ignore_eos": True, "stream": True,
                    "messages": [{"role": "user", "content": "Count."}]}  # fmt: skip
            try:
                with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60) as r:
                    for line in r.iter_lines():
                        if '"content":"' in line and '"content":""' not in line:
                            first_token.set()
                        if line.startswith("data: "):
                            stream_end.setdefault("events", []).append(line[6:])
            except httpx.HTTPError as exc:
                stream_end["error"] = type(exc).__name__
            first_token.set()

        client = threading.Thread(target=stream)
        client.start()
        assert first_token.wait(120) and "error" not in stream_end, stream_end
        proc.send_signal(signal.SIGINT)
        code = proc.wait(STOP_HANG_GUARD_S)
        client.join(30)
        assert not client.is_alive()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = out.rest()
    text = "\n".join(lines)
    assert code == 3, text[-3000:]  # stopped by a signal, one request cut off (service/lifecycle.py)
    assert "Traceback" not in text, text[-3000:]
    assert "1 request(s) did not finish" in text and lines[-1] == "[vlcache] stopped", text[-2000:]
    # The stream was ended by the gateway, in-band, not cut: an error event, then [DONE].
    events = stream_end["events"]
    assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "server_stopping", events[-3:]
    # SGLang shut down by itself (no crash path) and nothing of it is left listening.
    log = open(log_path).read()
    assert "SIGTERM received" in log and "SIGQUIT" not in log and "crash diagnostics" not in log
    assert "Traceback" not in log
    try:
        httpx.get(f"http://127.0.0.1:{engine_port}/health", timeout=2)
        raise AssertionError("SGLang still answers after the stop")
    except httpx.TransportError:
        pass
