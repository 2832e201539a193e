"""Which client request ids are kept (echoed and logged as sent) and which are replaced."""

from __future__ import annotations

import pytest

from serving.telemetry.requests import MAX_REQUEST_ID, client_request_id


@pytest.mark.parametrize("given", ["abc-123", "a" * MAX_REQUEST_ID, "0f:ab/cd_ef.9", "trace=1;span=2"])
def test_sane_ids_are_kept(given: str) -> None:
    assert client_request_id(given) == given


@pytest.mark.parametrize(
    "given",
    [
        "",
        "a" * (MAX_REQUEST_ID + 1),
        "x" * 65_536,
        "two words",
        "tab\there",
        "new\nline",
        "caf\u00e9",
        "\u202eevil",
        "\x00",
    ],
)
def test_other_ids_are_replaced_by_a_new_one(given: str) -> None:
    new = client_request_id(given)
    assert new != given and len(new) == 16 and all(c in "0123456789abcdef" for c in new)
