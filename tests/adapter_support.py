"""Helpers shared by the adapter tests (real servers, ephemeral ports)."""

from __future__ import annotations

from typing import Any

import grpc
import httpx
import numpy as np

from serving import codecs
from serving.control.admin import OperatorCommands
from serving.protocol.grpc_v2 import GrpcAdapter, add_health_service, add_inference_service
from serving.protocol.http import build_http_app
from serving.service.api import InferenceService

MAX_REQUEST_BYTES = 1 << 20
"""The body limit the adapter tests configure."""


def operator_commands(svc: InferenceService) -> OperatorCommands | None:
    """The commands a repository-backed service was built with (``LocalInferenceService.admin``),
    wired to the adapters beside the service as the deploy layer wires them."""
    admin: OperatorCommands | None = getattr(svc, "admin", None)
    return admin


async def http_client_for(svc: InferenceService) -> httpx.AsyncClient:
    app = build_http_app(svc, max_request_bytes=MAX_REQUEST_BYTES, admin=operator_commands(svc))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://test")


async def start_grpc(svc: InferenceService) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    adapter = GrpcAdapter(svc, admin=operator_commands(svc))
    add_inference_service(adapter, server)
    add_health_service(adapter, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def identity_values(datatype: str) -> np.ndarray[Any, Any]:
    """A [2, 2] tensor of ``datatype`` with distinct values (non-ASCII BYTES included)."""
    if datatype == "BYTES":
        return np.array([[b"ab", b""], [b"\xc3\xa9", b"xyz"]], dtype=object)
    if datatype == "BOOL":
        return np.array([[True, False], [False, True]])
    return np.array([[0, 1], [2, 3]]).astype(codecs.numpy_dtype(datatype))
