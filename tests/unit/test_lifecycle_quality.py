"""Evaluation metrics (against scikit-learn), release gates, lineage validation, PSI and the
drift window: the pure parts, no Ray, no server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as sk

from serving.errors import ConfigError
from serving.lifecycle import drift
from serving.lifecycle.evaluation import classification_metrics, regression_metrics, roc_auc
from serving.lifecycle.gates import GatesConfig, check_gates
from serving.lifecycle.lineage import (
    ArtifactRecord,
    DataRecord,
    EvaluationRecord,
    Lineage,
    file_sha256,
    read_lineage,
    verify_artifact,
    write_lineage,
)

RNG = np.random.default_rng(3)


def test_classification_metrics_match_scikit_learn() -> None:
    truth = RNG.integers(0, 4, 500)
    scores = RNG.random((500, 4))
    scores[np.arange(500), truth] += RNG.random(500)  # better than chance, not perfect
    probs = scores / scores.sum(1, keepdims=True)
    predicted = probs.argmax(1)
    got = classification_metrics(truth.astype(object), predicted.astype(object), probs, np.arange(4, dtype=object))
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(truth, predicted))
    assert got["macro_f1"] == pytest.approx(sk.f1_score(truth, predicted, average="macro"))
    assert got["log_loss"] == pytest.approx(sk.log_loss(truth, probs))
    assert "roc_auc" not in got  # binary only


def test_binary_roc_auc_matches_scikit_learn_ties_included() -> None:
    truth = RNG.integers(0, 2, 400)
    score = np.round(RNG.random(400) * 0.6 + truth * 0.3, 1)  # many ties
    assert roc_auc(truth == 1, score) == pytest.approx(sk.roc_auc_score(truth, score))
    probs = np.stack([1 - score, score], 1)
    got = classification_metrics(
        truth.astype(object), (score > 0.5).astype(int).astype(object), probs, np.array([0, 1], dtype=object)
    )
    assert got["roc_auc"] == pytest.approx(sk.roc_auc_score(truth, score))


def test_regression_metrics_match_scikit_learn() -> None:
    truth = RNG.normal(size=300)
    predicted = truth + RNG.normal(scale=0.3, size=300)
    got = regression_metrics(truth, predicted)
    assert got["rmse"] == pytest.approx(np.sqrt(sk.mean_squared_error(truth, predicted)))
    assert got["mae"] == pytest.approx(sk.mean_absolute_error(truth, predicted))
    assert got["r2"] == pytest.approx(sk.r2_score(truth, predicted))


def evaluated(**metrics: float) -> Lineage:
    data = DataRecord(fingerprint="0" * 64)
    return Lineage(
        evaluation=EvaluationRecord(data=data, label="y", task="classification", metrics=metrics, evaluated_at="now")
    )


def test_gates_name_the_gate_and_the_numbers() -> None:
    gates = GatesConfig(min={"accuracy": 0.9}, max={"log_loss": 0.3}, max_regression={"accuracy": 0.01})
    assert check_gates(gates, None, None, None) == [
        "no evaluation: run `serving evaluate MODEL:VERSION --data HOLDOUT --label COLUMN` first"
    ]
    missed = check_gates(gates, evaluated(accuracy=0.85, log_loss=0.5), None, None)
    assert missed == ["gate min.accuracy: 0.85 < 0.9", "gate max.log_loss: 0.5 > 0.3"]
    regressed = check_gates(gates, evaluated(accuracy=0.93, log_loss=0.2), evaluated(accuracy=0.96), 4)
    assert regressed == ["gate max_regression.accuracy: 0.93 vs 0.96 of version 4 is 0.03 worse (allowed 0.01)"]
    assert check_gates(gates, evaluated(accuracy=0.955, log_loss=0.2), evaluated(accuracy=0.96), 4) == []
    lower_better = GatesConfig(max_regression={"log_loss": 0.05})
    assert check_gates(lower_better, evaluated(log_loss=0.30), evaluated(log_loss=0.2), 1)[0].startswith(
        "gate max_regression.log_loss"
    )
    assert check_gates(GatesConfig(require_evaluation=False), None, None, None) == []


def test_gates_refuse_unknown_metrics() -> None:
    with pytest.raises(ValueError, match="unknown metric"):
        GatesConfig(min={"acuracy": 0.9})


def test_lineage_is_validated_and_the_artifact_checked(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"weights")
    assert verify_artifact(tmp_path, "model.onnx") is None  # no lineage: nothing to check
    write_lineage(
        tmp_path,
        Lineage(
            artifact=ArtifactRecord(file="model.onnx", sha256=file_sha256(tmp_path / "model.onnx")),
            code_revision="abc",
            params={"lr": 0.1},
        ),
    )
    assert verify_artifact(tmp_path, "model.onnx") == read_lineage(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"other weights")
    with pytest.raises(ConfigError, match="does not match lineage.yaml"):
        verify_artifact(tmp_path, "model.onnx")
    (tmp_path / "lineage.yaml").write_text("artefact: {file: model.onnx}\n")
    with pytest.raises(ConfigError, match="not valid lineage"):
        read_lineage(tmp_path)
    (tmp_path / "lineage.yaml").write_text("artifact: {file: model.onnx, sha256: nothex}\n")
    with pytest.raises(ConfigError, match="not valid lineage"):
        read_lineage(tmp_path)


def test_psi_is_near_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    train = RNG.normal(size=(20_000, 3))
    features = drift.profile(train, ["a", "b", "c"])
    same = RNG.normal(size=(5_000, 3))
    shifted = RNG.normal(loc=1.0, size=(5_000, 3))
    for i, f in enumerate(features.values()):
        assert drift.psi(f.shares, drift.bin_counts(f, same[:, i])) < 0.02
        assert drift.psi(f.shares, drift.bin_counts(f, shifted[:, i])) > 0.25


def test_categorical_profiles_count_unseen_categories_as_drift() -> None:
    train = np.array([["red"], ["blue"]] * 500, dtype=object)
    feature = drift.profile(train, ["colour"])["colour"]
    assert feature.kind == "categorical" and sorted(feature.categories) == ["blue", "red"]
    assert drift.psi(feature.shares, drift.bin_counts(feature, np.array(["red", "blue"] * 50))) < 0.01
    assert drift.psi(feature.shares, drift.bin_counts(feature, np.array(["green"] * 100))) > 1.0


def test_the_window_samples_waits_for_enough_rows_and_forgets_old_slots() -> None:
    features = drift.profile(RNG.normal(size=(10_000, 2)), ["x[0]", "x[1]"])
    monitor = drift.DriftMonitor("x", features, drift.DriftConfig(sample_rate=1.0, window_s=10, min_rows=200))
    monitor.observe({"x": RNG.normal(size=(100, 2)).astype(np.float32)})
    assert monitor.tick(now=0.0) == ({}, 100)  # fewer than min_rows: no PSI yet
    monitor.observe({"x": RNG.normal(size=(200, 2)).astype(np.float32)})
    scores, rows = monitor.tick(now=1.0)
    assert rows == 300 and max(scores.values()) < 0.15  # sampling noise of 300 rows in 10 bins: ~0.03
    monitor.observe({"x": RNG.normal(loc=2.0, size=(1000, 2)).astype(np.float32)})
    scores, rows = monitor.tick(now=12.0)  # the first slots left the window
    assert rows == 1000 and min(scores.values()) > 0.25
    monitor.observe({"x": np.zeros((5, 3), np.float32)})  # a shape the profile does not describe
    assert monitor.tick(now=12.5)[1] == 1000


def test_sampling_keeps_about_the_sample_rate() -> None:
    features = drift.profile(RNG.normal(size=(100, 1)), ["v"])
    monitor = drift.DriftMonitor("v", features, drift.DriftConfig(sample_rate=0.1, min_rows=1))
    for _ in range(5000):
        monitor.observe({"v": np.zeros((1, 1), np.float32)})
    rows = monitor.tick(now=0.0)[1]
    assert 350 < rows < 650


def test_sampling_stops_when_nobody_ticks_the_monitor() -> None:
    """A dead or stalled watch must not make the request path hold every sampled input."""
    features = drift.profile(np.random.default_rng(0).normal(size=(500, 2)), ["a", "b"])
    monitor = drift.DriftMonitor("x", features, drift.DriftConfig(sample_rate=1.0, min_rows=1))
    row = {"x": np.zeros((1, 2))}
    for _ in range(drift.MAX_PENDING + 500):
        monitor.observe(row)
    _, rows = monitor.tick()
    assert rows == drift.MAX_PENDING
