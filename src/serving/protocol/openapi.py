"""The OpenAPI 3.1 document of the HTTP routes (``GET /v2/openapi.json``): the Open Inference
Protocol's REST routes, Triton's configuration, statistics and repository-index extensions and
the binary tensor extension, with the ``{"error": ...}`` answers each route can give."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from serving.version import SERVER_VERSION

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES", "BF16"]  # fmt: skip


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json_content(_ref("Error"))}


ERRORS = {
    "400": _error("Malformed request, wrong datatype, shape or input names"),
    "404": _error("Unknown model, version or route"),
    "405": _error("The route exists for another method"),
    "409": _error("A lifecycle change the current state forbids, or a release gate missed"),
    "413": _error("Body larger than max_request_bytes"),
    "500": _error("Internal error (the message carries the request id)"),
    "501": _error("Unsupported datatype (BF16), or a feature this server does not offer"),
    "503": _error("Not ready, draining, or overloaded (with Retry-After)"),
    "504": _error("Deadline exceeded"),
}

MODEL = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
REQUEST_ID = {
    "name": "X-Request-ID",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "Echoed in the answer, carried in the logs; made by the server when absent.",
}


def _get(summary: str, ok: dict[str, Any], codes: tuple[str, ...], params: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "parameters": [*params, REQUEST_ID],
            "responses": {"200": ok, **{c: ERRORS[c] for c in codes}},
        }
    }


def _model_routes(prefix: str, params: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        prefix: _get(
            "Model metadata",
            {"description": "Metadata", "content": _json_content(_ref("ModelMetadata"))},
            ("400", "404", "405"),
            params,
        ),
        f"{prefix}/ready": _get(
            "Model readiness",
            {"description": "Ready", "content": _json_content(_ref("ModelReady"))},
            ("404", "405", "503"),
            params,
        ),
        f"{prefix}/config": _get(
            "Model configuration (Triton)",
            {"description": "Configuration", "content": _json_content({"type": "object"})},
            ("404", "405"),
            params,
        ),
        f"{prefix}/stats": _get(
            "Model statistics (Triton)",
            {"description": "Statistics", "content": _json_content(_ref("Statistics"))},
            ("404", "405"),
            params,
        ),
        f"{prefix}/infer": {
            "post": {
                "summary": "Inference",
                "parameters": [
                    *params,
                    REQUEST_ID,
                    {
                        "name": "Inference-Header-Content-Length",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1},
                        "description": "Binary tensor extension: length of the JSON header before the raw tensors.",
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        **_json_content(_ref("InferenceRequest")),
                        "application/octet-stream": {
                            "schema": {
                                "type": "string",
                                "format": "binary",
                                "description": "Binary tensor extension: JSON header, then raw little-endian tensors.",
                            }
                        },
                    },
                },
                "responses": {
                    "200": {
                        "description": "Outputs (JSON, or JSON header + raw tensors when binary_data was asked for)",
                        "headers": {"Inference-Header-Content-Length": {"schema": {"type": "integer"}}},
                        "content": {
                            **_json_content(_ref("InferenceResponse")),
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                        },
                    },
                    **ERRORS,
                },
            }
        },
    }


def _tensor(with_data: bool) -> dict[str, Any]:
    props: dict[str, Any] = {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": -1}},
        "datatype": {"type": "string", "enum": DATATYPES},
        "parameters": {"type": "object"},
    }
    if with_data:
        props["data"] = {"type": "array", "description": "Row-major values, flat or nested"}
    return {"type": "object", "required": ["name", "shape", "datatype"], "properties": props}


SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "TensorMetadata": {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string", "enum": DATATYPES},
            "shape": {"type": "array", "items": {"type": "integer"}},
        },
    },
    "ServerMetadata": {
        "type": "object",
        "required": ["name", "version", "extensions"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
    },
    "ModelMetadata": {
        "type": "object",
        "required": ["name", "platform", "inputs", "outputs"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": _ref("TensorMetadata")},
            "outputs": {"type": "array", "items": _ref("TensorMetadata")},
            "parameters": {"type": "object"},
        },
    },
    "ModelReady": {
        "type": "object",
        "required": ["name", "ready"],
        "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
    },
    "InferenceRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "inputs": {"type": "array", "minItems": 1, "items": _tensor(with_data=True)},
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
                },
            },
        },
    },
    "InferenceResponse": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "outputs": {"type": "array", "items": _tensor(with_data=True)},
        },
    },
    "Statistics": {
        "type": "object",
        "required": ["model_stats"],
        "properties": {"model_stats": {"type": "array", "items": {"type": "object"}}},
    },
    "RepositoryIndexEntry": {
        "type": "object",
        "required": ["name", "state"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "state": {"type": "string"},
            "reason": {"type": "string"},
        },
    },
}

LOAD_REPORT = {
    "type": "object",
    "properties": {
        "loaded": {"type": "array", "items": {"type": "integer"}},
        "unloaded": {"type": "array", "items": {"type": "integer"}},
        "failed": {"type": "array", "items": {"type": "array"}},
        "kept": {"type": "array", "items": {"type": "integer"}},
        "error": {"type": "string"},
    },
}
CHANGE = {
    "type": "object",
    "required": ["model", "action", "before", "after"],
    "properties": {
        "model": {"type": "string"},
        "action": {"type": "string"},
        "before": {"type": "object"},
        "after": {"type": "object"},
    },
}
ADMIN_BODIES = {
    "promote": {
        "type": "object",
        "required": ["version", "alias"],
        "properties": {
            "version": {"type": "integer", "minimum": 1},
            "alias": {"type": "string", "pattern": "^[a-z][a-z0-9_-]{0,62}$"},
            "force": {"type": "boolean"},
        },
        "additionalProperties": False,
    },
    "rollback": {
        "type": "object",
        "required": ["alias"],
        "properties": {"alias": {"type": "string"}},
        "additionalProperties": False,
    },
    "traffic": {
        "type": "object",
        "required": ["weights"],
        "properties": {
            "weights": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 100}},
            "sticky_header": {"type": "string"},
        },
        "additionalProperties": False,
    },
    "shadow": {
        "type": "object",
        "required": ["version"],
        "properties": {"version": {"type": ["integer", "null"], "minimum": 1}},
        "additionalProperties": False,
    },
}


def _post(summary: str, body: dict[str, Any], ok: dict[str, Any], params: list[dict[str, Any]]) -> dict[str, Any]:
    codes = ("400", "404", "405", "409", "413", "501", "503")
    return {
        "post": {
            "summary": summary,
            "parameters": [*params, REQUEST_ID],
            "requestBody": {"required": False, "content": _json_content(body)},
            "responses": {
                "200": {"description": "Done", "content": _json_content(ok)},
                **{c: ERRORS[c] for c in codes},
            },
        }
    }


def _lifecycle_routes() -> dict[str, Any]:
    """Triton's repository load/unload and the operator endpoints (admin keys when keys are on)."""
    load_body = {
        "type": "object",
        "properties": {
            "parameters": {
                "type": "object",
                "properties": {"version": {"type": ["integer", "string"]}},
                "additionalProperties": False,
            }
        },
    }
    routes: dict[str, Any] = {
        "/v2/repository/models/{model}/load": _post(
            "Load or reload a model's versions (Triton); parameters.version: just that one",
            load_body,
            LOAD_REPORT,
            [MODEL],
        ),
        "/v2/repository/models/{model}/unload": _post(
            "Unload a version (parameters.version) or the model (Triton)", load_body, LOAD_REPORT, [MODEL]
        ),
        "/v2/admin/models": _get(
            "Versions, states, aliases, traffic, shadow and lineage of every model",
            {"description": "Models", "content": _json_content({"type": "object", "required": ["models"]})},
            ("405",),
            [],
        ),
        "/v2/admin/audit": _get(
            "The last lifecycle changes (time, who, action, before, after)",
            {"description": "Audit entries", "content": _json_content({"type": "object", "required": ["entries"]})},
            ("400", "405"),
            [
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 10000},
                }
            ],
        ),
    }
    for action, body in ADMIN_BODIES.items():
        routes[f"/v2/admin/models/{{model}}/{action}"] = _post(
            f"{action.capitalize()} (lifecycle)", body, CHANGE, [MODEL]
        )
    return routes


FEEDBACK_BODY = {
    "type": "array",
    "maxItems": 100000,
    "items": {
        "type": "object",
        "required": ["id", "label"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "minLength": 1, "maxLength": 128, "description": "The prediction's request id."},
            "label": {"type": ["string", "number"], "description": "The true class or value."},
            "row": {
                "type": "integer",
                "minimum": 0,
                "maximum": 2147483647,
                "description": "The row of the request (default 0).",
            },
        },
    },
}
FEEDBACK_RESULT = {
    "type": "object",
    "required": ["received", "matched", "unmatched"],
    "properties": {k: {"type": "integer", "minimum": 0} for k in ("received", "matched", "unmatched")},
}


@cache
def document() -> dict[str, Any]:
    health = {"type": "object"}
    paths: dict[str, Any] = {
        "/v2": _get(
            "Server metadata",
            {"description": "Metadata", "content": _json_content(_ref("ServerMetadata"))},
            ("405",),
            [],
        ),
        "/v2/health/live": _get(
            "Liveness",
            {"description": "Live", "content": _json_content({**health, "properties": {"live": {"type": "boolean"}}})},
            ("405",),
            [],
        ),
        "/v2/health/ready": _get(
            "Readiness (503 while loading or draining)",
            {
                "description": "Ready",
                "content": _json_content({**health, "properties": {"ready": {"type": "boolean"}}}),
            },
            ("405", "503"),
            [],
        ),
        "/v2/models/stats": _get(
            "Statistics of every model (Triton)",
            {"description": "Statistics", "content": _json_content(_ref("Statistics"))},
            ("405",),
            [],
        ),
        **_model_routes("/v2/models/{model}", [MODEL]),
        **_model_routes("/v2/models/{model}/versions/{version}", [MODEL, VERSION]),
        "/v2/models/{model}/feedback": {
            "post": {
                "summary": "Labels for logged predictions (the model's prediction log), matched by request id",
                "parameters": [MODEL, REQUEST_ID],
                "requestBody": {"required": True, "content": _json_content(FEEDBACK_BODY)},
                "responses": {
                    "200": {"description": "Labels kept", "content": _json_content(FEEDBACK_RESULT)},
                    **{c: ERRORS[c] for c in ("400", "404", "405", "413")},
                },
            }
        },
        "/v2/repository/index": {
            "post": {
                "summary": "Repository index (Triton)",
                "parameters": [REQUEST_ID],
                "requestBody": {
                    "required": False,
                    "content": _json_content({"type": "object", "properties": {"ready": {"type": "boolean"}}}),
                },
                "responses": {
                    "200": {
                        "description": "Model versions and their states",
                        "content": _json_content({"type": "array", "items": _ref("RepositoryIndexEntry")}),
                    },
                    **{c: ERRORS[c] for c in ("400", "405", "413")},
                },
            }
        },
        **_lifecycle_routes(),
        "/v2/openapi.json": _get(
            "This document", {"description": "OpenAPI 3.1", "content": _json_content({"type": "object"})}, ("405",), []
        ),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "serving: Open Inference Protocol (KServe V2) over HTTP",
            "version": SERVER_VERSION,
            "description": "V2 REST routes with Triton's model configuration, statistics, model repository "
            "(index, load, unload) and binary tensor extensions, and the model lifecycle's operator routes. "
            'Errors are {"error": "..."} with the status in the table of the README.',
        },
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }


@cache
def document_bytes() -> bytes:
    return json.dumps(document(), separators=(",", ":")).encode()
