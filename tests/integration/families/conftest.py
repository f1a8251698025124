"""One stock and one plugin SGLang server per family (started side by side; they shut down while the next
family's start)."""

import contextlib

import httpx
import pytest

from service.sglang_process import SGLangServer, SGLangServerConfig, free_port
from testkit import stop_in_background
from tests.integration.conftest import assert_slot_accounting_intact


@contextlib.contextmanager
def stock_and_plugin(model_dir, log_dir, dtype="float32"):
    """(stock, plugin) healthy servers on `model_dir`; the plugin chunks prefill at 128 tokens so image
    prompts span several chunks. Both logs' tails are printed if anything fails."""
    common = dict(model_path=str(model_dir), dtype=dtype, max_running_requests=4, max_total_tokens=16384)
    configs = {
        "stock": SGLangServerConfig(port=free_port(), kv_compression=False, **common),
        "plugin": SGLangServerConfig(port=free_port(), extra_args=["--chunked-prefill-size", "128"], **common),
    }
    with contextlib.ExitStack() as stack:
        logs = {name: stack.enter_context(open(log_dir / f"{name}.log", "w")) for name in configs}
        servers = {name: SGLangServer(c, log=logs[name]) for name, c in configs.items()}
        try:
            for server in servers.values():  # both start at once: their start-ups overlap
                server.start()
            for server in servers.values():
                server.wait_healthy(progress=lambda _: None)
            yield servers["stock"], servers["plugin"]
            assert_slot_accounting_intact(servers["plugin"].url)
        except BaseException:
            for server in servers.values():
                server.stop()
            for name in configs:
                print(f"--- {name} server log ---\n" + (log_dir / f"{name}.log").read_text()[-4000:])
            raise
        finally:  # the next family's servers start while these two shut down
            stop_in_background(*servers.values())


@pytest.fixture(scope="module")
def family_clients(request, tmp_path_factory):
    """`(name, model_dir, stock client, plugin client)` for the family the test is parametrised with."""
    from vlmodels.families import FAMILIES, ensure_family

    name = request.param
    model_dir = ensure_family(name)
    with stock_and_plugin(model_dir, tmp_path_factory.mktemp(name), FAMILIES[name].dtype) as (stock, plugin):
        timeout = httpx.Timeout(120.0)
        with (
            httpx.Client(base_url=stock.url, timeout=timeout) as s,
            httpx.Client(base_url=plugin.url, timeout=timeout) as p,
        ):
            yield name, model_dir, s, p
