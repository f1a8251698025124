"""Fixtures of the gateway's unit tests: the tiny model's real chat template, an app on a fake backend."""

import warnings

import pytest

# FastAPI's TestClient still uses httpx (the only client in the lock); the deprecation is Starlette's.
warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
from fastapi.testclient import TestClient  # noqa: E402

from service.app import create_app  # noqa: E402
from service.config import GatewaySettings  # noqa: E402
from service.prompt import ChatTemplate  # noqa: E402
from tests.fast.service.fake_backend import FakeBackend  # noqa: E402


@pytest.fixture(scope="session")
def chat_template(tiny_model_dir):
    return ChatTemplate(tiny_model_dir)


@pytest.fixture
def fake():
    return FakeBackend()


@pytest.fixture
def make_client(chat_template, fake):
    """make_client(**settings) -> a TestClient of a gateway on `fake` (closed at teardown)."""
    clients = []

    def make(**overrides):
        settings = GatewaySettings(**{"backend_url": "http://fake", **overrides})
        client = TestClient(create_app(settings, backend=fake, template=chat_template), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)
