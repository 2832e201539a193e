"""Release gates: may this version become what an alias points to?

``model.yaml``::

    gates:
      require_evaluation: true      # default: no evaluation, no promote
      min: {accuracy: 0.95}         # absolute floors (metrics where higher is better)...
      max: {log_loss: 0.2}          # ...and ceilings (lower is better)
      max_regression: {accuracy: 0.01, log_loss: 0.05}
                                    # worst allowed change against the version the alias
                                    # points to now (in the metric's bad direction)
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serving.lifecycle.evaluation import HIGHER_IS_BETTER
from serving.lifecycle.lineage import Lineage


class GatesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    require_evaluation: bool = Field(default=True, description="Refuse a promote of a version with no evaluation.")
    min: dict[str, float] = Field(default_factory=dict, description="Metric -> lowest allowed value.")
    max: dict[str, float] = Field(default_factory=dict, description="Metric -> highest allowed value.")
    max_regression: dict[str, float] = Field(
        default_factory=dict, description="Metric -> largest allowed worsening against the alias's current version."
    )

    @field_validator("min", "max", "max_regression")
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
    needs_metrics = bool(gates.min or gates.max or gates.max_regression)
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
    return missed
