"""A SIGTERM'd bench run stops the servers it started (`bench.harness.Servers`), as a normal exit does.

No SGLang here: a stand-in server owns a sleeping child process. Every step is a handshake (a line on a
pipe, an exit code), never a sleep."""

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bench.harness import sigterm_raises_exit

ROOT = Path(__file__).resolve().parents[3]

BENCH = """
import signal, subprocess, sys, time
from types import SimpleNamespace
import bench.harness as h

class StandIn:  # SGLangServer's shape: a child process started on enter, stopped on exit
    def __init__(self, config, log=None, extra_env=None):
        self.url = config.url
    def __enter__(self):
        sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
        self.proc = subprocess.Popen(sleeper, stdout=subprocess.DEVNULL)  # an orphan must not hold our pipe
        print("started", self.proc.pid, flush=True)
        return self
    def __exit__(self, *exc):
        signal.raise_signal(signal.SIGTERM)  # a repeated SIGTERM: must not cut the cleanup short
        self.proc.kill()
        print("stopped", self.proc.pid, self.proc.wait(), flush=True)

h.SGLangServer, h.RESULTS = StandIn, h.Path(sys.argv[1])
with h.Servers("sigterm") as servers:
    servers.start("stock", SimpleNamespace(url="http://stand-in", kv_compression=False))
    print("ready", flush=True)
    time.sleep(600)
"""


def test_sigterm_stops_the_started_servers(tmp_path):
    bench = subprocess.Popen([sys.executable, "-c", BENCH, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    out = ""
    try:
        child = int(bench.stdout.readline().split()[1])
        assert bench.stdout.readline() == "ready\n"
        bench.send_signal(signal.SIGTERM)
        out, _ = bench.communicate(timeout=60)
    finally:
        bench.kill()
        if "stopped" not in out:  # the failure this guards against: an orphaned child, left running
            os.kill(child, signal.SIGKILL)
    assert bench.returncode == 128 + signal.SIGTERM, out  # SystemExit(143), not killed by the signal
    assert out.split() == ["stopped", str(child), str(-signal.SIGKILL)]  # the child was stopped and reaped


def test_sigterm_raises_exit_then_restores_the_previous_handler():
    caught = []

    def previous(signum, frame):  # also keeps pytest alive should the context not install its handler
        caught.append(signum)

    outer = signal.signal(signal.SIGTERM, previous)
    try:
        with pytest.raises(SystemExit) as exc, sigterm_raises_exit():
            signal.raise_signal(signal.SIGTERM)
        assert exc.value.code == 128 + signal.SIGTERM and caught == []
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, outer)


def test_sigterm_raises_exit_is_a_no_op_off_the_main_thread():
    errors = []

    def body():
        try:
            with sigterm_raises_exit():
                pass
        except Exception as e:  # signal.signal raises ValueError off the main thread
            errors.append(e)

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert errors == [] and signal.getsignal(signal.SIGTERM) is before
