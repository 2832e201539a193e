"""Read a Prometheus endpoint the way Prometheus would, summing series over the labels a test ignores."""

from __future__ import annotations

import re
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

Sums = dict[tuple[str, tuple[tuple[str, str], ...]], float]

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def scrape(url: str, prefix: str = "ray_serving_") -> list[tuple[str, dict[str, str], float]]:
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith(prefix)
    ]


def sums(samples: list[tuple[str, dict[str, str], float]], keep: tuple[str, ...]) -> Sums:
    """Samples summed over every label but ``keep`` (replicas, workers, nodes...)."""
    out: Sums = defaultdict(float)
    for name, labels, value in samples:
        out[(name, tuple((k, labels.get(k, "")) for k in keep))] += value
    return dict(out)


def delta(after: Sums, before: Sums) -> Sums:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def settle(read: Callable[[], Sums], quiet_s: float = 3.0, timeout_s: float = 60.0) -> Sums:
    """Read until two reads ``quiet_s`` apart agree (Ray reports to its agent every second)."""
    deadline = time.monotonic() + timeout_s
    last = read()
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = read()
        if now == last:
            return now
        last = now
    raise AssertionError("metrics never settled")


def metric_names_in_configs() -> set[str]:
    """Every ``ray_serving_*`` name the alert rules and the Grafana dashboard query."""
    texts: list[str] = []
    alerts = yaml.safe_load((CONFIGS / "prometheus" / "alerts.yml").read_text())
    texts += [r["expr"] for g in alerts["groups"] for r in g["rules"]]
    texts.append((CONFIGS / "grafana" / "serving.json").read_text())
    return {m for t in texts for m in re.findall(r"\bray_serving_[a-z_]+", t)}


def exported_names(samples: list[tuple[str, dict[str, str], float]]) -> set[str]:
    names = {s[0] for s in samples}
    return names | {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}
