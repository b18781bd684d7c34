"""Schemathesis against the server's own OpenAPI schema, over real HTTP: for generated requests
to every operation, schema-valid and schema-invalid, no 5xx, no response that contradicts the
schema (status, content type, headers, body), invalid requests rejected and bad keys refused.
Bounded to a few examples per operation to keep the suite fast.

Not checked: that every schema-valid request is accepted. Some rules cannot be said in JSON
Schema (a KB name's letters may be of any script, but not symbols; the last chat message must
be the user's; the KB must exist); each has its own test of the documented 4xx instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance
from server_helpers import (
    LiveServer,
    make_home,
    serve_with_model,
    server_settings,
    write_documents,
)

from kbqa.ingest.pipeline import ingest_paths
from tests.fake_chat import FakeChat

EXAMPLES = 8
"""Generated requests per operation: a few of each parameter's edges, and fast."""
KEY = "fuzz-key"


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server of its own (the fuzzer creates and deletes KBs), over a `default` KB."""
    home = make_home(tmp_path_factory, "fuzz-home")
    ingest_paths(server_settings(home), "default", [write_documents(home.parent / "fuzz-docs")])
    model = FakeChat(max_tokens=8)
    # The fuzzer sends many wrong keys on purpose: past the per-address limit every request
    # would be a 429 and the rest of the operations would go untested.
    server = serve_with_model(
        home,
        model,
        queue_size=16,
        max_upload_mb=1,
        api_key=KEY,
        auth_failures_per_minute=1_000_000,
    )
    yield server
    server.stop()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors_and_no_schema_violations(
    fuzzed: LiveServer, mode: GenerationMode
) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json")  # open, as the docs
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14
    failures: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def call(case: schemathesis.Case) -> None:
            case.call_and_validate(
                headers={"Authorization": f"Bearer {KEY}"},
                excluded_checks=[positive_data_acceptance],
                timeout=60,
            )

        try:
            call()
        except Unsatisfiable:
            assert mode == GenerationMode.NEGATIVE  # nothing to get wrong in GET /healthz
        except (Exception, BaseExceptionGroup) as e:  # all operations run; all failures reported
            failures.append(f"{operation.label}: {e}")
    assert not failures, "\n\n".join(failures)
