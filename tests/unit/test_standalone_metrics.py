"""The standalone server's metrics: totals across reload generations, and the Prometheus text
prometheus-client serves from them (read back by prometheus-client's own parser)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from serving.config.server import load_settings
from serving.errors import ConfigError
from serving.standalone.metrics_totals import MetricsTotals
from serving.standalone.prometheus_endpoint import SnapshotCollector
from serving.telemetry.metrics import READY, REQUEST_SECONDS, REQUESTS

OK = {"model": "m", "version": "1", "protocol": "http", "outcome": "ok"}
MV = {"model": "m", "version": "1"}


def samples(totals: dict[str, MetricsTotals]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: [(name, t.snapshot()) for name, t in totals.items()]))
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_counters_never_go_back_across_a_reload_and_gauges_are_the_new_generations() -> None:
    totals = MetricsTotals()
    old = totals.open()
    old.inc(REQUESTS, OK, 3)
    old.set(READY, MV, 1)
    new = totals.open()
    new.set(READY, MV, 1)
    new.inc(REQUESTS, OK, 2)
    old.set(READY, MV, 0)  # the old generation closing: not what the new one serves
    totals.retire(old)
    new.inc(REQUESTS, OK)
    got = samples({"worker-0": totals})
    labels = tuple(sorted({**OK, "worker": "worker-0"}.items()))
    assert got[("ray_serving_requests_total", labels)] == 6
    assert got[("ray_serving_model_ready", tuple(sorted({**MV, "worker": "worker-0"}.items())))] == 1


def test_histograms_are_cumulative_buckets_with_count_and_sum_per_worker() -> None:
    a, b = MetricsTotals(), MetricsTotals()
    labels = {"model": "m", "version": "1", "protocol": "grpc"}
    ma, mb = a.open(), b.open()
    for seconds in (0.0004, 0.003, 0.003, 20.0):
        ma.observe(REQUEST_SECONDS, labels, seconds)
    mb.observe(REQUEST_SECONDS, labels, 0.003)
    got = samples({"worker-0": a, "worker-1": b})

    def bucket(worker: str, le: str) -> float:
        key = tuple(sorted({**labels, "worker": worker, "le": le}.items()))
        return got[("ray_serving_request_duration_seconds_bucket", key)]

    assert [bucket("worker-0", le) for le in ("0.0005", "0.001", "0.005", "10.0", "+Inf")] == [1, 1, 3, 3, 4]
    assert bucket("worker-1", "+Inf") == 1
    count = ("ray_serving_request_duration_seconds_count", tuple(sorted({**labels, "worker": "worker-0"}.items())))
    total = ("ray_serving_request_duration_seconds_sum", tuple(sorted({**labels, "worker": "worker-0"}.items())))
    assert got[count] == 4
    assert got[total] == pytest.approx(20.0064)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"workers": 2}, "workers is a standalone setting"),
        ({"standalone": True, "ray_address": "10.0.0.1:6379"}, "standalone serves without Ray"),
        ({"standalone": True, "ray_dashboard": True}, "standalone serves without Ray"),
        ({"standalone": True, "replicas": {"min": 1, "max": 3}}, "use --workers N"),
        ({"standalone": True, "workers": 0}, "workers"),
    ],
)
def test_standalone_settings_refuse_what_needs_ray(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(**overrides)
    assert message in info.value.message


def test_standalone_names_the_models_whose_replicas_or_gpu_fractions_it_leaves_to_ray_mode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from serving.cli import warn_of_ray_resources

    from models import add_model

    add_model(tmp_path, "spread", versions=(1,), resources={"replicas": 2})
    add_model(tmp_path, "shared", versions=(1,), resources={"num_gpus": 0.5})
    add_model(tmp_path, "plain", versions=(1,))
    with caplog.at_level(logging.WARNING, logger="serving.standalone"):
        warn_of_ray_resources(load_settings(repository=tmp_path, standalone=True))
    warned = {record.getMessage().split()[0] for record in caplog.records}
    assert warned == {"spread", "shared"}
