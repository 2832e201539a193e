"""What operators and orchestrators read over HTTP: the operator page (its static files and
``/ui/api/stats``, every replica's totals) and Ray Serve's proxy health routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from serving import web
from serving.background import BackgroundTask
from serving.errors import ErrorKind, ModelNotFoundError
from serving.protocol.http_messages import TEXT, Answer, json_answer
from serving.protocol.status import grpc_code, http_status
from serving.service.api import InferenceService
from serving.telemetry import live as live_stats

log = logging.getLogger(__name__)

LiveSource = Callable[[], Awaitable[list[dict[str, Any]]]]
"""Every replica's ``live_snapshot()`` (the deploy layer reads them from Ray's GCS)."""


class OperatorPage:
    """The operator page: its static files, and ``/ui/api/stats`` (every replica's totals)."""

    def __init__(self, service: InferenceService, live: LiveSource | None) -> None:
        self.service = service
        self.live = live
        self.history = live_stats.History()
        self._assets = web.assets()
        self._sampler = BackgroundTask(self._sample, "the operator page's history: charts start empty")

    def start_history(self) -> None:
        """Summarize every ``history.every_s`` from now on (on the running loop), so the page has
        the last minutes as soon as it opens."""
        self._sampler.start()

    async def stop_history(self) -> None:
        await self._sampler.stop()

    async def _sample(self) -> None:
        while True:
            try:
                self.history.add(live_stats.summarize(await self._snapshots()))
            except Exception:  # a missed sample leaves a gap in the chart; the next one is taken
                log.exception("operator page: could not take a summary for the history")
            await asyncio.sleep(self.history.every_s)

    async def _snapshots(self) -> list[dict[str, Any]]:
        return await self.live() if self.live is not None else [self.service.live_snapshot()]

    async def answer(self, rest: list[str], path: str, query: bytes = b"") -> Answer:
        """``rest``: the path after ``/ui``; ``?history=1`` on the stats adds the last minutes."""
        if rest == ["api", "stats"]:
            doc = await self._live_stats()
            if parse_qs(query.decode("latin-1")).get("history") == ["1"]:
                doc["history"] = self.history.items()
            return json_answer(doc)
        name = rest[0] if len(rest) == 1 else ("index.html" if not rest else "")
        asset = self._assets.get(name)
        if asset is None:
            raise ModelNotFoundError(f"no route {path[:200]!r}")
        body, content_type = asset
        return Answer(body, content_type=content_type, headers=[(b"cache-control", b"no-cache")])

    async def _live_stats(self) -> dict[str, Any]:
        doc = live_stats.summarize(await self._snapshots())
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
