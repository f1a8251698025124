"""The OpenAPI document tells the truth: a schema-driven fuzzer (schemathesis, in process, on the fake
backend) finds no server error, no undocumented status code, content type or response shape, and no
schema-valid request refused as a schema error (422).

Bounded: a fixed number of generated cases per operation, seconds in all.
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from service.app import create_app
from service.config import GatewaySettings
from tests.fast.service.fake_backend import FakeBackend

MAX_EXAMPLES = 80


@pytest.fixture(scope="module")
def app(chat_template):
    return create_app(GatewaySettings(backend_url="http://fake"), backend=FakeBackend(), template=chat_template)


@pytest.fixture(scope="module")
def api_schema(app):
    loaded = schemathesis.openapi.from_asgi("/openapi.json", app)
    checks = loaded.config.checks
    # A schema-valid request may still be refused for what no schema can say (a media URL that does
    # not decode: 400, an unknown model: 404, ...), but never as a schema error: 422 is the only
    # refusal the document claims to rule out.
    checks.positive_data_acceptance.expected_statuses = ["200", "400", "401", "404", "413", "415", "429", "503"]
    return loaded


def test_openapi_document_matches_behaviour(api_schema):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) == 6, [op.label for op in operations]
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def fuzz(case):
            # Any string is a schema-valid model id, but only the served one gets past the model check:
            # name it, so the cases reach the rest of the handler (media, options, the backend).
            if isinstance(case.body, dict) and "model" in case.body:
                case.body["model"] = "default"
            case.call_and_validate()

        fuzz()
