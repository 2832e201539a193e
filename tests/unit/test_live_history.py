from __future__ import annotations

import itertools
from typing import Any

from serving.telemetry.live import History


def summary(t: float, requests: float = 0.0) -> dict[str, Any]:
    return {
        "time": t,
        "latency_bounds": [0.1],
        "models": [{"requests": requests}],
        "errors": [{"x": 1}],
        "in_flight": 2,
    }


def test_the_history_keeps_one_summary_per_interval_for_the_window_without_errors() -> None:
    history = History(keep_s=60.0, every_s=5.0)
    for t in range(0, 200):  # one a second, for 200 s
        history.add(summary(float(t), requests=float(t)))
    items = history.items()
    times = [item["time"] for item in items]
    assert times[-1] == 195.0 and times[0] >= 195.0 - 60.0
    assert all(b - a >= 4.5 for a, b in itertools.pairwise(times))
    assert all(set(item) == {"time", "latency_bounds", "models"} for item in items)  # no errors, no payloads
    assert items[-1]["models"] == [{"requests": 195.0}]
