"""Helpers of the deploy checks, which run the real tools of `.venv-tools` (`make install-tools`): kubectl (kustomize),
kubernetes-validate, checkov, hadolint. Each overlay is rendered once per session."""

import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
TOOLS = REPO / ".venv-tools" / "bin"
OVERLAYS = ("gpu", "cpu", "cpu-router")


def tool(name: str) -> str:
    path = TOOLS / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make install-tools`")
    return str(path)


@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> dict[str, Path]:
    """overlay name -> the file `kubectl kustomize deploy/overlays/<name>` wrote."""
    out = tmp_path_factory.mktemp("rendered")
    files = {}
    for name in OVERLAYS:
        result = subprocess.run(
            [tool("kubectl"), "kustomize", str(REPO / "deploy" / "overlays" / name)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, f"overlay {name} does not render:\n{result.stderr}"
        files[name] = out / f"{name}.yaml"
        files[name].write_text(result.stdout)
    return files


def objects(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def one(docs: list[dict], kind: str, name: str) -> dict:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found
