"""Metrics per slice of the evaluation data, with bootstrap 95 % confidence intervals, and the
fairness of a binary classifier across the groups of a sensitive column (numpy only, no I/O).

The fairness numbers are Fairlearn's definitions (``demographic_parity_difference`` and
``_ratio``: the spread of the selection rate P(predicted positive) across groups;
``equalized_odds_difference``: the larger of the spreads of the true and false positive rates).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]

RESAMPLES = 200
"""Bootstrap resamples per slice (the 2.5th and 97.5th percentiles bound the interval)."""
FAIRNESS_METRICS = ("demographic_parity_difference", "demographic_parity_ratio", "equalized_odds_difference")
LOWER_IS_FAIRER = {
    "demographic_parity_difference": True,
    "demographic_parity_ratio": False,
    "equalized_odds_difference": True,
}


@dataclass(frozen=True)
class SliceStat:
    """One slice: its rows, its metrics, and each metric's bootstrap 95 % interval (``low``, ``high``)."""

    rows: int
    metrics: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]


def slice_names(columns: dict[str, Array]) -> Array:
    """Each row's slice, named ``col=value[,col=value]`` (the columns crossed)."""
    names = list(columns)
    n = len(next(iter(columns.values())))
    out = np.empty(n, dtype=object)
    values = [np.asarray(columns[c], dtype=object) for c in names]
    for i in range(n):
        out[i] = ",".join(f"{c}={_text(v[i])}" for c, v in zip(names, values))
    return out


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def slice_report(
    slices: Array, metrics_of: Callable[[Array], dict[str, float]], resamples: int = RESAMPLES, seed: int = 0
) -> dict[str, SliceStat]:
    """``metrics_of(row indices)`` for each slice and for ``resamples`` bootstrap resamples of it."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in sorted(set(slices.tolist())):
        rows = np.flatnonzero(slices == name)
        point = metrics_of(rows)
        draws: dict[str, list[float]] = {k: [] for k in point}
        for _ in range(resamples):
            sample = metrics_of(rows[rng.integers(0, len(rows), len(rows))])
            for k in point:
                if k in sample and np.isfinite(sample[k]):
                    draws[k].append(sample[k])
        low = {k: float(np.percentile(v, 2.5)) if v else point[k] for k, v in draws.items()}
        high = {k: float(np.percentile(v, 97.5)) if v else point[k] for k, v in draws.items()}
        out[name] = SliceStat(len(rows), point, low, high)
    return out


def fairness(truth: Array, predicted: Array, groups: Array, positive: str) -> dict[str, float]:
    """Demographic parity difference and ratio, and equalized odds difference, of the ``positive``
    class across ``groups`` (``truth`` and ``predicted`` as class text)."""
    actual, chosen = np.asarray(truth) == positive, np.asarray(predicted) == positive
    selection, tpr, fpr = [], [], []
    for g in sorted(set(np.asarray(groups, dtype=object).tolist())):
        mine = groups == g
        selection.append(float(np.mean(chosen[mine])))
        pos, neg = mine & actual, mine & ~actual
        tpr.append(float(np.mean(chosen[pos])) if pos.any() else float("nan"))
        fpr.append(float(np.mean(chosen[neg])) if neg.any() else float("nan"))
    return {
        "demographic_parity_difference": _spread(selection),
        "demographic_parity_ratio": float(min(selection) / max(selection)) if max(selection) > 0 else float("nan"),
        "equalized_odds_difference": _spread([_spread(tpr), _spread(fpr)], worst=True),
    }


def _spread(rates: list[float], worst: bool = False) -> float:
    """Largest minus smallest rate over the groups that have one (``worst``: the largest value)."""
    known = [r for r in rates if r == r]
    if not known:
        return float("nan")
    return float(max(known)) if worst else float(max(known) - min(known))
