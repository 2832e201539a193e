"""The schema of one model's ``model.yaml`` (platform, tensors, batching, instances, versions,
runtime options, batch-scoring columns, drift and gates) and :func:`load_model_config`."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from serving.codecs import DATATYPES
from serving.config.prediction_log import PredictionLogConfig
from serving.config.strict import Strict, format_validation_error
from serving.errors import ConfigError
from serving.files import load_yaml
from serving.lifecycle.drift import DriftConfig
from serving.lifecycle.gates import GatesConfig


class Platform(str, enum.Enum):
    """Model formats, with the platform name each reports in metadata."""

    ONNX = "onnxruntime_onnx"
    TORCHSCRIPT = "pytorch_libtorch"
    PYTHON = "python"
    SKLEARN = "sklearn"
    XGBOOST = "xgboost"
    LIGHTGBM = "lightgbm"
    PIPELINE = "pipeline"

    @property
    def artifacts(self) -> tuple[str, ...]:
        """The file names a version folder may hold, in order of preference (none for a pipeline,
        whose version folder may be empty: its steps are in model.yaml)."""
        return _ARTIFACTS[self]

    @property
    def artifact(self) -> str:
        """How the artifact is named in messages: its file name, or the choices."""
        return " or ".join(self.artifacts) or "a version folder"

    def artifact_in(self, version_dir: Path) -> Path | None:
        """The artifact file this version folder holds (None: none; a pipeline's version has none)."""
        for name in self.artifacts:
            if (version_dir / name).is_file():
                return version_dir / name
        return None

    def has_version(self, version_dir: Path) -> bool:
        """Whether ``version_dir`` is a version of this platform: it holds an artifact (any folder, for a pipeline)."""
        return version_dir.is_dir() and (not self.artifacts or self.artifact_in(version_dir) is not None)


_ARTIFACTS = {
    Platform.ONNX: ("model.onnx",),
    Platform.TORCHSCRIPT: ("model.pt",),
    Platform.PYTHON: ("model.py",),
    Platform.SKLEARN: ("model.joblib", "model.pkl", "model.onnx"),
    Platform.XGBOOST: ("model.json", "model.ubj", "model.onnx"),
    Platform.LIGHTGBM: ("model.txt", "model.onnx"),
    Platform.PIPELINE: (),
}

TABULAR = frozenset({Platform.SKLEARN, Platform.XGBOOST, Platform.LIGHTGBM})
"""Platforms that load a trained estimator and need no code (``runtime.tabular``)."""

_PLATFORM_ALIASES = {
    "onnx": Platform.ONNX,
    "onnxruntime_onnx": Platform.ONNX,
    "onnx_onnxv1": Platform.ONNX,
    "torchscript": Platform.TORCHSCRIPT,
    "pytorch_torchscript": Platform.TORCHSCRIPT,
    "pytorch_libtorch": Platform.TORCHSCRIPT,
    "python": Platform.PYTHON,
    "sklearn": Platform.SKLEARN,
    "scikit-learn": Platform.SKLEARN,
    "xgboost": Platform.XGBOOST,
    "lightgbm": Platform.LIGHTGBM,
    "pipeline": Platform.PIPELINE,
    "ensemble": Platform.PIPELINE,
}


class TensorConfig(Strict):
    """A model input or output."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(min_length=1, description="Tensor name as the model knows it.")
    datatype: str = Field(description="OIP datatype, e.g. FP32, INT64, BYTES.")
    shape: tuple[int, ...] = Field(
        description="Dimensions without the batch dimension when max_batch_size > 0; -1 = variable."
    )
    source: str | None = Field(
        default=None,
        alias="from",
        description="A pipeline's output only: the step output it is, as STEP.OUTPUT.",
    )

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, v: str) -> str:
        if v not in DATATYPES:
            raise ValueError(f"unknown datatype {v!r}; allowed: {', '.join(DATATYPES)}")
        return v

    @field_validator("shape")
    @classmethod
    def _dims(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(d < -1 or d == 0 for d in v):
            raise ValueError(f"dimensions must be positive or -1 (variable), got {list(v)}")
        return v


class DynamicBatchingConfig(Strict):
    """How concurrent requests are combined into one model execution."""

    max_queue_delay_ms: float = Field(
        default=0.0,
        ge=0,
        le=10_000,
        description=(
            "Longest the oldest request waits for its batch to fill. 0 (Triton's default): run what is "
            "queued as soon as the model is free; requests that arrive while it runs form the next batch."
        ),
    )
    max_queue_size: PositiveInt = Field(
        default=1024, description="Requests waiting per model version; beyond it requests get 503/UNAVAILABLE."
    )
    adaptive: bool = Field(
        default=False,
        description=(
            "Wait up to max_queue_delay_ms only while waiting finds company: after a wait that gathered no "
            "other request, the next batches run at once (a lone client does not pay the delay), and "
            "waiting is tried again every few batches."
        ),
    )


class VersionPolicy(Strict):
    """Which versions are served (Triton semantics): latest N, all, or a list."""

    latest: PositiveInt | None = None
    all: bool = False
    specific: tuple[PositiveInt, ...] | None = None

    @model_validator(mode="after")
    def _one_choice(self) -> VersionPolicy:
        chosen = sum([self.latest is not None, self.all, self.specific is not None])
        if chosen > 1:
            raise ValueError("choose one of latest, all, specific")
        if self.specific is not None and not self.specific:
            raise ValueError("specific needs at least one version")
        return self

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve, newest first."""
        newest_first = sorted(available, reverse=True)
        if self.all:
            return newest_first
        if self.specific is not None:
            return [v for v in newest_first if v in self.specific]
        return newest_first[: self.latest or 1]


ProviderName = Literal["tensorrt", "cuda", "cpu"]
ProviderOptionValue = str | int | float | bool


class OnnxOptions(Strict):
    """onnxruntime execution providers and how inputs reach them."""

    providers: tuple[ProviderName, ...] = Field(
        default=("cuda", "cpu"),
        description=(
            "Preference order on a GPU device; ones this onnxruntime build lacks are skipped with a log "
            "line, and CPU always comes last. Add tensorrt first to use TensorRT where installed."
        ),
    )
    provider_options: dict[ProviderName, dict[str, ProviderOptionValue]] = Field(
        default_factory=dict,
        description="Options per provider, e.g. cuda: {device_id: 0}, tensorrt: {trt_fp16_enable: true}.",
    )
    io_binding: bool = Field(
        default=False,
        description="Run through onnxruntime I/O binding (outputs allocated on the device, copied back once).",
    )


class TorchOptions(Strict):
    """TorchScript execution options."""

    fp16: bool = Field(default=False, description="Run the module in half precision (inputs/outputs stay FP32).")
    pinned_memory: bool = Field(
        default=True, description="On CUDA, copy inputs through pinned host memory (asynchronous copy)."
    )


class InstanceConfig(Strict):
    """Where and how a model version runs inside a replica."""

    device: Literal["auto", "cpu", "gpu"] = Field(
        default="auto", description="auto: GPU when CUDA is present, CPU otherwise."
    )
    num_threads: NonNegativeInt = Field(
        default=1, description="Intra-op threads of the runtime (0 = the runtime's default)."
    )
    count: PositiveInt = Field(
        default=1,
        description=(
            "Worker threads running this version's batches at the same time, each with num_threads intra-op "
            "threads (Triton's instance_group count). Above 1, the model's predict is called from that many "
            "threads at once: onnxruntime, TorchScript and the tabular runtimes allow it; a python model must."
        ),
    )
    warmup: bool = Field(
        default=True, description="Run zero-filled batches at load so the first request is not the slow one."
    )
    warmup_batch_sizes: tuple[PositiveInt, ...] | None = Field(
        default=None, description="Batch sizes to warm up (default: 1 and max_batch_size, at most 1024)."
    )
    onnx: OnnxOptions = OnnxOptions()
    torch: TorchOptions = TorchOptions()
    inline_below_ms: float = Field(
        default=0.5,
        ge=0,
        description=(
            "Run batches on the replica's event loop instead of a worker thread while executions "
            "take less than this (0: always a worker thread)."
        ),
    )
    execution_timeout_s: PositiveFloat | None = Field(
        default=60.0,
        description="A batch running longer than this fails its requests (503), and the version is reloaded "
        "(a fresh model instance on a fresh worker thread; the stuck thread is abandoned). None: no bound.",
    )


class ResourcesConfig(Strict):
    """What one replica reserves for this model (summed over the models it hosts)."""

    replicas: PositiveInt = 1
    num_cpus: float = Field(default=0.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)


class ColumnSource(Strict):
    """Where a model input comes from in a Parquet table: exactly one of ``column`` or ``columns``."""

    column: str | None = Field(
        default=None, description="One column: a list (or fixed-size list) per row, or a scalar for a 1-value input."
    )
    columns: tuple[str, ...] | None = Field(
        default=None, description="Several scalar columns stacked, in this order, into one feature vector."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ColumnSource:
        if (self.column is None) == (self.columns is None):
            raise ValueError("give exactly one of column (a list column) or columns (scalar columns, in order)")
        if self.columns is not None and not self.columns:
            raise ValueError("columns needs at least one column")
        return self

    @property
    def names(self) -> tuple[str, ...]:
        return (self.column,) if self.column is not None else tuple(self.columns or ())


class BatchConfig(Strict):
    """How ``serving score`` maps Parquet columns to the model (command-line flags override it)."""

    inputs: dict[str, ColumnSource] = Field(
        default_factory=dict, description="Model input name -> its column(s). Omitted: a column named as the input."
    )
    passthrough: tuple[str, ...] = Field(default=(), description="Columns copied to the output as they are (ids).")
    outputs: dict[str, str] = Field(
        default_factory=dict, description="Output tensor -> output column name (default: the tensor's name)."
    )


class PythonOptions(Strict):
    """A ``platform: python`` version: the class its ``model.py`` defines, and what else it reads."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    class_name: str = Field(
        default="Model", alias="class", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="The class model.py defines."
    )
    files: tuple[str, ...] = Field(
        default=(),
        description="Other files of the version folder the code reads (weights, vocabularies): the lineage's "
        "sha256 covers them with model.py.",
    )

    @field_validator("files")
    @classmethod
    def _inside(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            if not name or name.startswith("/") or ".." in Path(name).parts:
                raise ValueError(f"{name!r}: files are paths inside the version folder")
        return v


class StepConfig(Strict):
    """One step of a ``platform: pipeline`` model: a repository model, its inputs wired by name,
    and when it runs."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$", description="The step's name (errors and metrics use it).")
    model: str = Field(
        min_length=1,
        description="MODEL (its routed version), MODEL:VERSION or MODEL@ALIAS (follows promotions).",
    )
    inputs: dict[str, str] = Field(
        description="Step input -> where it comes from: a pipeline input's name, or STEP.OUTPUT of an earlier step."
    )
    when: str | None = Field(
        default=None,
        description="Run the step only for rows where this holds, e.g. 'max(small.probabilities) < 0.6' "
        "(a comparison of an input or STEP.OUTPUT, optionally through max/min/sum, with a number or a string).",
    )
    otherwise: dict[str, str | float | int | bool] = Field(
        default_factory=dict,
        description="For rows the step skips: each output used later -> a value, or STEP.OUTPUT of another step.",
    )


class ModelConfig(Strict):
    """The schema of ``<repository>/<model>/model.yaml``."""

    platform: Platform = Field(
        description="onnx, torchscript, python, sklearn, xgboost, lightgbm or pipeline (Triton/OIP names accepted too)."
    )
    max_batch_size: NonNegativeInt = Field(
        default=0, description="0: inputs carry no batch dimension and requests run one at a time."
    )
    inputs: tuple[TensorConfig, ...] | None = Field(
        default=None, description="Omit for ONNX to read them from the model (Triton auto-complete)."
    )
    outputs: tuple[TensorConfig, ...] | None = None
    dynamic_batching: DynamicBatchingConfig = DynamicBatchingConfig()
    version_policy: VersionPolicy = VersionPolicy()
    instance: InstanceConfig = InstanceConfig()
    resources: ResourcesConfig = ResourcesConfig()
    labels: tuple[str, ...] | None = Field(default=None, description="Class names of a classifier's output.")
    batch: BatchConfig = BatchConfig()
    gates: GatesConfig = Field(
        default_factory=lambda: GatesConfig(), description="Release gates `serving promote` checks."
    )
    drift: DriftConfig = Field(
        default_factory=lambda: DriftConfig(), description="Live input drift watch (for versions with a profile)."
    )
    description: str = ""
    python: PythonOptions = Field(
        default_factory=lambda: PythonOptions(), description="platform python: the class and the files it reads."
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="platform python: free-form values handed to the model's constructor."
    )
    steps: tuple[StepConfig, ...] = Field(default=(), description="platform pipeline: its steps, in order.")
    log: PredictionLogConfig | None = Field(
        default=None, description="The prediction log of this model: the keys set here win over the server's."
    )

    @property
    def extra_files(self) -> tuple[str, ...]:
        """Files besides the artifact that the version's lineage covers (a python model's ``files``)."""
        return self.python.files if self.platform is Platform.PYTHON else ()

    @field_validator("platform", mode="before")
    @classmethod
    def _platform_alias(cls, v: Any) -> Any:
        if isinstance(v, str) and v in _PLATFORM_ALIASES:
            return _PLATFORM_ALIASES[v]
        if isinstance(v, str):
            raise ValueError(f"unknown platform {v!r}; allowed: {', '.join(_PLATFORM_ALIASES)}")
        return v

    @model_validator(mode="after")
    def _io_declared(self) -> ModelConfig:
        declares = {Platform.TORCHSCRIPT, Platform.PYTHON, Platform.PIPELINE}
        if self.platform in declares and (not self.inputs or not self.outputs):
            raise ValueError(f"platform {self.platform.value} models must declare inputs and outputs")
        if self.platform in TABULAR | {Platform.PIPELINE} and not self.max_batch_size:
            raise ValueError(f"platform {self.platform.value} models take batches of rows: set max_batch_size > 0")
        if self.platform is Platform.PIPELINE:
            if any(t.source is not None for t in self.inputs or ()):
                raise ValueError("from: is for a pipeline's outputs, not its inputs")
            if not self.steps:
                raise ValueError("a pipeline needs steps")
            unsourced = [t.name for t in self.outputs or () if t.source is None]
            if unsourced:
                raise ValueError(f"pipeline outputs {unsourced} need from: STEP.OUTPUT")
            names = [s.name for s in self.steps]
            if len(names) != len(set(names)):
                raise ValueError(f"duplicate step names: {names}")
        elif self.steps:
            raise ValueError("steps are for platform pipeline")
        elif any(t.source is not None for t in (*(self.inputs or ()), *(self.outputs or ()))):
            raise ValueError("from: is for the outputs of platform pipeline")
        names = [t.name for t in self.inputs or ()]
        if len(names) != len(set(names)):
            raise ValueError(f"duplicate input names: {names}")
        names = [t.name for t in self.outputs or ()]
        if len(names) != len(set(names)):
            raise ValueError(f"duplicate output names: {names}")
        if self.dynamic_batching.max_queue_size < 1:
            raise ValueError("dynamic_batching.max_queue_size must be >= 1")
        return self


def load_model_config(path: Path) -> ModelConfig:
    """Read and validate one ``model.yaml``.

    Raises:
        ConfigError: unreadable YAML or a schema violation, naming file and key.
    """
    try:
        raw = load_yaml(path) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {format_validation_error(exc, ModelConfig)}") from exc
