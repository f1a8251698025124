"""Each benchmark runs end to end on a tiny setting, against the session's stock and plugin servers.

Nothing here times anything: the verdicts are exit codes and the structure and byte figures of what the
scripts wrote (the speed figures of a smoke run on a shared CI machine mean nothing).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _run(module, args, results_dir, timeout=600):
    env = {**os.environ, "VLCACHE_BENCH_RESULTS": str(results_dir)}
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture()
def attach(sglang_server, vlcache_server, tiny_model_dir):
    return ["--stock-url", sglang_server.url, "--plugin-url", vlcache_server.url, "--model", str(tiny_model_dir)]


def test_decode_benchmark_smoke(attach, tmp_path):
    args = [
        "--lengths",
        "300",
        "--batches",
        "1",
        "2",
        "--budgets",
        "1.0",
        "0.1",
        "--baselines",
        "--max-new-tokens",
        "6",
        "--name",
        "smoke",
    ]
    proc = _run("bench.decode", attach + args, tmp_path)
    data = json.loads((tmp_path / "smoke.json").read_text())
    rows = data["rows"]
    assert (tmp_path / "smoke.png").stat().st_size > 0 and "speedup" in proc.stdout
    assert set(data["fixed_step_ms"]) == {"stock", "plugin"} and min(data["fixed_step_ms"].values()) > 0
    assert all(r["cost_bound"] > 0 and r["fraction_of_cost_bound"] > 0 for r in rows)
    assert {(r["batch"], r["policy"], r["budget"]) for r in rows} == {
        (b, "vlcache", x) for b in (1, 2) for x in (1.0, 0.1)
    }
    for r in rows:
        assert r["output_tokens"] == [6] * r["batch"]
        kept = r["kept_fraction_per_request"]
        if r["budget"] == 1.0:
            assert kept == [1.0] * r["batch"] and r["kv_bytes_plugin"] == r["kv_bytes_stock"]
        else:  # renormalised budgets: the kept KV is the budget to within rounding
            assert all(abs(k - 0.1) < 0.01 for k in kept), kept
            assert r["byte_bound"] > 1.0


def test_overhead_benchmark_smoke(attach, tmp_path):
    _run("bench.overhead", attach + ["--lengths", "300", "--repeats", "1", "--name", "smoke"], tmp_path)
    (row,) = json.loads((tmp_path / "smoke.json").read_text())["rows"]
    assert set(row["median_ttft_s"]) == {"stock", "full", "vlcache"} and row["scoring_s"][0] > 0


def test_throughput_benchmark_smoke(attach, tmp_path):
    args = ["--requests", "4", "--rate", "8", "--max-new-tokens", "4", "--image-side", "224", "--name", "smoke"]
    proc = _run("bench.throughput", attach + args, tmp_path)
    payload = json.loads((tmp_path / "smoke.json").read_text())
    assert [r["side"] for r in payload["rows"]] == ["stock", "vlcache"]
    assert all(r["completed"] == 4 and r["failed"] == 0 for r in payload["rows"]), proc.stdout[-2000:]


def test_accuracy_study_smoke(vlcache_server, tiny_model_dir, tmp_path):
    """The study's harness on the tiny model (random weights: the accuracies mean nothing, the plumbing
    does): every (label, budget) run, budgets realised, the reference cross-check, the plot."""
    args = ["--backend-url", vlcache_server.url, "--model", str(tiny_model_dir), "--per-setting", "1",
            "--budgets", "0.1", "1.0", "--blends", "0.5", "--policies", "vlcache", "snapkv", "vlcache_blend0.5",
            "--reference-samples", "1", "--out", str(tmp_path / "acc.json")]  # fmt: skip
    _run("bench.accuracy", args, tmp_path)
    payload = json.loads((tmp_path / "acc.json").read_text())
    runs = {(r["label"], r["budget"]): r for r in payload["runs"]}
    assert set(runs) == {("full", 1.0), ("vlcache", 0.1), ("snapkv", 0.1), ("vlcache_blend0.5", 0.1),
                         ("blank_images", 1.0)}  # fmt: skip
    assert runs[("vlcache_blend0.5", 0.1)]["options"] == {"layer_budget_blend": 0.5}
    for (_, budget), r in runs.items():
        assert len(r["answers"]) == payload["questions"] == 6  # per form and default setting
        assert {"form:sentence", "form:readout", "form:caption"} <= set(r["metrics"])
        for m in r["metrics"].values():  # every figure carries its interval
            assert m["exact_ci"][0] <= m["exact"] <= m["exact_ci"][1] and m["f1_ci"][0] <= m["f1"] <= m["f1_ci"][1]
        if budget < 1.0:  # every prompt is long enough to compress; the kept share is the budget
            assert r["compressed_share"] == 1.0 and abs(r["realized_budget"] - 0.1) < 0.02, r
    assert set(payload["reference_cross_check"]) == {"full@1", "vlcache@0.1", "snapkv@0.1"}
    assert (tmp_path / "acc.png").stat().st_size > 0


def test_hit_rate_diagnostic_smoke(tiny_model_dir, tmp_path):
    args = ["--model", str(tiny_model_dir), "--per-setting", "1", "--budgets", "0.1",
            "--policies", "vlcache", "streamingllm", "--out-dir", str(tmp_path)]  # fmt: skip
    _run("bench.hit_rate", args, tmp_path)
    results = json.loads((tmp_path / "accuracy_hit_rate.json").read_text())["results"]
    assert set(results) == {"vlcache@0.1", "streamingllm@0.1"}
    for r in results.values():  # [decoded token][layer]: every token of the answer, every layer of the model
        assert r["questions"] == 2 and len(r["hit_rate"]) == len(r["answers_reaching_token"]) > 1
        assert all(len(row) == 4 and all(0.0 <= h <= 1.0 for h in row) for row in r["hit_rate"])
    assert all((tmp_path / f"accuracy_hit_rate_{p}.png").stat().st_size > 0 for p in ("vlcache", "streamingllm"))


def test_followup_study_smoke(vlcache_server, tiny_model_dir, tmp_path):
    """Every design row is there, and `lazy`'s and `compressed`'s follow-ups were served from the cache
    turn 1 left."""
    args = ["--backend-url", vlcache_server.url, "--model", str(tiny_model_dir), "--per-setting", "1",
            "--budgets", "0.1", "--out", str(tmp_path / "followup.json")]  # fmt: skip
    _run("bench.followup", args, tmp_path)
    summary = json.loads((tmp_path / "followup.json").read_text())["summary"]
    assert set(summary) == {"full", "lazy@0.1", "compressed@0.1", "fresh@0.1", "compressed-ref@0.1"}
    for design in ("lazy@0.1", "compressed@0.1"):
        assert summary[design]["mean_cached_tokens"] > 100  # the images, at least, came from the tree
    assert (tmp_path / "followup.png").stat().st_size > 0


def test_sessions_benchmark_smoke(attach, tmp_path):
    """Every side runs every turn of the schedule; on pools far larger than 3 chats, every follow-up of
    every side finds its images in the tree."""
    args = ["--users", "3", "--pool-chats", "3", "--image-side", "224", "--max-new-tokens", "4",
            "--think-mean", "0.1", "--arrival-rate", "20", "--name", "smoke"]  # fmt: skip
    proc = _run("bench.sessions", attach + args, tmp_path)
    payload = json.loads((tmp_path / "smoke.json").read_text())
    assert [r["side"] for r in payload["rows"]] == ["stock", "full", "lazy", "compressed"]
    for r in payload["rows"]:
        assert r["failed"] == 0 and r["completed"] == sum(1 for t in r["turns"]), proc.stdout[-2000:]
        assert r["followups"] == r["completed"] - 3 and r["followup_hits"] == r["followups"], r["side"]
    assert "compressed / stock" in proc.stdout and (tmp_path / "smoke.png").stat().st_size > 0
