"""The JSON bodies of the operator endpoints (``/v2/admin/...`` and Triton's repository
load/unload), checked here once and turned into :class:`~serving.control.admin.OperatorCommands` calls; the gRPC load/unload
parameters are read with the same rules."""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import parse_qs

from serving.control.admin import OperatorCommands
from serving.errors import InvalidInputError, UnsupportedError
from serving.protocol.rest_v2 import json_object

ACTIONS = ("promote", "rollback", "traffic", "shadow")
FIELDS = {
    "promote": ({"version", "alias"}, {"force"}),
    "rollback": ({"alias"}, set()),
    "traffic": ({"weights"}, {"sticky_header"}),
    "shadow": ({"version"}, set()),
}


def commands(admin: OperatorCommands | None) -> OperatorCommands:
    """Raises UnsupportedError on a server built without operator commands."""
    if admin is None:
        raise UnsupportedError("this server does not manage its model repository (no model control)")
    return admin


def _object(body: bytes) -> dict[str, Any]:
    return json_object(body) if body.strip() else {}


def version_number(value: Any, what: str = "version") -> int:
    """A version given as a positive integer or its decimal string."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{what} must be a positive integer, got {str(value)[:32]!r}")
    return value


def load_parameters(params: dict[str, Any]) -> int | None:
    """The ``version`` a load/unload names (our extension of Triton's parameters), if any.

    Raises:
        InvalidInputError: a parameter this server does not support (Triton's ``config`` and
            ``file:`` overrides are not).
    """
    unknown = sorted(set(params) - {"version", "unload_dependents"})
    if unknown:
        raise InvalidInputError(f"unsupported parameter(s) {unknown}; supported: version")
    return None if params.get("version") in (None, "") else version_number(params["version"])


async def repository_action(
    admin: OperatorCommands | None, action: str, model: str, body: bytes, who: str
) -> dict[str, Any]:
    doc = _object(body)
    params = doc.get("parameters", {})
    if not isinstance(params, dict):
        raise InvalidInputError("'parameters' must be a JSON object")
    version = load_parameters(params)
    ops = commands(admin)
    report = await (ops.load if action == "load" else ops.unload)(model, version, who)
    return dataclasses.asdict(report)


async def routing_action(
    admin: OperatorCommands | None, action: str, model: str, body: bytes, who: str
) -> dict[str, Any]:
    doc = _object(body)
    required, optional = FIELDS[action]
    missing = sorted(required - set(doc))
    unknown = sorted(set(doc) - required - optional)
    if missing or unknown:
        raise InvalidInputError(
            f"{action} takes {sorted(required)}"
            + (f" and optionally {sorted(optional)}" if optional else "")
            + (f"; missing {missing}" if missing else "")
            + (f"; unknown {unknown}" if unknown else "")
        )
    ops = commands(admin)
    if action == "promote":
        force = doc.get("force", False)
        if not isinstance(force, bool):
            raise InvalidInputError("force must be true or false")
        return await ops.promote(model, version_number(doc["version"]), _text(doc["alias"], "alias"), who, force)
    if action == "rollback":
        return await ops.rollback(model, _text(doc["alias"], "alias"), who)
    if action == "traffic":
        weights = doc["weights"]
        if not isinstance(weights, dict):
            raise InvalidInputError('weights must be an object of version -> percent, e.g. {"1": 90, "2": 10}')
        parsed = {}
        for k, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, int):
                raise InvalidInputError(f"the weight of version {k} must be an integer percent, got {str(w)[:32]!r}")
            parsed[version_number(k)] = w
        sticky = doc.get("sticky_header")
        return await ops.traffic(model, parsed, None if sticky is None else _text(sticky, "sticky_header"), who)
    version = doc["version"]
    return await ops.shadow(model, None if version is None else version_number(version), who)


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"{what} must be a non-empty string")
    return value


def query_int(query: bytes, key: str, default: int) -> int:
    values = parse_qs(query.decode("latin-1")).get(key)
    if not values:
        return default
    if not values[0].isdigit() or not 0 < int(values[0]) <= 10_000:
        raise InvalidInputError(f"{key} must be an integer 1..10000")
    return int(values[0])
