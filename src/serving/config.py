"""Configuration schemas: server settings and the per-model ``model.yaml``.

Everything is validated when it is built: a typo or an out-of-range value fails at
start-up with the file, the key and what is allowed (``load_model_config``).
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from serving.codecs import DATATYPES
from serving.errors import ConfigError
from serving.files import load_yaml
from serving.lifecycle.drift import DriftConfig
from serving.lifecycle.gates import GatesConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Platform(str, enum.Enum):
    """Model formats, with the platform name each reports in metadata."""

    ONNX = "onnxruntime_onnx"
    TORCHSCRIPT = "pytorch_libtorch"

    @property
    def artifact(self) -> str:
        """The file name a version folder must hold."""
        return "model.onnx" if self is Platform.ONNX else "model.pt"


_PLATFORM_ALIASES = {
    "onnx": Platform.ONNX,
    "onnxruntime_onnx": Platform.ONNX,
    "onnx_onnxv1": Platform.ONNX,
    "torchscript": Platform.TORCHSCRIPT,
    "pytorch_torchscript": Platform.TORCHSCRIPT,
    "pytorch_libtorch": Platform.TORCHSCRIPT,
}


class TensorConfig(_Strict):
    """A model input or output."""

    name: str = Field(min_length=1, description="Tensor name as the model knows it.")
    datatype: str = Field(description="OIP datatype, e.g. FP32, INT64, BYTES.")
    shape: tuple[int, ...] = Field(
        description="Dimensions without the batch dimension when max_batch_size > 0; -1 = variable."
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


class DynamicBatchingConfig(_Strict):
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


class VersionPolicy(_Strict):
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


class OnnxOptions(_Strict):
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


class TorchOptions(_Strict):
    """TorchScript execution options."""

    fp16: bool = Field(default=False, description="Run the module in half precision (inputs/outputs stay FP32).")
    pinned_memory: bool = Field(
        default=True, description="On CUDA, copy inputs through pinned host memory (asynchronous copy)."
    )


class InstanceConfig(_Strict):
    """Where and how a model version runs inside a replica."""

    device: Literal["auto", "cpu", "gpu"] = Field(
        default="auto", description="auto: GPU when CUDA is present, CPU otherwise."
    )
    num_threads: NonNegativeInt = Field(
        default=1, description="Intra-op threads of the runtime (0 = the runtime's default)."
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


class ResourcesConfig(_Strict):
    """What one replica reserves for this model (summed over the models it hosts)."""

    replicas: PositiveInt = 1
    num_cpus: float = Field(default=0.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)


class ColumnSource(_Strict):
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


class BatchConfig(_Strict):
    """How ``serving score`` maps Parquet columns to the model (command-line flags override it)."""

    inputs: dict[str, ColumnSource] = Field(
        default_factory=dict, description="Model input name -> its column(s). Omitted: a column named as the input."
    )
    passthrough: tuple[str, ...] = Field(default=(), description="Columns copied to the output as they are (ids).")
    outputs: dict[str, str] = Field(
        default_factory=dict, description="Output tensor -> output column name (default: the tensor's name)."
    )


class ModelConfig(_Strict):
    """The schema of ``<repository>/<model>/model.yaml``."""

    platform: Platform = Field(description="onnx or torchscript (Triton/OIP names accepted too).")
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
        if self.platform is Platform.TORCHSCRIPT and (not self.inputs or not self.outputs):
            raise ValueError("torchscript models must declare inputs and outputs")
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
        raise ConfigError(f"{path}: {format_validation_error(exc)}") from exc


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem: ``key.path: message``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (typo?)"
        lines.append(f"{loc}: {msg}")
    return "; ".join(lines)


MAX_REQUEST_BYTES = 64 * 1024 * 1024
"""Default largest request body (HTTP) and message (gRPC), bytes."""
DRAIN_SECONDS = 10.0
"""Default time a stopping replica gives in-flight requests."""


class ReplicasConfig(_Strict):
    """Replicas of the inference deployment. Every replica serves every model on the server's
    ports (SO_REUSEPORT); autoscaling reads each replica's own in-flight requests and queue depth."""

    min: PositiveInt = Field(
        default=1,
        description="Fewest replicas (the fixed count when max is unset). No scale to zero: a replica "
        "that listens is what receives the load that would wake others.",
    )
    max: PositiveInt | None = Field(default=None, description="Most replicas; set it to autoscale between min and max.")
    target_in_flight: PositiveFloat = Field(
        default=32.0, description="Requests (in flight + queued) per replica the autoscaler aims for."
    )
    upscale_delay_s: NonNegativeFloat = Field(default=3.0, description="Load must stay high this long to add replicas.")
    downscale_delay_s: NonNegativeFloat = Field(default=30.0, description="Load must stay low this long to remove.")
    max_per_node: PositiveInt | None = Field(
        default=None, description="At most this many replicas on one node (1 spreads them over a cluster)."
    )
    surge_percent: int = Field(
        default=25,
        ge=0,
        le=100,
        description="Extra replicas during a rolling update, as a percentage of the count (rounded up): "
        "replacements load and listen before old replicas drain. 0 stops old replicas first, which leaves "
        "a node's ports unanswered while its only replica is replaced.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> ReplicasConfig:
        if self.max is not None and self.max < self.min:
            raise ValueError(f"replicas.max ({self.max}) must be >= replicas.min ({self.min})")
        return self

    @property
    def autoscaling(self) -> bool:
        return self.max is not None


LOOPBACK = ("127.0.0.1", "localhost", "::1")

NO_FILE_CHECKS = {"check_files": False}
"""Validation context for settings written for other machines (``configs/serve.yaml`` names a
cluster's paths): everything is validated but whether the named files exist here."""


def _check_files(info: ValidationInfo) -> bool:
    return not (isinstance(info.context, dict) and info.context.get("check_files") is False)


class TlsConfig(_Strict):
    """TLS on the HTTP and gRPC ports (PEM files, readable on every node)."""

    cert: Path = Field(description="Server certificate chain (PEM).")
    key: Path = Field(description="The certificate's private key (PEM).")
    client_ca: Path | None = Field(
        default=None, description="CA bundle (PEM): clients must present a certificate it signed (mutual TLS)."
    )

    @model_validator(mode="after")
    def _files_exist(self, info: ValidationInfo) -> TlsConfig:
        for what, path in (("tls.cert", self.cert), ("tls.key", self.key), ("tls.client_ca", self.client_ca)):
            if path is not None and _check_files(info) and not path.is_file():
                raise ValueError(f"{what}: {path} does not exist")
        return self


class CorsConfig(_Strict):
    """Cross-origin requests from browser apps (off unless ``allow_origins`` names some)."""

    allow_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed to call the server from a browser: exact (https://app.example.com), "
        "with * wildcards (https://*.example.com), or * for any.",
    )
    allow_methods: list[str] = Field(default_factory=lambda: ["GET", "POST"], description="Methods a preflight allows.")
    allow_headers: list[str] = Field(
        default_factory=lambda: ["content-type", "inference-header-content-length", "authorization", "x-request-id"],
        description="Request headers a preflight allows.",
    )
    max_age_s: NonNegativeInt = Field(default=600, description="How long a browser may cache a preflight answer.")

    @property
    def enabled(self) -> bool:
        return bool(self.allow_origins)


class ServerConfig(_Strict):
    """Every server-wide setting and the checks between them: the one settings model of every
    entry point (``serving serve`` reads it as :class:`ServerSettings`; ``serve run`` /
    ``serve deploy`` validate ``build_app``'s arguments against it)."""

    repository: Path = Field(default=Path("model_repository"), description="Model repository root.")
    host: str = Field(default="127.0.0.1", description="Address the HTTP front end binds.")
    http_port: int = Field(default=8000, ge=1, le=65535)
    grpc_port: int = Field(default=8001, ge=1, le=65535)
    metrics_port: int = Field(
        default=8002, ge=1, le=65535, description="Prometheus endpoint of the local Ray node (Ray's metrics agent)."
    )
    ray_address: str | None = Field(default=None, description="Existing Ray cluster; None starts a local one.")
    max_request_bytes: PositiveInt = Field(
        default=MAX_REQUEST_BYTES, description="Largest request accepted: HTTP body and gRPC message alike."
    )
    grpc_max_concurrent_streams: PositiveInt = Field(
        default=256, description="Concurrent calls one gRPC connection may have open."
    )
    replicas: ReplicasConfig = Field(
        default_factory=lambda: ReplicasConfig(), description="How many replicas serve, fixed or autoscaled."
    )
    drain_seconds: float = Field(
        default=DRAIN_SECONDS,
        ge=0,
        le=300,
        description="How long a stopping replica keeps finishing in-flight requests before it closes connections.",
    )
    num_cpus: PositiveInt | None = Field(default=None, description="CPUs of the local Ray (None: all).")
    cors: CorsConfig = Field(default_factory=lambda: CorsConfig(), description="Browser cross-origin access.")
    api_keys: Path | None = Field(
        default=None,
        description="API keys file (`serving keys create`): every request but health needs a key. Without it the "
        "server is open and binds a loopback address only, unless `insecure`.",
    )
    insecure: bool = Field(default=False, description="Allow binding a non-loopback address without API keys.")
    protect_health: bool = Field(
        default=False,
        description="Health endpoints need a key too (default: open, for load balancers and orchestrator probes).",
    )
    tls: TlsConfig | None = Field(default=None, description="TLS on the HTTP and gRPC ports (off: plain text).")
    state_dir: Path | None = Field(
        default=None,
        description="Where aliases, traffic weights and the audit log live (default <repository>/_serving); "
        "every replica must reach the same folder (on a cluster: a shared filesystem, like the repository).",
    )
    watch_repository: bool = Field(
        default=True,
        description="Load new version folders and unload removed ones without a restart (Triton's poll mode).",
    )
    server_name: str = "serving"
    log_format: Literal["json", "text"] = Field(
        default="json", description="Replica logs: JSON lines with request and trace ids, or plain text."
    )

    @model_validator(mode="after")
    def _keys_or_loopback(self, info: ValidationInfo) -> ServerConfig:
        if self.api_keys is None and not self.insecure and self.host not in LOOPBACK:
            raise ValueError(
                f"host {self.host} without API keys would serve anyone who can reach it: pass --api-keys FILE "
                "(serving keys create), or --insecure to do it anyway"
            )
        if self.protect_health and self.api_keys is None:
            raise ValueError("protect_health needs API keys (api_keys): without keys there is nothing to check")
        if self.api_keys is not None and _check_files(info) and not self.api_keys.is_file():
            raise ValueError(f"API keys file {self.api_keys} does not exist (create one with `serving keys create`)")
        return self

    @model_validator(mode="after")
    def _ports_differ(self) -> ServerConfig:
        if len({self.http_port, self.grpc_port, self.metrics_port}) < 3:
            raise ValueError("http_port, grpc_port and metrics_port must differ")
        return self


class ServerSettings(BaseSettings, ServerConfig):
    """:class:`ServerConfig` from its sources: init arguments > ``SERVING_*`` env > YAML file > defaults."""

    model_config = SettingsConfigDict(env_prefix="SERVING_", env_nested_delimiter="__", extra="forbid", frozen=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls))


def load_settings(path: Path | None = None, **overrides: Any) -> ServerSettings:
    """Build settings from an optional YAML file, the environment and overrides.

    Raises:
        ConfigError: a key or value is not allowed.
    """
    cls: type[ServerSettings] = ServerSettings
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"{path}: settings file not found")

        class _FromFile(ServerSettings):
            model_config = SettingsConfigDict(**{**ServerSettings.model_config, "yaml_file": path})

        cls = _FromFile
    try:
        return cls(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}{format_validation_error(exc)}") from exc
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read settings: {exc}") from exc
