"""tools/render_results.py: every document's generated figures agree with bench/results/, and the
marker machinery renders, checks and refuses as it says."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "tools" / "render_results.py"


def _load():
    spec = importlib.util.spec_from_file_location("render_results", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


rr = _load()


def test_no_document_states_a_figure_that_bench_results_contradicts():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_renderer_reads_a_committed_results_file_and_is_used_somewhere():
    used = {m["name"] for path in rr.documents() for m in rr.MARKER.finditer(path.read_text())}
    for name, spec in rr.RENDERERS.items():
        assert (rr.RESULTS / spec.source).is_file(), f"{name}: bench/results/{spec.source} is missing"
        assert rr.rendered(name, {}).strip(), name
    assert used <= set(rr.RENDERERS), used - set(rr.RENDERERS)
    assert used == set(rr.RENDERERS), f"renderers no document uses: {set(rr.RENDERERS) - used}"


@pytest.fixture()
def tree(tmp_path, monkeypatch):
    """A repository of one results file and one document, with a renderer of it registered."""
    results = tmp_path / "bench" / "results"
    results.mkdir(parents=True)
    (results / "toy.json").write_text(json.dumps({"rows": [{"x": 1, "y": 0.5}]}))
    monkeypatch.setitem(
        rr.RENDERERS,
        "toy",
        rr.Renderer("toy.json", lambda d: rr.table(["x", "y"], [[str(r["x"]), f"{r['y']:.2f}"] for r in d["rows"]])),
    )  # noqa: E501
    monkeypatch.setitem(rr.RENDERERS, "toy-inline", rr.Renderer("toy.json", lambda d: f"y = {d['rows'][0]['y']:.2f}"))  # noqa: E501
    doc = tmp_path / "README.md"
    doc.write_text(
        "Intro; quoted markers are prose: `<!-- results:NAME -->`.\n\n<!-- results:toy -->\n| x | y |\n"
        "|---|---|\n| 1 | 0.99 |\n<!-- /results:toy -->\n\nInline: <!-- results:toy-inline -->y = 0.99<!-- /results:toy-inline -->.\n"  # noqa: E501
    )
    return tmp_path, results, doc


def test_check_names_the_stale_parts_and_rendering_fixes_them(tree, capsys):
    root, results, doc = tree
    assert rr.run(check=True, root=root, results=results) == 1
    assert "README.md: results:toy" in capsys.readouterr().err
    before = doc.read_text()
    assert rr.run(check=False, root=root, results=results) == 0
    after = doc.read_text()
    assert after != before and "| 1 | 0.50 |" in after and "Inline: <!-- results:toy-inline -->y = 0.50<!--" in after
    assert "`<!-- results:NAME -->`" in after
    assert rr.run(check=True, root=root, results=results) == 0
    assert rr.run(check=False, root=root, results=results) == 0 and doc.read_text() == after  # idempotent


@pytest.mark.parametrize(
    "text",
    [
        "<!-- results:nope -->\nx\n<!-- /results:nope -->\n",  # no such renderer
        "<!-- results:toy -->\nx\n",  # never closed
        "a <!-- results:toy -->x<!-- /results:toy --> b\n",  # a table where one line must go
    ],
)
def test_bad_markers_fail_with_code_2_and_change_nothing(tree, text):
    root, results, doc = tree
    doc.write_text(text)
    assert rr.run(check=False, root=root, results=results) == 2
    assert doc.read_text() == text
