"""A pipeline step's ``when:``: which rows run the step.

Grammar (one comparison; no code is evaluated)::

    when     := operand OP literal
    operand  := SOURCE | FUNC "(" SOURCE ")"        SOURCE: a pipeline input or STEP.OUTPUT
    FUNC     := max | min | sum | mean               reduces each row's values to one
    OP       := < | <= | > | >= | == | !=
    literal  := a number | 'text' | "text" | true | false

Without a function the source must hold one value per row (shape [1]).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.errors import ConfigError

Array = np.ndarray[Any, Any]

_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
# The array methods, not numpy's module functions: a request pays for each call (the functions add
# a Python dispatch layer that costs more than the reduction of one row).
_FUNCS: dict[str, Callable[[Array], Array]] = {
    "max": lambda a: a.max(axis=1),
    "min": lambda a: a.min(axis=1),
    "sum": lambda a: a.sum(axis=1),
    "mean": lambda a: a.mean(axis=1),
}
_SOURCE = r"[A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z_][A-Za-z0-9_.\-]*)?"
_PATTERN = re.compile(
    rf"^\s*(?:(?P<func>[a-z]+)\s*\(\s*(?P<inner>{_SOURCE})\s*\)|(?P<plain>{_SOURCE}))\s*"
    r"(?P<op><=|>=|==|!=|<|>)\s*(?P<literal>.+?)\s*$"
)


@dataclass(frozen=True)
class Condition:
    """``when:`` parsed: ``func(source) op value``."""

    text: str
    source: str
    func: str | None
    op: str
    value: float | str | bool

    def rows(self, values: Array) -> Array:
        """A bool per row of ``values`` (the source's array, rows first)."""
        n = len(values)
        flat = values.reshape(n, -1)
        if self.func is not None:
            if isinstance(self.value, str):
                raise ConfigError(f"when {self.text!r}: {self.func}() compares numbers")
            reduced = _FUNCS[self.func](flat)
        else:
            if flat.shape[1] != 1:
                raise ConfigError(
                    f"when {self.text!r}: {self.source} has {flat.shape[1]} values per row; "
                    "use max(), min(), sum() or mean() to compare one"
                )
            reduced = flat[:, 0]
        target: Any = self.value
        if isinstance(target, str):
            target = target.encode("utf-8")
            reduced = np.array([v if isinstance(v, bytes) else str(v).encode() for v in reduced], dtype=np.object_)
        result = _OPS[self.op](reduced, target)
        return result if isinstance(result, np.ndarray) and result.dtype == np.bool_ else np.asarray(result, dtype=bool)


def parse_condition(text: str) -> Condition:
    """Parse a ``when:``.

    Raises:
        ConfigError: it is not ``[func(]SOURCE[)] OP literal``.
    """
    m = _PATTERN.match(text)
    if m is None:
        raise ConfigError(
            f"when {text!r}: expected SOURCE OP VALUE, e.g. 'max(small.probabilities) < 0.6' "
            "(OP: < <= > >= == !=; functions: max, min, sum, mean)"
        )
    func = m.group("func")
    if func is not None and func not in _FUNCS:
        raise ConfigError(f"when {text!r}: unknown function {func!r}; allowed: {', '.join(_FUNCS)}")
    source = m.group("inner") or m.group("plain")
    return Condition(text, source, func, m.group("op"), _literal(text, m.group("literal")))


def _literal(text: str, raw: str) -> float | str | bool:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    if raw in ("true", "false"):
        return raw == "true"
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"when {text!r}: {raw!r} is not a number, a quoted text, true or false") from None
