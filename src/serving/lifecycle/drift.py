"""Drift watch: do live inputs still look like the training data?

``serving profile`` stores, per input feature, the training distribution (:func:`profile`):
numeric features as quantile bins (edges and each bin's share), text features as category
shares. The server samples live requests (``sample_rate``), keeps bin counts per time slot
over a sliding window (``window_s``), and turns them into one Population Stability Index per
feature (:func:`psi`). The request path only copies the sampled rows; binning and PSI run
once a second off the request path.
"""

from __future__ import annotations

import random
import time
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from serving.lifecycle.lineage import FeatureProfile

Array = np.ndarray[Any, Any]
BINS = 10
SMOOTH = 1e-4
"""Added to every share before the log, so an empty bin does not make PSI infinite."""
MAX_CATEGORIES = 50
OTHER = "__other__"


class DriftConfig(BaseModel):
    """``model.yaml`` ``drift:``: how the server watches inputs of a version that has a profile."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    sample_rate: float = Field(
        default=0.05, gt=0, le=1, description="Share of requests whose rows are watched (raise it for low traffic)."
    )
    window_s: float = Field(default=300.0, gt=0, description="Sliding window the PSI is computed over, seconds.")
    min_rows: int = Field(
        default=500,
        ge=1,
        description="Rows the window needs before PSI is reported (fewer: sampling noise of ~bins/rows).",
    )


def feature_names(input_name: str, width: int) -> list[str]:
    """Names of the columns of a [N, width] input (a [N] input is one feature)."""
    return [input_name] if width == 1 else [f"{input_name}[{i}]" for i in range(width)]


def as_matrix(values: Array) -> Array:
    """Rows x features: a batch of scalars is one column; trailing dimensions are flattened."""
    return values.reshape(len(values), -1) if values.ndim != 1 else values.reshape(-1, 1)


def profile(values: Array, names: list[str]) -> dict[str, FeatureProfile]:
    """The training distribution of each column of ``values`` (rows x features)."""
    out = {}
    for i, name in enumerate(names):
        col = values[:, i]
        if col.dtype.kind in "OSUb":
            cats, counts = np.unique(col.astype(str), return_counts=True)
            top = np.argsort(-counts)[:MAX_CATEGORIES]
            shares = (counts[top] / counts.sum()).tolist()
            categories = [str(c) for c in cats[top]]
            if len(cats) > MAX_CATEGORIES:
                categories.append(OTHER)
                shares.append(1.0 - float(sum(shares)))
            out[name] = FeatureProfile(kind="categorical", categories=categories, shares=shares)
            continue
        col = col.astype(np.float64)
        col = col[np.isfinite(col)]
        edges = np.unique(np.quantile(col, np.linspace(0, 1, BINS + 1)[1:-1])) if len(col) else np.array([])
        counts = np.bincount(np.searchsorted(edges, col, side="right"), minlength=len(edges) + 1)
        out[name] = FeatureProfile(
            kind="numeric", edges=edges.tolist(), shares=(counts / max(1, counts.sum())).tolist()
        )
    return out


def nbins(feature: FeatureProfile) -> int:
    """Bins of a feature: one per quantile bin, or one per category plus one for unseen ones."""
    return len(feature.edges) + 1 if feature.kind == "numeric" else len(feature.categories) + 1


def bin_counts(feature: FeatureProfile, col: Array) -> Array:
    """How many of ``col``'s values fall in each of the feature's :func:`nbins` bins."""
    if feature.kind == "categorical":
        index = {c: i for i, c in enumerate(feature.categories)}
        unseen = index.get(OTHER, len(feature.categories))
        idx = np.fromiter((index.get(str(v), unseen) for v in col), np.int64, len(col))
        return np.bincount(idx, minlength=nbins(feature))
    values = col.astype(np.float64)
    values = values[np.isfinite(values)]
    return np.bincount(np.searchsorted(np.asarray(feature.edges), values, side="right"), minlength=nbins(feature))


def psi(expected: list[float] | Array, counts: Array) -> float:
    """Population Stability Index of observed ``counts`` against ``expected`` shares (a bin
    missing from ``expected`` is a share of 0): sum((a - e) * ln(a / e)); about 0 when alike,
    above 0.25 by convention a major shift."""
    n = max(len(expected), len(counts))
    e = np.pad(np.asarray(expected, np.float64), (0, n - len(expected))) + SMOOTH
    a = np.pad(counts.astype(np.float64), (0, n - len(counts)))
    a = a / max(1.0, float(a.sum())) + SMOOTH
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


MAX_PENDING = 10_000
"""Sampled requests held between two ticks at most: while the watch is not ticking (its task
died, the loop is stalled) sampling stops instead of holding every request's input."""


class DriftMonitor:
    """One served version's window: :meth:`observe` on the request path (sampling, a copy),
    :meth:`tick` once a second elsewhere (binning, sliding the window, PSI per feature)."""

    SLOTS = 10

    def __init__(self, input_name: str, features: dict[str, FeatureProfile], config: DriftConfig) -> None:
        self.input_name = input_name
        self.names = list(features)
        self.features = [features[n] for n in self.names]
        self._edges = [np.asarray(f.edges, np.float64) for f in self.features]
        self.config = config
        self._pending: list[Array] = []
        self._rng = random.Random()
        self._slot_s = config.window_s / self.SLOTS
        self._slots: list[tuple[float, list[Array], int]] = []  # (start, counts per feature, rows)

    def observe(self, arrays: dict[str, Array]) -> None:
        """On the request path: keep a reference to a sampled request's input (no copy: inputs
        are never written after decoding); everything else happens in :meth:`tick`."""
        if self._rng.random() < self.config.sample_rate and len(self._pending) < MAX_PENDING:
            values = arrays.get(self.input_name)
            if values is not None:
                self._pending.append(values)  # list.append is atomic under the GIL

    def tick(self, now: float | None = None) -> tuple[dict[str, float], int]:
        """Fold in the sampled rows, drop slots older than the window; (PSI per feature, rows in
        the window), PSI empty while the window holds fewer than ``min_rows``."""
        now = time.monotonic() if now is None else now
        # swapped, not locked: an append racing the swap lands in the list taken here
        pending, self._pending = self._pending, []
        width = len(self.names)
        # a shape the profile does not describe (a variable width) is not comparable: left out
        pending = [m for m in map(as_matrix, pending) if m.shape[1] == width]
        if not self._slots or now - self._slots[-1][0] >= self._slot_s:
            self._slots.append((now, [np.zeros(nbins(f), np.int64) for f in self.features], 0))
        self._slots = [s for s in self._slots if now - s[0] < self.config.window_s]
        if pending:
            start, counts, rows = self._slots[-1]
            batch = np.concatenate(pending)
            if batch.dtype.kind in "fiub" and all(f.kind == "numeric" for f in self.features):
                columns = np.ascontiguousarray(batch.T, dtype=np.float64)  # one pass, then contiguous rows
                finite = bool(np.isfinite(columns).all())
                for i, col in enumerate(columns):
                    values = col if finite else col[np.isfinite(col)]
                    counts[i] += np.bincount(
                        np.searchsorted(self._edges[i], values, side="right"), minlength=len(counts[i])
                    )
            else:
                for i, f in enumerate(self.features):
                    counts[i] += bin_counts(f, batch[:, i])
            self._slots[-1] = (start, counts, rows + len(batch))
        rows = sum(s[2] for s in self._slots)
        if rows < self.config.min_rows:
            return {}, rows
        out = {}
        for i, (name, f) in enumerate(zip(self.names, self.features, strict=True)):
            out[name] = psi(f.shares, np.sum([s[1][i] for s in self._slots], axis=0))
        return out, rows
