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


# The session's two servers on the tiny model. The first test that needs either starts every one of them
# the selected tests use (they load side by side, `_session_launches`); each fixture waits for its own.
SESSION_SERVERS = ("sglang_server", "vlcache_server")


def _session_server(name, tiny_model_dir, plugin_marker_dir):
    """`(config, extra_env)` of a session server."""
    if name == "sglang_server":  # stock SGLang (the plugin installed, not selected); the plugin's loads leave markers
        config = SGLangServerConfig(
            model_path=str(tiny_model_dir), port=free_port(), max_running_requests=4, kv_compression=False
        )
        return config, {MARKER_DIR_ENV: str(plugin_marker_dir)}
    # the plugin selected (`--radix-cache-backend vlcache`); chunked prefill of 128 tokens so image prompts
    # span several chunks
    config = SGLangServerConfig(
        model_path=str(tiny_model_dir), port=free_port(), max_running_requests=8, max_total_tokens=16384,
        extra_args=["--chunked-prefill-size", "128"],
    )  # fmt: skip
    return config, None


@pytest.fixture(scope="session")
def _session_launches(request, tiny_model_dir, plugin_marker_dir, tmp_path_factory):
    """name -> (started SGLangServer, its log path) for each session server a selected test uses (a fixture
    looked up lazily, `request.getfixturevalue`, is started when asked for instead)."""
    used = [n for n in SESSION_SERVERS if any(n in getattr(i, "fixturenames", ()) for i in request.session.items)]
    launches = {}
    with contextlib.ExitStack() as stack:
        for name in used:
            log_path = tmp_path_factory.mktemp(name.removesuffix("_server")) / "server.log"
            config, extra_env = _session_server(name, tiny_model_dir, plugin_marker_dir)
            log = stack.enter_context(open(log_path, "w"))
            launches[name] = (SGLangServer(config, log=log, extra_env=extra_env).start(), log_path)
        yield launches
        stop_in_background(*(server for server, _ in launches.values()))  # any never asked for


@contextlib.contextmanager
def _session_serving(name, launches, tiny_model_dir, plugin_marker_dir, tmp_path_factory):
    if name in launches:
        server, log_path = launches.pop(name)
        with serving(server, log_path) as server:
            yield server
        return
    config, extra_env = _session_server(name, tiny_model_dir, plugin_marker_dir)
    with running_sglang(config, tmp_path_factory, name.removesuffix("_server"), extra_env) as server:
        yield server


@pytest.fixture(scope="session")
def sglang_server(_session_launches, tiny_model_dir, plugin_marker_dir, tmp_path_factory):
    """A stock SGLang server (the plugin installed, not selected) on loopback."""
    with _session_serving("sglang_server", _session_launches, tiny_model_dir, plugin_marker_dir, tmp_path_factory) as s:
        yield s


@pytest.fixture(scope="session")
def vlcache_server(_session_launches, tiny_model_dir, plugin_marker_dir, tmp_path_factory):
    """SGLang with the plugin selected (`--radix-cache-backend vlcache`); chunked prefill of 128 tokens so
    image prompts span several chunks."""
    with _session_serving(
        "vlcache_server", _session_launches, tiny_model_dir, plugin_marker_dir, tmp_path_factory
    ) as s:
        yield s


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
