"""schemathesis against the running server's own OpenAPI document (`/v2/openapi.json`): requests
generated for every documented route; no answer may be a server error, and every answer must
match the document (status codes, content types, bodies, headers). Left out: schemathesis's
"schema-valid data is accepted" check: a schema-valid inference request can still be wrong for
the model (its input names, datatypes and shapes are per model, not in the document). A datatype
the server does not implement (BF16) is answered 501 with the reason, as documented
(docs/protocol.md): that one 5xx is allowed, every other is a failure."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import positive_data_acceptance

from server_process import ServerProcess

pytestmark = pytest.mark.integration


def no_server_error_but_an_unimplemented_datatype(ctx: Any, response: Any, case: Any) -> None:
    if response.status_code >= 500 and not (response.status_code == 501 and "is not supported" in response.text):
        raise AssertionError(f"server error {response.status_code}: {response.text[:300]}")


def test_every_route_answers_as_documented_and_never_with_a_server_error(server: ServerProcess) -> None:
    schema = schemathesis.openapi.from_url(f"http://{server.http_url}/v2/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    calls: dict[str, int] = {}

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def check(case: Any) -> None:
            case.call_and_validate(
                excluded_checks=[positive_data_acceptance, not_a_server_error],
                additional_checks=[no_server_error_but_an_unimplemented_datatype],
            )
            calls[case.operation.label] = calls.get(case.operation.label, 0) + 1

        check()
    print(f"schemathesis: {sum(calls.values())} requests over {len(calls)} operations, no server error")
