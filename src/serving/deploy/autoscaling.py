"""Autoscaling from the replicas' own load.

Serve's request router is not on the request path (each replica serves its own ports), so
Serve's built-in "ongoing requests" metric sees nothing. Each replica reports its requests
in flight and queued through ``record_autoscaling_stats``; this policy sizes the
deployment so that each replica carries about ``target_in_flight`` of them. Serve applies
min/max replicas and the up/down-scale delays around it (``_apply_autoscaling_config``).
"""

from __future__ import annotations

import math
from typing import Any

IN_FLIGHT = "in_flight"
QUEUED = "queued"


def desired_replicas(load_per_replica: list[float], target_in_flight: float, current: int) -> int:
    """Replicas needed for the summed load at ``target_in_flight`` each (never 0 while
    any replica runs: a listening replica is what receives the traffic that wakes others)."""
    if not load_per_replica:
        return max(current, 1)
    return max(1, math.ceil(sum(load_per_replica) / target_in_flight))


class InFlightPolicy:
    """Class-callable policy (``policy_kwargs`` reach ``__init__``)."""

    def __init__(self, target_in_flight: float) -> None:
        if target_in_flight <= 0:
            raise ValueError("target_in_flight must be > 0")
        self.target_in_flight = target_in_flight

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        metrics = ctx.aggregated_metrics or {}
        in_flight: dict[Any, float] = metrics.get(IN_FLIGHT, {})
        queued: dict[Any, float] = metrics.get(QUEUED, {})
        loads = [in_flight.get(r, 0.0) + queued.get(r, 0.0) for r in set(in_flight) | set(queued)]
        return desired_replicas(loads, self.target_in_flight, ctx.current_num_replicas), {}
