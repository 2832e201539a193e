"""Operator commands on a running server: aliases, traffic, shadow, load/unload, and what
the server holds. Each change goes through the shared store (one at a time across replicas,
audited), is applied here at once, and reaches the other replicas within ``POLL_S``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from serving.control.reconcile import LoadReport, Reconciler
from serving.control.store import LifecycleStore
from serving.errors import ConfigError, GateError, InvalidInputError, ModelNotFoundError, ModelNotReadyError
from serving.lifecycle import routing as r
from serving.lifecycle.gates import check_gates, worst_slice
from serving.lifecycle.lineage import Lineage, read_lineage
from serving.lifecycle.routing import ModelRouting
from serving.registry.lane import VersionState
from serving.registry.versions import ModelRegistry
from serving.repository import load_model_entry


class OperatorCommands(Protocol):
    """The operator's port, what the adapters' ``/v2/admin/...`` routes and Triton's repository
    load/unload call (``who``: the caller, for the audit log). Apart from the data plane: a
    server built without one answers those routes UNIMPLEMENTED."""

    def overview(self) -> list[dict[str, Any]]: ...
    async def promote(self, name: str, version: int, alias: str, who: str, force: bool = False) -> dict[str, Any]: ...
    async def rollback(self, name: str, alias: str, who: str) -> dict[str, Any]: ...
    async def traffic(
        self, name: str, weights: Mapping[int, int], sticky_header: str | None, who: str
    ) -> dict[str, Any]: ...
    async def shadow(self, name: str, version: int | None, who: str) -> dict[str, Any]: ...
    async def load(self, name: str, version: int | None, who: str) -> LoadReport: ...
    async def unload(self, name: str, version: int | None, who: str) -> LoadReport: ...
    async def audit(self, limit: int = 100) -> list[dict[str, Any]]: ...


class ModelAdmin:
    """:class:`OperatorCommands` over this process's registry, the shared store and the reconciler."""

    def __init__(self, registry: ModelRegistry, store: LifecycleStore, reconciler: Reconciler) -> None:
        self.registry = registry
        self.store = store
        self.reconciler = reconciler

    def overview(self) -> list[dict[str, Any]]:
        """Every model: versions (state, reason, lineage), aliases, weights, shadow."""
        out = []
        for name in self.registry.names():
            routing = self.registry.routing.get(name) or ModelRouting()
            versions = []
            for mv in reversed(self.registry.versions(name)):
                fresh, lineage_error = self._lineage(mv.directory) if mv.directory is not None else (mv.lineage, "")
                lineage = fresh.model_dump(mode="json", exclude_none=True) if fresh is not None else None
                if lineage is not None and "profile" in lineage:
                    lineage["profile"] = {k: v for k, v in lineage["profile"].items() if k != "features"} | {
                        "features": sorted(lineage["profile"]["features"])
                    }
                versions.append(
                    {
                        "version": mv.version,
                        "state": mv.state.value,
                        "reason": mv.reason,
                        "aliases": sorted(a for a, v in routing.aliases.items() if v == mv.version),
                        "weight": routing.weights.get(mv.version, 0),
                        "shadow": routing.shadow == mv.version,
                        "lineage": lineage,
                        "lineage_error": lineage_error or None,
                        "worst_slice": worst_slice(
                            fresh.evaluation if fresh is not None else None, mv.config.gates.min_slice_rows
                        ),
                    }
                )
            out.append({"name": name, "versions": versions, **routing.model_dump(mode="json")})
        return out

    @staticmethod
    def _lineage(directory: Path) -> tuple[Lineage | None, str]:
        """The lineage on disk now (``serving evaluate`` adds to it while the version serves),
        and why it cannot be read when it cannot ("" otherwise)."""
        try:
            return read_lineage(directory), ""
        except ConfigError as exc:
            return None, exc.message

    def gates_missed(self, name: str, version: int, alias: str) -> list[str]:
        """The release gates of the model that ``version`` misses to become ``alias``.

        Raises:
            ConfigError: model.yaml or the lineage became invalid.
        """
        entry = load_model_entry(self.registry.entry(name).path)  # model.yaml as it is now: gates may change
        current = (self.registry.routing.get(name) or ModelRouting()).aliases.get(alias)
        candidate = read_lineage(entry.version_dir(version))
        base = self._lineage(entry.version_dir(current))[0] if current is not None and current != version else None
        root = self.reconciler.root.resolve()
        no_evaluation = (
            f"no evaluation in {entry.version_dir(version).resolve() / 'lineage.yaml'} (this server's repository is "
            f"{root}): run `serving evaluate {name}:{version} --repository {root} --data HOLDOUT --label COLUMN` first"
        )
        return check_gates(entry.config.gates, candidate, base, current, no_evaluation)

    def _ready(self, name: str, version: int) -> None:
        for mv in self.registry.versions(name):
            if mv.version == version:
                if mv.state is not VersionState.READY:
                    raise ModelNotReadyError(
                        f"model {name!r} version {version} is not ready: {mv.reason or mv.state.value}"
                    )
                return
        served = ", ".join(str(mv.version) for mv in self.registry.versions(name))
        raise ModelNotFoundError(f"model {name!r} has no version {version} (known: {served})")

    async def _change(
        self, name: str, change: Callable[[ModelRouting], ModelRouting], who: str, action: str, details: dict[str, Any]
    ) -> dict[str, Any]:
        answer, _ = await self._record(name, change, who, action, details)
        return answer

    async def _change_and_sync(
        self, name: str, change: Callable[[ModelRouting], ModelRouting], who: str, action: str, details: dict[str, Any]
    ) -> tuple[dict[str, Any], LoadReport]:
        """:meth:`_record`, then the model's versions synced to it; (the answer, the model's report)."""
        answer, reports = await self._record(name, change, who, action, details)
        return answer, reports[name] if name in reports else (await self.reconciler.sync(name))[name]

    async def _record(
        self, name: str, change: Callable[[ModelRouting], ModelRouting], who: str, action: str, details: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, LoadReport]]:
        """Record a change and serve the new state here at once, with what other replicas
        changed since our last poll; (the answer, the reports of the models synced)."""
        before, after, state = await asyncio.to_thread(
            self.store.update, name, change, who=who, action=action, details=details
        )
        reports = await self.reconciler.adopt(state)
        return {
            "model": name,
            "action": action,
            "before": before.model_dump(mode="json"),
            "after": after.model_dump(mode="json"),
            **details,
        }, reports

    async def promote(self, name: str, version: int, alias: str, who: str, force: bool = False) -> dict[str, Any]:
        """Point an alias at a ready version, if it passes the model's release gates.

        Raises:
            ModelNotFoundError, ModelNotReadyError, InvalidInputError (bad alias),
            GateError (gates missed, without ``force``).
        """
        r.check_alias(alias)
        self._ready(name, version)
        missed = await asyncio.to_thread(self.gates_missed, name, version, alias)
        details: dict[str, Any] = {"version": version, "alias": alias, "force": force}
        if missed:
            details["gates_missed"] = missed
        if missed and not force:
            await asyncio.to_thread(self.store.record, name, who=who, action="promote-refused", details=details)
            raise GateError(f"model {name!r} version {version} may not become {alias!r}: " + "; ".join(missed))
        return await self._change(name, lambda x: r.promote(x, alias, version), who, "promote", details)

    async def rollback(self, name: str, alias: str, who: str) -> dict[str, Any]:
        self.registry.versions(name)
        return await self._change(name, lambda x: r.rollback(x, name, alias), who, "rollback", {"alias": alias})

    async def traffic(
        self, name: str, weights: Mapping[int, int], sticky_header: str | None, who: str
    ) -> dict[str, Any]:
        for v, w in weights.items():
            if w > 0:
                self._ready(name, v)
        return await self._change(
            name,
            lambda x: r.set_traffic(x, weights, sticky_header),
            who,
            "traffic",
            {"weights": {str(k): v for k, v in weights.items()}, "sticky_header": sticky_header},
        )

    async def shadow(self, name: str, version: int | None, who: str) -> dict[str, Any]:
        if version is not None:
            self._ready(name, version)
        return await self._change(name, lambda x: r.set_shadow(x, version), who, "shadow", {"version": version})

    async def load(self, name: str, version: int | None, who: str) -> LoadReport:
        """Load (or reload) a model's versions from its folder, here now and on every replica.

        Raises:
            ModelNotFoundError: no such model folder.
            ModelNotReadyError: the version (or every version asked for) failed to load; the
                versions already serving are untouched.
        """
        if not (self.reconciler.root / name).is_dir() or name.startswith((".", "_")) or "/" in name:
            raise ModelNotFoundError(f"the repository has no model folder {name[:64]!r}")
        _, report = await self._change_and_sync(name, lambda x: r.load(x, version), who, "load", {"version": version})
        if report.error:
            raise InvalidInputError(f"model {name!r} cannot be loaded: {report.error}")
        failed = dict(report.failed)
        if version is not None and version in failed:
            raise ModelNotReadyError(f"model {name!r} version {version} failed to load: {failed[version]}")
        if version is not None and not any(
            mv.version == version and mv.state is VersionState.READY for mv in self.registry.versions(name)
        ):
            raise ModelNotFoundError(f"model {name!r} has no version {version} that its version policy selects")
        if failed and not any(mv.state is VersionState.READY for mv in self.registry.versions(name)):
            raise ModelNotReadyError(
                f"model {name!r} failed to load: "
                + "; ".join(f"version {v}: {why}" for v, why in sorted(failed.items()))
            )
        return report

    async def unload(self, name: str, version: int | None, who: str) -> LoadReport:
        self.registry.versions(name)
        _, report = await self._change_and_sync(
            name, lambda x: r.unload(x, name, version), who, "unload", {"version": version}
        )
        return report

    async def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.store.audit, limit)
