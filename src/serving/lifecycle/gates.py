"""Release gates: may this version become what an alias points to?

``model.yaml``::

    gates:
      require_evaluation: true      # default: no evaluation, no promote
      min: {accuracy: 0.95}         # absolute floors (metrics where higher is better)...
      max: {log_loss: 0.2}          # ...and ceilings (lower is better)
      max_regression: {accuracy: 0.01, log_loss: 0.05}
                                    # worst allowed change against the version the alias
                                    # points to now (in the metric's bad direction)
      max_slice_gap: {accuracy: 0.05}
                                    # worst allowed gap of a slice (evaluate --slice-by) below the
                                    # whole data, judged at the best end of the slice's 95 %
                                    # interval: a small slice's noise cannot fail a release
      min_slice_rows: 30            # smaller slices are reported, not gated
      fairness: {demographic_parity_difference: 0.1, equalized_odds_difference: 0.1}
                                    # ceilings (a floor for demographic_parity_ratio), from
                                    # evaluate --sensitive COLUMN
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serving.lifecycle.evaluation import HIGHER_IS_BETTER
from serving.lifecycle.lineage import EvaluationRecord, Lineage
from serving.lifecycle.slices import FAIRNESS_METRICS, LOWER_IS_FAIRER


class GatesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    require_evaluation: bool = Field(default=True, description="Refuse a promote of a version with no evaluation.")
    min: dict[str, float] = Field(default_factory=dict, description="Metric -> lowest allowed value.")
    max: dict[str, float] = Field(default_factory=dict, description="Metric -> highest allowed value.")
    max_regression: dict[str, float] = Field(
        default_factory=dict, description="Metric -> largest allowed worsening against the alias's current version."
    )
    max_slice_gap: dict[str, float] = Field(
        default_factory=dict,
        description="Metric -> largest allowed gap of a slice below the whole data (at the slice's 95 % bound).",
    )
    min_slice_rows: int = Field(default=30, ge=1, description="Slices with fewer rows are reported, not gated.")
    fairness: dict[str, float] = Field(
        default_factory=dict,
        description="demographic_parity_difference / equalized_odds_difference -> ceiling; "
        "demographic_parity_ratio -> floor.",
    )

    @field_validator("fairness")
    @classmethod
    def _fairness_known(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(FAIRNESS_METRICS))
        if unknown:
            raise ValueError(f"unknown fairness metric(s) {unknown}; they are {list(FAIRNESS_METRICS)}")
        return v

    @field_validator("min", "max", "max_regression", "max_slice_gap")
    @classmethod
    def _known(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(HIGHER_IS_BETTER))
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; metrics are {sorted(HIGHER_IS_BETTER)}")
        return v


def check_gates(
    gates: GatesConfig,
    candidate: Lineage | None,
    current: Lineage | None,
    current_version: int | None,
    no_evaluation: str = "no evaluation: run `serving evaluate MODEL:VERSION --data HOLDOUT --label COLUMN` first",
) -> list[str]:
    """Every gate the candidate misses, each naming the gate and the numbers (empty: it passes);
    ``no_evaluation`` is what is said when the candidate has no evaluation."""
    evaluation = candidate.evaluation if candidate is not None else None
    needs_metrics = bool(gates.min or gates.max or gates.max_regression or gates.max_slice_gap or gates.fairness)
    if evaluation is None:
        if gates.require_evaluation or needs_metrics:
            return [no_evaluation]
        return []
    metrics = evaluation.metrics
    missed = []
    for name, floor in sorted(gates.min.items()):
        value = metrics.get(name)
        if value is None:
            missed.append(f"gate min.{name}: the evaluation has no {name}")
        elif value < floor:
            missed.append(f"gate min.{name}: {value:.4g} < {floor:.4g}")
    for name, ceiling in sorted(gates.max.items()):
        value = metrics.get(name)
        if value is None:
            missed.append(f"gate max.{name}: the evaluation has no {name}")
        elif value > ceiling:
            missed.append(f"gate max.{name}: {value:.4g} > {ceiling:.4g}")
    base = current.evaluation.metrics if current is not None and current.evaluation is not None else None
    for name, allowed in sorted(gates.max_regression.items()):
        value = metrics.get(name)
        if base is None or name not in base:
            continue  # nothing to compare with (first promote, or the current version was never evaluated)
        if value is None:
            missed.append(f"gate max_regression.{name}: the evaluation has no {name}")
            continue
        worse = base[name] - value if HIGHER_IS_BETTER[name] else value - base[name]
        if worse > allowed:
            missed.append(
                f"gate max_regression.{name}: {value:.4g} vs {base[name]:.4g} of version {current_version} "
                f"is {worse:.4g} worse (allowed {allowed:.4g})"
            )
    return missed + _slice_gaps(gates, evaluation) + _fairness(gates, evaluation)


def _slice_gaps(gates: GatesConfig, evaluation: EvaluationRecord) -> list[str]:
    if not gates.max_slice_gap:
        return []
    if not evaluation.slices:
        return ["gate max_slice_gap: the evaluation has no slices: run `serving evaluate ... --slice-by COLUMN`"]
    missed = []
    for name, allowed in sorted(gates.max_slice_gap.items()):
        overall = evaluation.metrics.get(name)
        if overall is None:
            missed.append(f"gate max_slice_gap.{name}: the evaluation has no {name}")
            continue
        for s in evaluation.slices:
            if s.rows < gates.min_slice_rows or name not in s.metrics:
                continue
            gap = overall - s.high[name] if HIGHER_IS_BETTER[name] else s.low[name] - overall
            if gap > allowed:
                missed.append(
                    f"gate max_slice_gap.{name}: slice {s.slice} ({s.rows} rows) has {name} {s.metrics[name]:.4g} "
                    f"(95% interval {s.low[name]:.4g}-{s.high[name]:.4g}) against {overall:.4g} overall: "
                    f"{gap:.4g} worse even at the interval's best end (allowed {allowed:.4g})"
                )
    return missed


def _fairness(gates: GatesConfig, evaluation: EvaluationRecord) -> list[str]:
    if not gates.fairness:
        return []
    if evaluation.fairness is None:
        return ["gate fairness: the evaluation has no fairness numbers: run `serving evaluate ... --sensitive COLUMN`"]
    found = evaluation.fairness
    missed = []
    for name, bound in sorted(gates.fairness.items()):
        value = found.metrics.get(name)
        if value is None or value != value:  # NaN: a group with no positives or negatives
            missed.append(f"gate fairness.{name}: not computable on this data (groups {found.groups})")
        elif value > bound if LOWER_IS_FAIRER[name] else value < bound:
            side = ">" if LOWER_IS_FAIRER[name] else "<"
            missed.append(
                f"gate fairness.{name}: {value:.4g} {side} {bound:.4g} across {found.sensitive} "
                f"(groups {found.groups}; positive class {found.positive!r})"
            )
    return missed


def worst_slice(evaluation: EvaluationRecord | None, min_rows: int) -> str | None:
    """The gated slice furthest below the whole data on the evaluation's main metric (accuracy, or
    r2 for a regression), as one line; None without slices."""
    if evaluation is None or not evaluation.slices:
        return None
    name = "accuracy" if "accuracy" in evaluation.metrics else "r2"
    overall = evaluation.metrics.get(name)
    gated = [s for s in evaluation.slices if s.rows >= min_rows and name in s.metrics]
    if overall is None or not gated:
        return None
    worst = min(gated, key=lambda s: s.metrics[name])
    return (
        f"{worst.slice}: {name} {worst.metrics[name]:.3f} [{worst.low[name]:.3f}, {worst.high[name]:.3f}] "
        f"vs {overall:.3f} overall ({worst.rows:,} rows)"
    )
