"""The Dockerfile lints clean with hadolint (no container engine here: it is never built in CI) and
has what the deploy needs: `gpu` and `cpu` targets, non-root final stages, a HEALTHCHECK, and a
build context without venvs, caches and tests."""

import re
import subprocess

from deploy_tools import REPO, tool

DOCKERFILE = REPO / "Dockerfile"


def _stages() -> dict[str, list[str]]:
    """stage name -> its instruction lines (continuations joined)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stages, current = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = stages.setdefault(match.group(1), [])
        elif current is not None:
            current.append(line)
    return stages


def test_hadolint_reports_nothing():
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_both_targets_run_non_root_with_a_healthcheck_and_no_build_tools():
    stages = _stages()
    for target in ("gpu", "cpu"):
        lines = stages[target]
        users = [line.split()[1] for line in lines if line.startswith("USER ")]
        assert users and users[-1] not in ("root", "0")
        assert any(line.startswith("HEALTHCHECK ") and "/health" in line for line in lines)
        assert not any(
            re.search(r"\b(gcc|g\+\+|build-essential|make)\b", line) for line in lines if line.startswith("RUN")
        )
    assert any("ffmpeg" in line for line in stages["gpu"])  # torchcodec (SGLang's video decoder) needs it
    assert any('".[gpu]"' in line for line in stages["gpu-build"])
    assert any("install_cpu.sh" in line for line in stages["cpu-build"])
    assert "COPY models/grid-vqa ./models/grid-vqa" in stages["cpu-build"]  # the embedded model, no download


def test_dockerignore_keeps_venvs_caches_and_tests_out():
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".venv", ".cache", "tests", ".git"} <= ignored
