"""What made a model version: ``<model>/<N>/lineage.yaml``.

Schema (every field optional; unknown keys are refused so a typo is not silently ignored)::

    artifact:                  # checked at load: a mismatch refuses the version
      file: model.onnx
      sha256: 3f1c...
    training_data:             # the same fingerprint ``serving score`` writes in its manifest
      inputs: [data/train.parquet]
      fingerprint: 9b2e...     # sha256 over each file's path, size and Parquet footer
      rows: 120000
    code_revision: 1a2b3c4     # e.g. the training repository's git commit
    created_by: alice
    created_at: "2026-11-30T12:00:00+00:00"
    params: {epochs: 10}       # free-form
    evaluation: {...}          # written by ``serving evaluate``
    profile: {...}             # written by ``serving profile`` (drift watch)

``serving lineage`` writes the artifact and data parts; ``serving evaluate`` and ``serving
profile`` add theirs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.errors import ConfigError, FileReadError
from serving.files import load_yaml

LINEAGE_FILE = "lineage.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArtifactRecord(_Strict):
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    files: dict[str, str] = Field(
        default_factory=dict, description="Other files the version reads (a python model's), name -> sha256."
    )


class DataRecord(_Strict):
    inputs: list[str] = Field(default_factory=list)
    fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$")
    rows: int | None = None


class SliceRecord(_Strict):
    """One slice of the evaluation data: ``col=value[,col=value]``, its rows, metrics and their
    bootstrap 95 % intervals."""

    slice: str
    rows: int
    metrics: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]


class FairnessRecord(_Strict):
    """A binary classifier's fairness across the groups of a sensitive column."""

    sensitive: str
    positive: str
    groups: dict[str, int]
    metrics: dict[str, float]


class EvaluationRecord(_Strict):
    data: DataRecord
    label: str
    task: str = Field(pattern=r"^(classification|regression)$")
    metrics: dict[str, float]
    evaluated_at: str
    slices: list[SliceRecord] = Field(default_factory=list)
    fairness: FairnessRecord | None = None


class LiveEvaluationRecord(_Strict):
    """``serving evaluate --from-log``: the version's metrics on its logged live answers that got labels."""

    log: str
    since: str | None = None
    first: str | None = None
    last: str | None = None
    predictions: int
    labelled: int
    coverage: float
    task: str = Field(pattern=r"^(classification|regression)$")
    metrics: dict[str, float]
    evaluated_at: str


class FeatureProfile(_Strict):
    """One input feature's training distribution: quantile bin edges and the share of rows in
    each bin (numeric), or category shares (categorical)."""

    kind: str = Field(pattern=r"^(numeric|categorical)$")
    edges: list[float] = Field(default_factory=list)
    shares: list[float] = Field(default_factory=list)
    categories: list[str] = Field(default_factory=list)


class ProfileRecord(_Strict):
    data: DataRecord
    input: str = Field(description="The model input the features are the columns of.")
    features: dict[str, FeatureProfile]
    created_at: str


class ConversionRecord(_Strict):
    """How ``serving convert`` made this version from another, and the parity check it passed."""

    from_version: int
    tool: str
    data: DataRecord
    tolerance: float
    max_abs_diff: float
    label_mismatches: int
    converted_at: str


class Lineage(_Strict):
    artifact: ArtifactRecord | None = None
    training_data: DataRecord | None = None
    code_revision: str | None = None
    created_by: str | None = None
    created_at: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    evaluation: EvaluationRecord | None = None
    live_evaluation: LiveEvaluationRecord | None = None
    profile: ProfileRecord | None = None
    conversion: ConversionRecord | None = None


def read_lineage(version_dir: Path) -> Lineage | None:
    """The version's lineage, or None when it has no lineage.yaml.

    Raises:
        ConfigError: the file is not valid YAML or does not match the schema.
    """
    path = version_dir / LINEAGE_FILE
    try:
        doc = load_yaml(path)
    except FileNotFoundError:
        return None
    try:
        return Lineage.model_validate(doc or {})
    except ValidationError as exc:
        raise ConfigError(f"{path} is not valid lineage: {exc}") from exc


def write_lineage(version_dir: Path, lineage: Lineage) -> Path:
    """Write (replace) the version's lineage.yaml atomically."""
    path = version_dir / LINEAGE_FILE
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(
        yaml.safe_dump(lineage.model_dump(mode="json", exclude_none=True), sort_keys=False), encoding="utf-8"
    )
    os.replace(tmp, path)
    return path


def file_sha256(path: Path) -> str:
    """The file's sha256 (hex).

    Raises:
        FileReadError: it cannot be read.
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise FileReadError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return digest.hexdigest()


def verify_artifact(version_dir: Path, artifact: str | None, extra_files: tuple[str, ...] = ()) -> Lineage | None:
    """Read the lineage and check the artifact's sha256 (and the other files') against it.

    Raises:
        ConfigError: invalid lineage, or a file whose sha256 differs from the recorded one.
    """
    lineage = read_lineage(version_dir)
    if lineage is None or lineage.artifact is None:
        return lineage
    record = lineage.artifact
    if artifact is None or record.file != artifact:
        loads = repr(artifact) if artifact is not None else "no artifact file"
        raise ConfigError(f"{version_dir / LINEAGE_FILE}: artifact.file is {record.file!r}, the model loads {loads}")
    _check(version_dir / artifact, record.sha256)
    for name in extra_files:
        if name not in record.files:
            raise ConfigError(f"{version_dir / LINEAGE_FILE}: artifact.files has no sha256 for {name!r}")
        _check(version_dir / name, record.files[name])
    return lineage


def _check(path: Path, recorded: str) -> None:
    actual = file_sha256(path)
    if actual != recorded:
        raise ConfigError(
            f"artifact {path.name} sha256 {actual[:12]}... does not match lineage.yaml "
            f"({recorded[:12]}...): refusing a changed or corrupted artifact"
        )
