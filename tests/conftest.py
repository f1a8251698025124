"""Shared fixtures (the embedded tiny Qwen2-VL, built once per machine into the project cache), and the time
each tier took, printed at the end of every run."""

import os
import time

import pytest

# SGLang's Triton kernels run in Triton's interpreter on a CPU-only machine (tests/fast/sglang/test_triton_views.py).
# It must be set before anything imports triton, which SGLang does at import: here, before any test module loads.
if not os.environ.get("CUDA_VISIBLE_DEVICES") and not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def tiny_model_dir():
    from vlmodels.tiny_qwen2vl import ensure_tiny_qwen2vl

    return ensure_tiny_qwen2vl()


# --- where the run's time goes: per-tier totals at the end (the ten slowest tests: `--durations=10`) --------
_TIERS = ("fast", "integration")
_tier_time = {tier: 0.0 for tier in _TIERS}
_tier_tests = {tier: set() for tier in _TIERS}
_started = pytest.StashKey[float]()


def _tier(report) -> str:
    return "integration" if "integration" in report.keywords else "fast"  # the marker, as `-m` selects


def pytest_sessionstart(session):
    session.config.stash[_started] = time.perf_counter()


def pytest_runtest_logreport(report):
    # setup + call + teardown: a session fixture's start-up (an SGLang server) counts in its first test.
    tier = _tier(report)
    _tier_time[tier] += report.duration
    _tier_tests[tier].add(report.nodeid)


@pytest.hookimpl(trylast=True)  # after pytest's own summaries (`--durations`): the run's last lines
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    started = config.stash.get(_started, None)
    if started is None or not any(_tier_tests.values()):
        return
    terminalreporter.write_sep("=", "time per tier")
    for tier in _TIERS:
        terminalreporter.write_line(f"{tier:<12} {len(_tier_tests[tier]):>5} tests  {_tier_time[tier]:9.1f} s")
    terminalreporter.write_line(
        f"{'session':<12} {'':>11}  {time.perf_counter() - started:9.1f} s wall (collection included)"
    )
