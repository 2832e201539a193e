"""What operators and orchestrators read over HTTP: the operator page (its static files and
``/ui/api/stats``, every replica's totals) and Ray Serve's proxy health routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from serving import web
from serving.errors import ErrorKind, ModelNotFoundError
from serving.protocol.http_messages import TEXT, Answer, json_answer
from serving.protocol.status import grpc_code, http_status
from serving.service.api import InferenceService
from serving.telemetry import live

LiveSource = Callable[[], Awaitable[list[dict[str, Any]]]]
"""Every replica's ``live_snapshot()`` (the deploy layer reads them from Ray's GCS)."""


class OperatorPage:
    """The operator page: its static files, and ``/ui/api/stats`` (every replica's totals)."""

    def __init__(self, service: InferenceService, live: LiveSource | None) -> None:
        self.service = service
        self.live = live
        self._assets = web.assets()

    async def answer(self, rest: list[str], path: str) -> Answer:
        """``rest``: the path after ``/ui``."""
        if rest == ["api", "stats"]:
            return json_answer(await self._live_stats())
        name = rest[0] if len(rest) == 1 else ("index.html" if not rest else "")
        asset = self._assets.get(name)
        if asset is None:
            raise ModelNotFoundError(f"no route {path[:200]!r}")
        body, content_type = asset
        return Answer(body, content_type=content_type, headers=[(b"cache-control", b"no-cache")])

    async def _live_stats(self) -> dict[str, Any]:
        snapshots = await self.live() if self.live is not None else [self.service.live_snapshot()]
        doc = live.summarize(snapshots)
        for error in doc["errors"]:
            kind = ErrorKind(error["kind"])
            error["http_status"] = int(http_status(kind))
            error["grpc_status"] = grpc_code(kind).name
        index = self.service.repository_index()
        doc["versions"] = [{"model": r.name, "version": r.version, "state": r.state, "reason": r.reason} for r in index]
        for row in doc["versions"]:
            if row["state"] == "READY":
                d = self.service.model_config(row["model"], row["version"])
                row.update(platform=d.platform, device=d.device, max_batch_size=d.max_batch_size)
        return doc


def serve_proxy_health(service: InferenceService, draining: bool, route: str) -> Answer:
    """Ray Serve's proxy health routes (``healthz``, ``routes``), answered as its proxy answers
    them, because orchestrators built for Serve probe them on the HTTP port: KubeRay's worker
    readiness probe runs ``wget -T 2 -q -O- http://localhost:8000/-/healthz | grep success``.
    Healthy only while this replica is ready (every model has a ready version) and not draining."""
    if draining:
        return Answer(b"This node is being drained.", 503, TEXT)
    if not service.ready():
        return Answer(b"Not ready: a model has no ready version yet.", 503, TEXT)
    if route == "healthz":
        return Answer(b"success", content_type=TEXT)
    return json_answer({"/": service.server_name})  # route prefix -> application, as Serve lists them
