"""The base of every configuration schema (unknown keys refused, values frozen) and the one way
a schema violation is told: ``key.path: message``, naming the allowed keys after a typo."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def format_validation_error(exc: ValidationError, schema: type[BaseModel] | None = None) -> str:
    """One line per problem: ``key.path: message``; an unknown key names the keys allowed there
    when ``schema`` (the model that was validated) is given."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (typo?)"
            allowed = _allowed_keys(schema, err["loc"]) if schema is not None else []
            if allowed:
                msg += f"; allowed here: {', '.join(allowed)}"
        lines.append(f"{loc}: {msg}")
    return "; ".join(lines)


def _allowed_keys(schema: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The field names of the model that holds ``loc``'s last key (list positions and mapping
    keys on the way keep the element model found before them)."""
    model = schema
    for part in loc[:-1]:
        if isinstance(part, str) and part in model.model_fields:
            inner = _model_in(model.model_fields[part].annotation)
            if inner is None:
                return []
            model = inner
    return sorted(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (``X``, ``X | None``, ``list[X]``, ``dict[str, X]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
