"""Keeps this process's loaded versions equal to what the repository and the operators want.

Every ``POLL_S`` it looks at the shared state file (``lifecycle.store``) and applies new
routing at once; every ``SCAN_S`` it rescans the repository folder (Triton's "poll" mode):
a new version folder (or model folder) is loaded and warmed, then served per the version
policy and the routing; a version the policy no longer selects, or an operator unloaded, is
drained and closed, unless routing still points at it (an alias, a weight, the shadow).
A version that failed to load is not retried until its files change or an operator loads
it again (no load loop every second), unless it failed in a way that may pass (a file that
could not be read): that one is retried after 1 s, 2 s, 4 s ... at most every ``RETRY_MAX_S``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from serving.control.store import LifecycleState, LifecycleStore
from serving.errors import ConfigError, ServingError
from serving.lifecycle.lineage import LINEAGE_FILE
from serving.lifecycle.routing import ModelRouting
from serving.registry.lane import ModelVersion, VersionState
from serving.registry.versions import ModelRegistry
from serving.repository import ModelEntry, load_model_entry

log = logging.getLogger(__name__)

POLL_S = 0.25
SCAN_S = 1.0
RETRY_MAX_S = 60.0


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What one reconcile of a model did."""

    loaded: tuple[int, ...] = ()
    unloaded: tuple[int, ...] = ()
    failed: tuple[tuple[int, str], ...] = ()
    kept: tuple[int, ...] = ()
    """Versions no longer wanted that routing still points at: still served."""
    error: str = ""
    """Why the model folder itself could not be read."""


Stamp = tuple[tuple[int, ...], int]
"""A version's files' modification times and its model's routing generation, at a load."""


def _stamp(entry: ModelEntry, version: int) -> tuple[int, ...]:
    """When the version's files last changed (model.yaml, artifact, lineage)."""
    out = []
    for path in (
        entry.path / "model.yaml",
        entry.artifact(version),
        entry.version_dir(version) / LINEAGE_FILE,
        *(entry.version_dir(version) / f for f in entry.config.extra_files),
    ):
        try:
            out.append(os.stat(path).st_mtime_ns)
        except FileNotFoundError:
            out.append(0)
    return tuple(out)


def startup_stamps(entries: list[ModelEntry], generations: dict[str, int]) -> dict[tuple[str, int], Stamp]:
    """The stamps of the versions about to be loaded at start-up, taken before they load: files
    that change while the server starts are then seen as changed (a load asked later reloads)."""
    return {(e.name, v): (_stamp(e, v), generations.get(e.name, 0)) for e in entries for v in e.selected}


class Reconciler:
    def __init__(
        self,
        registry: ModelRegistry,
        store: LifecycleStore,
        root: Path,
        drain_s: float = 30.0,
        loaded: dict[tuple[str, int], Stamp] | None = None,
        revision: int = 0,
    ) -> None:
        self.registry = registry
        self.store = store
        self.root = root
        self.drain_s = drain_s
        self._lock = asyncio.Lock()
        self._stamps: dict[tuple[str, int], Stamp] = dict(loaded or {})  # (files, generation) at last load try
        self._broken_models: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._scan = True
        self._revision = revision  # of the state applied last
        self._retries: dict[tuple[str, int], tuple[float, float]] = {}  # (next try, back-off) after a transient failure

    async def adopt(self, state: LifecycleState, force: bool = False) -> dict[str, LoadReport]:
        """Serve ``state`` if it is newer than the one applied (or ``force``): its routing at
        once, and a sync of each model whose loads or unloads it changed. States arrive from the
        poll and from this replica's own changes, in either order: an older one is ignored."""
        if state.revision <= self._revision and not force:
            return {}
        self._revision = state.revision
        before = self.registry.routing
        self.registry.routing = dict(state.models)
        reports = {}
        for name, routing in state.models.items():
            old = before.get(name) or ModelRouting()
            if (routing.generation, routing.unloaded, routing.model_unloaded) != (
                old.generation,
                old.unloaded,
                old.model_unloaded,
            ):
                reports[name] = (await self.sync(name))[name]
        return reports

    def start(self, scan: bool = True) -> None:
        """Poll the shared routing, and with ``scan`` the repository folder, until :meth:`stop`."""
        self._scan = scan
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.critical(
                "the repository watch died: versions and routing no longer follow changes", exc_info=task.exception()
            )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_scan = loop.time() + SCAN_S
        while True:
            await asyncio.sleep(POLL_S)
            try:
                state = await asyncio.to_thread(self.store.changed)
                if state is not None and state.revision < self._revision:
                    # read before a change of ours landed, or the state file was reset: the file now decides
                    state = await asyncio.to_thread(self.store.read)
                    await self.adopt(state, force=state.revision < self._revision)
                elif state is not None:
                    await self.adopt(state)
                if self._scan and loop.time() >= next_scan:
                    await self.sync()
                    next_scan = loop.time() + SCAN_S
            except ServingError as exc:  # a bad state file or repository: say so, keep serving
                log.error("repository watch: %s", exc.message)
            except Exception:  # an unreadable file, a failing filesystem: the next round tries again
                log.exception("repository watch failed this round")

    async def sync(self, only: str | None = None) -> dict[str, LoadReport]:
        """Load and unload versions of every model (or one) to match disk and routing."""
        async with self._lock:
            names = [only] if only is not None else await asyncio.to_thread(self._model_folders)
            names = sorted(set(names) | ({*self.registry.names()} if only is None else set()))
            return {name: await self._sync_model(name) for name in names}

    def _retry_due(self, mv: ModelVersion) -> bool:
        """A version whose load failed in a way that may pass, and whose back-off is over."""
        if not mv.retry:
            return False
        due, _ = self._retries.get((mv.name, mv.version), (0.0, 0.0))
        return asyncio.get_running_loop().time() >= due

    def _model_folders(self) -> list[str]:
        try:
            return [p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))]
        except OSError as exc:
            log.error("cannot list the repository %s: %s", self.root, exc)
            return []

    async def _sync_model(self, name: str) -> LoadReport:
        routing = self.registry.routing.get(name) or ModelRouting()
        model_dir = self.root / name
        entry: ModelEntry | None = None
        if model_dir.is_dir():
            try:
                entry = await asyncio.to_thread(load_model_entry, model_dir)
                self._broken_models.pop(name, None)
            except ConfigError as exc:
                if self._broken_models.get(name) != exc.message:
                    log.error("model %s cannot be (re)loaded: %s", name, exc.message)
                self._broken_models[name] = exc.message
                return LoadReport(error=exc.message)
        wanted: set[int] = set()
        if entry is not None and not routing.model_unloaded:
            wanted = set(entry.selected) - set(routing.unloaded)
        current = (
            {mv.version: mv for mv in self.registry.versions(name) if mv.reason != "unloaded"}
            if name in self.registry.names()
            else {}
        )
        loaded, failed = [], []
        for v in sorted(wanted):
            assert entry is not None
            stamp = (_stamp(entry, v), routing.generation)
            mv = current.get(v)
            seen = self._stamps.get((name, v))
            self._stamps[(name, v)] = stamp
            if mv is not None:
                if seen is None:
                    continue  # as loaded at start-up
                files_changed, load_asked = seen[0] != stamp[0], seen[1] != stamp[1]
                if mv.state is VersionState.READY and not (files_changed and load_asked):
                    # a ready version is reloaded only when its files changed and an operator
                    # asks for a load; until then the files it was loaded from are its stamp
                    self._stamps[(name, v)] = (seen[0], stamp[1])
                    continue
                if mv.state is not VersionState.READY and seen == stamp and not self._retry_due(mv):
                    continue  # failed with these files: retried when they change or on a load
            result = await self.registry.load_version(entry, v)
            if result.state is VersionState.READY:
                loaded.append(v)
                self._retries.pop((name, v), None)
            else:
                failed.append((v, result.reason))
                if result.retry:
                    _, backoff = self._retries.get((name, v), (0.0, SCAN_S / 2))
                    backoff = min(2 * backoff, RETRY_MAX_S)
                    self._retries[(name, v)] = (asyncio.get_running_loop().time() + backoff, backoff)
        unloaded, kept = [], []
        pinned = routing.pinned()
        for v, mv in current.items():
            if v in wanted:
                continue
            if v in pinned and mv.state is VersionState.READY:
                kept.append(v)
                continue
            await self.registry.unload_version(name, v, self.drain_s)
            self._stamps.pop((name, v), None)
            unloaded.append(v)
        if loaded or unloaded or failed:
            log.info("model %s: loaded %s, unloaded %s, failed %s", name, loaded, unloaded, failed)
        return LoadReport(tuple(loaded), tuple(unloaded), tuple(failed), tuple(kept))
