"""Which version answers a request: aliases, traffic weights, sticky keys and a shadow.

Pure data and functions (no I/O): a model's :class:`ModelRouting` is what operators change
(``serving promote|rollback|traffic|shadow|load|unload``); every replica holds the same one
(``lifecycle.store``) and resolves each request with :func:`resolve_alias` and :func:`choose`.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Collection, Mapping

from pydantic import BaseModel, ConfigDict, Field

from serving.errors import ConflictError, InvalidInputError, ModelNotFoundError

ALIAS = re.compile(r"[a-z][a-z0-9_-]{0,62}")
"""An alias: a lowercase name (``production``, ``canary``...); never a number, so it cannot
be confused with a version."""
HEADER = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
HISTORY = 20
"""Earlier targets kept per alias (``serving rollback`` walks back through them)."""


class ModelRouting(BaseModel):
    """One model's operator-set routing; the empty value routes as Triton does (newest ready)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    aliases: dict[str, int] = Field(default_factory=dict, description="Alias -> version.")
    previous: dict[str, tuple[int, ...]] = Field(
        default_factory=dict, description="Alias -> its earlier targets, oldest first."
    )
    weights: dict[int, int] = Field(
        default_factory=dict, description="Version -> percent of the requests that name no version (sum 100)."
    )
    sticky_header: str | None = Field(
        default=None, description="Requests with the same value of this header get the same version."
    )
    shadow: int | None = Field(default=None, description="Version that receives a copy of every request.")
    unloaded: tuple[int, ...] = Field(default=(), description="Versions an operator unloaded.")
    model_unloaded: bool = Field(default=False, description="The whole model was unloaded.")
    generation: int = Field(default=0, description="Raised by each load: replicas rescan the model folder.")

    def pinned(self) -> set[int]:
        """Versions that routing points at (an alias, a weight, the shadow)."""
        pins = set(self.aliases.values()) | {v for v, w in self.weights.items() if w > 0}
        if self.shadow is not None:
            pins.add(self.shadow)
        return pins


def check_alias(alias: str) -> str:
    """Raises InvalidInputError unless ``alias`` is a valid alias name."""
    if not ALIAS.fullmatch(alias):
        raise InvalidInputError(
            f"alias {alias[:64]!r} is not valid: lowercase letters, digits, '_' and '-', starting with a letter"
        )
    return alias


def resolve_alias(routing: ModelRouting | None, name: str, alias: str) -> tuple[int, tuple[int, ...]]:
    """An alias's target and its earlier targets, newest first.

    Raises:
        ModelNotFoundError: no such alias.
    """
    target = routing.aliases.get(alias) if routing is not None else None
    if target is None or routing is None:
        known = ", ".join(sorted(routing.aliases)) if routing is not None and routing.aliases else "none"
        raise ModelNotFoundError(f"model {name!r} has no version or alias {alias[:64]!r} (aliases: {known})")
    return target, tuple(reversed(routing.previous.get(alias, ())))


def sticky_point(key: str) -> float:
    """A key's fixed point in [0, 1): the same key always lands on the same version while the
    weights stay the same."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2.0**64


def choose(
    weights: Mapping[int, int], ready: Collection[int], key: str | None = None, rng: random.Random | None = None
) -> int | None:
    """The version for a request that names none: by weight among the ready versions (a sticky
    ``key`` picks a fixed point, else a random one); None when no weighted version is ready."""
    live = [(v, w) for v, w in sorted(weights.items()) if w > 0 and v in ready]
    if not live:
        return None
    total = sum(w for _, w in live)
    point = (sticky_point(key) if key is not None else (rng or random).random()) * total
    for version, weight in live:
        point -= weight
        if point < 0:
            return version
    return live[-1][0]


def promote(routing: ModelRouting, alias: str, version: int) -> ModelRouting:
    """Point ``alias`` at ``version``; its old target goes on the alias's history."""
    check_alias(alias)
    old = routing.aliases.get(alias)
    previous = dict(routing.previous)
    if old is not None and old != version:
        previous[alias] = (*previous.get(alias, ()), old)[-HISTORY:]
    return routing.model_copy(update={"aliases": {**routing.aliases, alias: version}, "previous": previous})


def rollback(routing: ModelRouting, name: str, alias: str) -> ModelRouting:
    """Point ``alias`` back at its previous target.

    Raises:
        ModelNotFoundError: no such alias.
        ConflictError: the alias has no earlier target.
    """
    resolve_alias(routing, name, alias)
    history = routing.previous.get(alias, ())
    if not history:
        raise ConflictError(f"alias {alias!r} of model {name!r} has no earlier target to roll back to")
    previous = dict(routing.previous)
    previous[alias] = history[:-1]
    return routing.model_copy(update={"aliases": {**routing.aliases, alias: history[-1]}, "previous": previous})


def set_traffic(routing: ModelRouting, weights: Mapping[int, int], sticky_header: str | None) -> ModelRouting:
    """Weights in percent over versions (sum 100), or none to route to the newest ready version.

    Raises:
        InvalidInputError: negative weights, a sum other than 100, or a bad header name.
    """
    if any(w < 0 or w > 100 for w in weights.values()):
        raise InvalidInputError(f"weights are percentages 0..100, got {dict(weights)}")
    if weights and sum(weights.values()) != 100:
        raise InvalidInputError(f"weights must add up to 100, got {sum(weights.values())} ({dict(weights)})")
    if sticky_header is not None:
        sticky_header = sticky_header.lower()
        if not HEADER.fullmatch(sticky_header):
            raise InvalidInputError(f"sticky header {sticky_header[:64]!r} is not a valid header name")
    return routing.model_copy(update={"weights": dict(weights), "sticky_header": sticky_header if weights else None})


def set_shadow(routing: ModelRouting, version: int | None) -> ModelRouting:
    return routing.model_copy(update={"shadow": version})


def unload(routing: ModelRouting, name: str, version: int | None) -> ModelRouting:
    """Mark a version (or, with None, the whole model) unloaded.

    Raises:
        ConflictError: routing still points at the version (an alias, a weight, the shadow):
            move it first, so that no request is dropped.
    """
    pinned = routing.pinned()
    if version is None:
        if routing.aliases or routing.weights or routing.shadow is not None:
            raise ConflictError(
                f"model {name!r} still has aliases, weights or a shadow; clear them before unloading the model"
            )
        return routing.model_copy(update={"model_unloaded": True})
    if version in pinned:
        users = [a for a, v in routing.aliases.items() if v == version]
        raise ConflictError(
            f"model {name!r} version {version} is still routed to"
            + (f" (aliases {users})" if users else " (traffic weights or shadow)")
            + "; move traffic off it before unloading"
        )
    return routing.model_copy(update={"unloaded": tuple(sorted({*routing.unloaded, version}))})


def load(routing: ModelRouting, version: int | None) -> ModelRouting:
    """Clear an unload (of one version, or of the model and every version) and make every
    replica rescan the model's folder."""
    unloaded = () if version is None else tuple(v for v in routing.unloaded if v != version)
    return routing.model_copy(
        update={"unloaded": unloaded, "model_unloaded": False, "generation": routing.generation + 1}
    )
