"""The integration tier: one real SGLang server (CPU engine, tiny Qwen2-VL, plugin installed) per session."""

import contextlib
import os

import httpx
import pytest

from radix_ext.sglang.registration import MARKER_DIR_ENV
from service.sglang_process import SGLangServer, SGLangServerConfig, free_port
from testkit import flush_when_idle, join_background_stops, stop_in_background

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the HF tokenizers in this process and forked ones


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def plugin_marker_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("plugin-markers")


@pytest.fixture(scope="session")
def sglang_server(tiny_model_dir, plugin_marker_dir, tmp_path_factory):
    """A stock SGLang server (the plugin installed, not selected) on loopback."""
    config = SGLangServerConfig(
        model_path=str(tiny_model_dir), port=free_port(), max_running_requests=4, kv_compression=False
    )
    extra_env = {MARKER_DIR_ENV: str(plugin_marker_dir)}
    with running_sglang(config, tmp_path_factory, "sglang", extra_env) as server:
        yield server


@pytest.fixture(scope="session", autouse=True)
def _every_server_stopped():
    """Set up before, so torn down after, every other integration fixture: the servers fixtures stopped in
    the background (`testkit.stop_in_background`) have all exited when the session ends."""
    yield
    join_background_stops()


@contextlib.contextmanager
def running_sglang(config, tmp_path_factory, name, extra_env=None):
    """A started, healthy SGLang server logging to a temp file (its tail printed if start-up fails)."""
    log_path = tmp_path_factory.mktemp(name) / "server.log"
    with open(log_path, "w") as log:
        server = SGLangServer(config, log=log, extra_env=extra_env)
        with serving(server, log_path) as server:
            yield server


@contextlib.contextmanager
def serving(server, log_path):
    """`server` (started or not) once healthy; afterwards, the plugin's slot accounting checked and the
    server stopped in the background. On a failure it is stopped first and its log's tail printed."""
    try:
        if server.process is None:
            server.start()
        server.wait_healthy(progress=lambda _: None)
        yield server
        if server.config.kv_compression:  # after every test on it: the plugin's slot accounting is intact
            assert_slot_accounting_intact(server.url)
    except BaseException:
        server.stop()
        print(log_path.read_text()[-5000:])
        raise
    finally:
        stop_in_background(server)  # a no-op after the stop above


def assert_slot_accounting_intact(url, timeout_s=60):
    """Flush once idle (SGLang refuses while requests run); the plugin checks its slot table first."""
    with httpx.Client(base_url=url, timeout=30) as c:
        flush_when_idle(c, timeout_s)
        figures = c.get("/get_server_info").json()["internal_states"][0]["vl_cache"]
    assert figures["integrity_at_last_flush"] == "ok", figures["integrity_at_last_flush"]


@pytest.fixture(scope="session")
def vlcache_server(tiny_model_dir, tmp_path_factory):
    """SGLang with the plugin selected (`--radix-cache-backend vlcache`); chunked prefill of 128 tokens so
    image prompts span several chunks."""
    config = SGLangServerConfig(
        model_path=str(tiny_model_dir), port=free_port(), max_running_requests=8, max_total_tokens=16384,
        extra_args=["--chunked-prefill-size", "128"],
    )  # fmt: skip
    with running_sglang(config, tmp_path_factory, "vlcache") as server:
        yield server


@pytest.fixture(scope="session")
def vlcache_client(vlcache_server):
    with httpx.Client(base_url=vlcache_server.url, timeout=httpx.Timeout(120.0)) as c:
        yield c


@pytest.fixture(scope="session")
def client(sglang_server):
    with httpx.Client(base_url=sglang_server.url, timeout=httpx.Timeout(120.0)) as c:
        yield c


@pytest.fixture(scope="session")
def reference_model(tiny_model_dir):
    """The transformers reference engine's model: the "theirs" of the ours-vs-reference parity tests."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    return Qwen2VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
