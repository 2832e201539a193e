"""``serving lineage``, ``serving evaluate`` and ``serving profile``: facts about a version,
written into its ``lineage.yaml`` on disk (no server needed).

Evaluation scores the holdout through the batch path (``offline.job``, the same code as
``serving score``: every row accounted for, a failed row fails the evaluation) and compares
the predictions with the label column. A profile reads the training data through the model's
column mapping, so its features are exactly what the model's input holds online.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from serving.errors import InvalidInputError
from serving.identity import current_user
from serving.lifecycle.drift import as_matrix, feature_names, profile
from serving.lifecycle.evaluation import as_text, classification_metrics, regression_metrics
from serving.lifecycle.lineage import (
    ArtifactRecord,
    DataRecord,
    EvaluationRecord,
    FairnessRecord,
    Lineage,
    LiveEvaluationRecord,
    ProfileRecord,
    SliceRecord,
    file_sha256,
    read_lineage,
    write_lineage,
)
from serving.lifecycle.slices import fairness, slice_names, slice_report
from serving.offline.inputs import resolve_inputs
from serving.offline.mapping import extract_inputs, plan_columns
from serving.offline.scorer import open_version, resolve_version
from serving.prediction_log.joined import TRUTH, labelled_predictions
from serving.prediction_log.records import META_SCHEMA, PARTITION_KEYS
from serving.repository import ModelEntry

Array = np.ndarray[Any, Any]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def data_record(data: list[str]) -> DataRecord:
    """Files, rows and the footer fingerprint of a dataset (what ``serving score`` records)."""
    inputs = resolve_inputs(data)
    return DataRecord(inputs=list(data), fingerprint=inputs.fingerprint(), rows=inputs.rows)


def _version(repository: Path, spec: str) -> tuple[ModelEntry, int, Lineage]:
    if ":" not in spec:
        raise InvalidInputError(f"name the version: MODEL:VERSION, got {spec!r}")
    entry, version = resolve_version(repository, spec)
    return entry, version, read_lineage(entry.version_dir(version)) or Lineage()


def record_lineage(
    repository: Path,
    spec: str,
    *,
    training_data: list[str] | None = None,
    code_revision: str | None = None,
    created_by: str | None = None,
    params: dict[str, Any] | None = None,
) -> Path:
    """Write the artifact's sha256 (and what is given) into the version's lineage, keeping the
    evaluation and profile already there."""
    entry, version, lineage = _version(repository, spec)
    directory = entry.version_dir(version)
    artifact = entry.config.platform.artifact_in(directory)
    if artifact is None:
        raise InvalidInputError(f"{entry.name} is a {entry.config.platform.value}: it has no artifact to record")
    update: dict[str, Any] = {
        "artifact": ArtifactRecord(
            file=artifact.name,
            sha256=file_sha256(artifact),
            files={f: file_sha256(directory / f) for f in entry.config.extra_files},
        ),
        "created_by": created_by or lineage.created_by or current_user(),
        "created_at": lineage.created_at or _now(),
    }
    if training_data:
        update["training_data"] = data_record(training_data)
    if code_revision is not None:
        update["code_revision"] = code_revision
    if params:
        update["params"] = {**lineage.params, **params}
    return write_lineage(entry.version_dir(version), lineage.model_copy(update=update))


def evaluate(
    repository: Path,
    spec: str,
    data: list[str],
    label: str,
    *,
    task: str | None = None,
    executor: str = "auto",
    slice_by: list[tuple[str, ...]] | None = None,
    sensitive: str | None = None,
) -> EvaluationRecord:
    """Score ``data`` with the version, compare with column ``label``, store the metrics (per slice
    of each ``slice_by`` spec too, and the fairness across ``sensitive``'s groups)."""
    from serving.offline import job
    from serving.offline.plan import ScoreJob

    entry, version, lineage = _version(repository, spec)
    slice_by = slice_by or []
    extra = tuple(c for columns in slice_by for c in columns) + ((sensitive,) if sensitive else ())
    with tempfile.TemporaryDirectory(prefix="serving-evaluate-") as tmp:
        out = str(Path(tmp) / "scored")
        job.run(
            ScoreJob(
                repository=repository,
                model=f"{entry.name}:{version}",
                inputs=list(data),
                output=out,
                passthrough=tuple(dict.fromkeys((label, *extra))),
                executor=executor,
                progress=False,
            )
        )
        table = pq.read_table(out)
    found = _predictions(entry, table, label, task, skip=extra)
    record = EvaluationRecord(
        data=data_record(data),
        label=label,
        task=found.kind,
        metrics=found.metrics(),
        evaluated_at=_now(),
        slices=slices_of(found, table, slice_by),
        fairness=fairness_of(found, table, sensitive) if sensitive else None,
    )
    write_lineage(entry.version_dir(version), lineage.model_copy(update={"evaluation": record}))
    return record


def _column(table: pa.Table, name: str) -> Array:
    col = table.column(name).combine_chunks()
    if pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type):
        return np.asarray(col.flatten().to_numpy(zero_copy_only=False)).reshape(len(col), -1)
    return np.asarray(col.to_numpy(zero_copy_only=False))


@dataclass(frozen=True)
class Predictions:
    """A version's answers on labelled rows, ready to be scored on any subset of them."""

    kind: str
    truth: Array
    predicted: Array
    scores: Array | None = None
    classes: Array | None = None

    def metrics(self, rows: Array | None = None) -> dict[str, float]:
        """The metrics on every row, or on ``rows`` (indices, repeats allowed: a bootstrap resample)."""
        truth, predicted, scores = self.truth, self.predicted, self.scores
        if rows is not None:
            truth, predicted = truth[rows], predicted[rows]
            scores = None if scores is None else scores[rows]
        if self.kind == "regression":
            return regression_metrics(truth, predicted)
        assert self.classes is not None
        return classification_metrics(truth, predicted, scores, self.classes)


def _predictions(
    entry: ModelEntry, table: pa.Table, label: str, task: str | None, skip: tuple[str, ...] = ()
) -> Predictions:
    """``skip``: passed-through columns that are not outputs (slices, the sensitive column)."""
    truth = _column(table, label)
    outputs = [(o.name, entry.config.batch.outputs.get(o.name, o.name)) for o in entry.config.outputs or ()]
    if not outputs:  # outputs read from the artifact: every non-passthrough column but ours
        ignored = {label, "model_name", "model_version", *skip}
        outputs = [(c, c) for c in table.column_names if c not in ignored and not c.endswith("_class")]
    kind = task or ("regression" if truth.dtype.kind == "f" else "classification")
    if kind == "regression":
        for _, column in outputs:
            values = _column(table, column)
            if values.dtype.kind == "f" and values.reshape(len(values), -1).shape[1] == 1:
                return Predictions(kind, truth, values.reshape(-1))
        raise InvalidInputError("no output with one number per row to compare with the label (regression)")
    scores = next(
        (v for _, c in outputs if (v := _column(table, c)).dtype.kind == "f" and v.ndim == 2 and v.shape[1] > 1),
        None,
    )
    named = next((v for _, c in outputs if (v := _column(table, c)).ndim == 1 and v.dtype.kind != "f"), None)
    truth = as_text(truth)
    classes = _classes(entry.config.labels, scores, truth)
    if named is not None:  # the model's own class output (a label), as text like the truth
        predicted = as_text(named)
    elif scores is not None:
        predicted = classes[np.argmax(scores, axis=1)]
    else:
        raise InvalidInputError("no class scores or class output to compare with the label")
    return Predictions(kind, truth, predicted, scores, classes)


def _metrics(entry: ModelEntry, table: pa.Table, label: str, task: str | None) -> tuple[dict[str, float], str]:
    found = _predictions(entry, table, label, task)
    return found.metrics(), found.kind


def slices_of(found: Predictions, table: pa.Table, slice_by: list[tuple[str, ...]]) -> list[SliceRecord]:
    """Metrics per slice of each ``slice_by`` spec (its columns crossed), with bootstrap 95 % intervals."""
    records = []
    for columns in slice_by:
        names = slice_names({c: _column(table, c).reshape(-1) for c in columns})
        for name, stat in slice_report(names, found.metrics).items():
            records.append(SliceRecord(slice=name, rows=stat.rows, metrics=stat.metrics, low=stat.low, high=stat.high))
    return records


def fairness_of(found: Predictions, table: pa.Table, sensitive: str) -> FairnessRecord:
    """Demographic parity and equalized odds of a binary classifier across ``sensitive``'s groups.

    Raises:
        InvalidInputError: not a binary classification.
    """
    if found.kind != "classification" or found.classes is None or len(found.classes) != 2:
        raise InvalidInputError("--sensitive needs a binary classifier (two classes): fairness is defined for those")
    groups = slice_names({sensitive: _column(table, sensitive).reshape(-1)})
    positive = str(found.classes[1])
    counts = {str(g).partition("=")[2]: int(np.sum(groups == g)) for g in sorted(set(groups.tolist()))}
    numbers = fairness(found.truth, found.predicted, groups, positive)
    return FairnessRecord(sensitive=sensitive, positive=positive, groups=counts, metrics=numbers)


def _classes(labels: tuple[str, ...] | None, scores: Array | None, truth: Array) -> Array:
    """The class of each score column: model.yaml's labels; else the sorted truth values when
    they are as many as the columns (scikit-learn orders its classes so); else 0..k-1."""
    if labels:
        return np.asarray(labels, dtype=object)
    k = scores.shape[1] if scores is not None else 0
    seen = sorted(set(truth.tolist()))
    numbered = [str(i) for i in range(k)]
    if len(seen) == k and not set(seen) <= set(numbered):
        return np.asarray(seen, dtype=object)
    return np.asarray(numbered, dtype=object)


def profile_version(repository: Path, spec: str, data: list[str]) -> ProfileRecord:
    """Store the training distribution of the version's input features."""
    entry, version, lineage = _version(repository, spec)
    loaded = open_version(entry, version, warmup=False)
    try:
        inputs = resolve_inputs(data)
        table = pq.read_table(
            inputs.paths[0] if len(inputs.paths) == 1 else inputs.base_dir, filesystem=inputs.filesystem
        )
        plan = plan_columns(entry.config.batch, loaded.inputs, loaded.outputs, table.schema)
    finally:
        loaded.unload()
    binding = plan.inputs[0]
    arrays, errors = extract_inputs(table, plan)
    values = as_matrix(arrays[binding.tensor.name][~errors.bad])
    names = list(binding.columns) if binding.stacked else feature_names(binding.tensor.name, values.shape[1])
    record = ProfileRecord(
        data=data_record(data), input=binding.tensor.name, features=profile(values, names), created_at=_now()
    )
    write_lineage(entry.version_dir(version), lineage.model_copy(update={"profile": record}))
    return record


def evaluate_from_log(
    repository: Path, spec: str, log: str, *, since_s: float | None = None, task: str | None = None
) -> LiveEvaluationRecord:
    """The version's metrics on live traffic: its logged answers joined with the labels that came
    back for them (``since_s``: only predictions this recent); stored in the lineage."""
    entry, version, lineage = _version(repository, spec)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=since_s) if since_s is not None else None
    found = labelled_predictions(log, entry.name, version, since)
    if not found.table.num_rows:
        raise InvalidInputError(
            f"no labelled predictions of {entry.name}:{version} in {log}"
            f" ({found.predictions:,} logged answers{'' if since is None else ' in the time range'}, none labelled)"
        )
    outputs = entry.config.outputs
    names = [o.name for o in outputs] if outputs else []
    kept = [c for c in found.table.column_names if c in names or (not names and c not in _LOG_META)]
    columns = {entry.config.batch.outputs.get(c, c): found.table.column(c) for c in kept}
    labels = found.table.column(TRUTH).to_pylist()
    numbers = _as_numbers(labels)
    regression = task == "regression" or (
        task is None and numbers is not None and not all(v.is_integer() for v in numbers)
    )
    truth = pa.array(numbers if regression and numbers is not None else labels)
    metrics, kind = _metrics(entry, pa.table({**columns, TRUTH: truth}), TRUTH, "regression" if regression else task)
    record = LiveEvaluationRecord(
        log=log,
        since=since.isoformat(timespec="seconds") if since else None,
        first=found.first.isoformat(timespec="seconds") if found.first else None,
        last=found.last.isoformat(timespec="seconds") if found.last else None,
        predictions=found.predictions,
        labelled=found.table.num_rows,
        coverage=found.table.num_rows / found.predictions,
        task=kind,
        metrics=metrics,
        evaluated_at=_now(),
    )
    write_lineage(entry.version_dir(version), lineage.model_copy(update={"live_evaluation": record}))
    return record


_LOG_META = {*META_SCHEMA.names, *PARTITION_KEYS, TRUTH}


def _as_numbers(labels: list[Any]) -> list[float] | None:
    try:
        return [float(v) for v in labels]
    except (TypeError, ValueError):
        return None
