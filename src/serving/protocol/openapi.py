"""The OpenAPI 3.1 document of the HTTP routes (``GET /v2/openapi.json``): the Open Inference
Protocol's REST routes, Triton's configuration, statistics and repository-index extensions and
the binary tensor extension, with the ``{"error": ...}`` answers each route can give."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from serving.service import SERVER_VERSION

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
    "413": _error("Body larger than max_request_bytes"),
    "500": _error("Internal error (the message carries the request id)"),
    "501": _error("Unsupported datatype (BF16)"),
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
        "/v2/openapi.json": _get(
            "This document", {"description": "OpenAPI 3.1", "content": _json_content({"type": "object"})}, ("405",), []
        ),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "serving: Open Inference Protocol (KServe V2) over HTTP",
            "version": SERVER_VERSION,
            "description": "V2 REST routes with Triton's model configuration, statistics, repository index and "
            'binary tensor extensions. Errors are {"error": "..."} with the status in the table of the README.',
        },
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }


@cache
def document_bytes() -> bytes:
    return json.dumps(document(), separators=(",", ":")).encode()
