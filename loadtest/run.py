"""`make loadtest`: a bounded headless Locust run of loadtest/locustfile.py against the gateway.

    python -m loadtest.run                       # start `vlcache-serve` (embedded model, CPU) on a free port
    python -m loadtest.run --workers 2           # start the scale-out layout instead (N workers behind SMG)
    python -m loadtest.run --url http://HOST:8000 --users 8 --duration 120s

Writes into `--out` (default loadtest/results/): Locust's CSVs (`run_stats.csv`, full history),
`report.html`, `run_final.json` (final stats), `percentiles.png` (TTFT / ITL / request percentiles
over time) and `summary.json`;
prints the summary: requests, failures, QPS, p50/p99 of TTFT, ITL and the request.
Exit status: Locust's (`--exit-code-on-error 1`: any failure fails the run).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PREFIX = "run"


def run_locust(url: str, out: Path, users: int, spawn_rate: float, duration: str, extra: list[str] = ()) -> int:
    """Run Locust headless as a subprocess until `duration` is over; return its exit status."""
    out.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless", "--host", url,
        "-u", str(users), "-r", str(spawn_rate), "-t", duration, "--stop-timeout", "60",
        "--csv", str(out / PREFIX), "--csv-full-history", "--html", str(out / "report.html"),
        "--exit-code-on-error", "1", "--json-file", str(out / f"{PREFIX}_final"), *extra,  # Locust adds .json
    ]  # fmt: skip
    return subprocess.run(argv, timeout=_seconds(duration) + 180).returncode


def summary(out: Path) -> dict:
    """The figures of Locust's final stats (`run_final.json`, written once every user has stopped,
    the requests finished during --stop-timeout included): requests and failures of the chat
    entry, QPS over the run, p50/p99 of each METRIC entry (Locust's rounded response-time buckets)."""
    entries = {(e["method"], e["name"]): e for e in json.loads((out / f"{PREFIX}_final.json").read_text())}
    chat = entries.get(("POST", "chat (stream)"), {})
    # QPS over the whole run: requests / the span of Locust's history (one row per second).
    with open(out / f"{PREFIX}_stats_history.csv", newline="") as f:
        stamps = [int(r["Timestamp"]) for r in csv.DictReader(f)]
    span = max(stamps) - min(stamps) if stamps else 0
    figures = {
        "requests": chat.get("num_requests", 0),
        "failures": chat.get("num_failures", 0),
        "qps": chat.get("num_requests", 0) / span if span > 0 else None,
        "all_failures": sum(e["num_failures"] for e in entries.values()),
    }
    for field, name in {
        "ttft_ms": "time_to_first_token",
        "itl_ms": "inter_token_latency",
        "e2e_ms": "e2e_latency",
    }.items():
        times = entries.get(("METRIC", name), {}).get("response_times", {})
        figures[field] = {
            "p50": _percentile(times, 0.50),
            "p99": _percentile(times, 0.99),
            "count": sum(times.values()),
        }
    return figures


def _percentile(times: dict, q: float) -> float | None:
    """The q-quantile of Locust's {rounded ms: count} histogram."""
    total, seen = sum(times.values()), 0
    for ms, count in sorted((float(k), v) for k, v in times.items()):
        seen += count
        if seen >= q * total:
            return ms
    return None


def _seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return int(duration[:-1]) * units[duration[-1]] if duration[-1] in units else int(duration)


@contextlib.contextmanager
def local_service(workers: int | None = None, timeout_s: float = 600.0):
    """The embedded model served on a free port, until /ready: `vlcache-serve` (one SGLang child), or
    with `workers`, `make serve-router`'s layout (that many SGLang workers behind SMG, the gateway
    sending each chat's routing key)."""
    from service.sglang_process import free_port
    from testkit import wait_until_ready

    port = free_port()
    command = ["service.cli"] if workers is None else ["service.router_launch", "--workers", str(workers)]
    proc = subprocess.Popen([sys.executable, "-m", *command, "--port", str(port)], start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(
            url, timeout_s=timeout_s, poll_s=1, name="vlcache-serve",
            stopped=lambda: None if proc.poll() is None else f"vlcache-serve exited with {proc.returncode}",
        )  # fmt: skip
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running gateway (default: start one)")
    parser.add_argument("--workers", type=int, help="start N workers behind SMG (default: one vlcache-serve)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--spawn-rate", type=float, default=2)
    parser.add_argument("--duration", default="60s", help="Locust's -t: 60s, 5m, ...")
    args, locust_extra = parser.parse_known_args(argv)  # the rest (e.g. --vl-mix) goes to Locust

    with contextlib.nullcontext(args.url) if args.url else local_service(args.workers) as url:
        rc = run_locust(url, args.out, args.users, args.spawn_rate, args.duration, locust_extra)
    from loadtest.plot import plot

    plot(args.out / f"{PREFIX}_stats_history.csv", args.out / "percentiles.png")
    figures = summary(args.out)
    (args.out / "summary.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    print(f"[loadtest] CSV, report.html, percentiles.png and summary.json in {args.out}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
