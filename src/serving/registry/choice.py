"""The version a request gets: the number or alias it names, else the model's traffic split
(sticky by a header when set), else the newest ready version; and the shadow a copy goes to."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping

from serving.errors import ModelNotFoundError, ModelNotReadyError
from serving.lifecycle.routing import ModelRouting, choose, resolve_alias
from serving.registry.lane import ModelVersion, VersionState


def pick(
    name: str,
    versions: tuple[ModelVersion, ...],
    routing: ModelRouting | None,
    version: str,
    header: Callable[[str], str | None] | None,
    rng: random.Random,
) -> ModelVersion:
    """The version a request for ``name`` (``versions``: newest first) gets.

    An alias whose target is not ready on this replica yet (still loading) answers from its
    previous target; a weighted version not ready here is left out of the draw.

    Raises:
        ModelNotFoundError: unknown version or alias.
        ModelNotReadyError: the version exists but is not ready.
    """
    if version:
        if not version.isdigit():
            return _by_alias(name, version, versions, routing)
        for mv in versions:
            if mv.version == int(version):
                if mv.state is not VersionState.READY:
                    raise ModelNotReadyError(
                        f"model {name!r} version {version} is not ready: {mv.reason or mv.state.value}"
                    )
                return mv
        served = ", ".join(str(mv.version) for mv in versions)
        raise ModelNotFoundError(f"model {name!r} has no version {version} (served: {served})")
    if routing is not None and routing.weights:
        ready = {mv.version: mv for mv in versions if mv.state is VersionState.READY}
        key = header(routing.sticky_header) if header is not None and routing.sticky_header else None
        chosen = choose(routing.weights, ready, key, rng)
        if chosen is not None:
            return ready[chosen]
    for mv in versions:
        if mv.state is VersionState.READY:
            return mv
    raise ModelNotReadyError(f"model {name!r} has no ready version")


def _by_alias(name: str, alias: str, versions: tuple[ModelVersion, ...], routing: ModelRouting | None) -> ModelVersion:
    target, earlier = resolve_alias(routing, name, alias)
    ready = {mv.version: mv for mv in versions if mv.state is VersionState.READY}
    for v in (target, *earlier):
        if v in ready:
            return ready[v]
    raise ModelNotReadyError(f"model {name!r} alias {alias!r} points at version {target}, which is not ready")


def shadow(
    routing: ModelRouting | None, by_number: Mapping[int, ModelVersion], primary: ModelVersion
) -> ModelVersion | None:
    """The ready shadow version (``by_number``: the model's versions), unless it answered."""
    if routing is None or routing.shadow is None or routing.shadow == primary.version:
        return None
    mv = by_number.get(routing.shadow)
    return mv if mv is not None and mv.state is VersionState.READY else None
