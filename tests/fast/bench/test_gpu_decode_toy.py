"""`bench/gpu_decode.py --device cpu --toy`: the GPU measurement script runs end to end on the CPU (Triton's
interpreter) with SGLang's kernels loaded from a wheel-shaped archive behind its stubs, not the installed SGLang."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import sglang

ROOT = Path(__file__).resolve().parents[3]
KERNELS = Path(sglang.__file__).parent / "kernels" / "ops" / "attention"


def test_toy_run_writes_a_consistent_record(tmp_path):
    wheel = tmp_path / "sglang-0.5.23-py3-none-any.whl"  # only the members the script reads
    with zipfile.ZipFile(wheel, "w") as archive:
        for name in ("decode_attention.py", "score_mod.py", "metadata.py"):
            archive.write(KERNELS / name, f"sglang/kernels/ops/attention/{name}")
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "bench.gpu_decode", "--sglang", str(wheel), "--device", "cpu", "--toy"]
    cmd += ["--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "gpu_decode.json").read_text())
    assert (out / "gpu_decode.png").stat().st_size > 0
    assert record["toy"] and len(record["results"]) == 2
    for r in record["results"]:
        assert r["layer0_max_abs_err"] < 1e-4  # the views path attends over exactly its kept slots
        assert len(r["kept_per_layer"]) == 2 and len(set(r["kept_per_layer"])) == 2  # uneven layers
        # bytes: every layer reads its kept tokens + the decode token, per request, K/V rows + int64 ids
        entries = r["batch"] * sum(k + 1 for k in r["kept_per_layer"])
        assert r["view_bytes"] == entries * (2 * 2 * 16 * 4 + 8)
        assert abs(r["bound"] - r["full_bytes"] / r["view_bytes"]) < 1e-9
