"""The trained grid-VQA model through the real SGLang runtime (plugin selected), one lean server.

It answers held-out one-region questions with the full cache; and the accuracy study
(`bench/accuracy.py`) runs end to end on a tiny setting against the same server.
"""

import httpx
import pytest

from service.sglang_process import SGLangServerConfig, free_port
from tests.integration.conftest import running_sglang
from vlmodels.grid_vqa.eval_sets import SETTINGS, eval_samples
from vlmodels.grid_vqa.spec import committed_model_dir
from vlmodels.grid_vqa.task import ONE_REGION


def _accuracy_module():
    from bench import accuracy

    return accuracy


@pytest.fixture(scope="module")
def grid_client(tmp_path_factory):
    config = SGLangServerConfig(model_path=str(committed_model_dir()), port=free_port(), max_running_requests=4)
    with running_sglang(config, tmp_path_factory, "grid-vqa") as server:
        with httpx.Client(base_url=server.url, timeout=httpx.Timeout(300.0)) as client:
            yield client


@pytest.fixture(scope="module")
def processor():
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(committed_model_dir())


def test_trained_model_answers_one_region_questions_with_the_full_cache(grid_client, processor):
    bench = _accuracy_module()
    samples = [s for s in eval_samples(8, settings=SETTINGS[:2]) if s.qtype in ONE_REGION][:8]
    asker = bench.Asker(grid_client, processor, samples)
    answers = [bench._first_word(asker.ask(i, "full", 1.0, {})["text"]) for i in range(len(samples))]
    right = sum(a == s.answer for a, s in zip(answers, samples, strict=True))
    assert right >= 7, list(zip(answers, [s.answer for s in samples], strict=True))  # the >= 90% target


def test_accuracy_study_runs_end_to_end_on_a_tiny_setting(grid_client, processor, tmp_path):
    bench = _accuracy_module()
    samples = eval_samples(1)  # one question per prompt length
    configs = [c for c in bench.study_configs(blends=(0.5,)) if c[0] in ("vlcache", "h2o", "vlcache_blend0.5")]
    records = bench.run_study(grid_client, processor, samples, configs, [0.1, 1.0], concurrency=3,
                              blank_samples=samples[:1], progress=False)  # fmt: skip
    labels = [(r["label"], r["budget"]) for r in records]
    assert labels == [("full", 1.0), ("vlcache", 0.1), ("h2o", 0.1), ("vlcache_blend0.5", 0.1), ("blank_images", 1.0)]
    by = {r["label"]: r for r in records}
    assert by["full"]["compressed_share"] == 0.0 and by["full"]["realized_budget"] == 1.0
    for label in ("vlcache", "h2o", "vlcache_blend0.5"):  # every prompt here is long enough to compress
        assert by[label]["compressed_share"] == 1.0
        assert by[label]["realized_budget"] == pytest.approx(0.1, abs=0.01)
    assert set(by["vlcache"]["accuracy"]) == {"all"} | {f"len:{s.name}" for s in SETTINGS} | {
        f"type:{s.qtype}" for s in samples
    }
    text = bench.print_tables(records, [0.1, 1.0])
    assert "vlcache_blend0.5" in text and "blank-image control" in text
    bench.plot(records, [0.1, 1.0], tmp_path / "accuracy.png")
    assert (tmp_path / "accuracy.png").stat().st_size > 10_000
