"""The server-wide settings: :class:`ServerConfig` (fields and the checks between them, shared by
every entry point) and :class:`ServerSettings` (the same, read from init arguments, ``SERVING_*``
environment variables and a YAML file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
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

from serving.config.prediction_log import PredictionLogConfig
from serving.config.strict import Strict, format_validation_error
from serving.errors import ConfigError

MAX_REQUEST_BYTES = 64 * 1024 * 1024
"""Default largest request body (HTTP) and message (gRPC), bytes."""
DRAIN_SECONDS = 10.0
"""Default time a stopping replica gives in-flight requests."""


class ReplicasConfig(Strict):
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


class TlsConfig(Strict):
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


class CorsConfig(Strict):
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


class ServerConfig(Strict):
    """Every server-wide setting and the checks between them: the one settings model of every
    entry point (``serving serve`` reads it as :class:`ServerSettings`; ``serve run`` /
    ``serve deploy`` validate ``build_app``'s arguments against it)."""

    repository: Path = Field(default=Path("model_repository"), description="Model repository root.")
    host: str = Field(default="127.0.0.1", description="Address the HTTP front end binds.")
    http_port: int = Field(default=8000, ge=1, le=65535)
    grpc_port: int = Field(default=8001, ge=1, le=65535)
    metrics_port: int = Field(
        default=8002,
        ge=1,
        le=65535,
        description="Prometheus endpoint: the local Ray node's metrics agent, or the standalone server's own.",
    )
    ray_address: str | None = Field(default=None, description="Existing Ray cluster; None starts a local one.")
    ray_dashboard: bool = Field(
        default=False,
        description="Start a local Ray with its dashboard (port 8265) and autoscaler monitor (`ray status`); off: "
        "neither process runs.",
    )
    standalone: bool = Field(
        default=False,
        description="Serve without Ray: one process (or `workers` processes on the same ports under a supervisor).",
    )
    workers: PositiveInt = Field(
        default=1, description="Standalone server processes sharing the ports (SO_REUSEPORT); a dead one is restarted."
    )
    max_request_bytes: PositiveInt = Field(
        default=MAX_REQUEST_BYTES, description="Largest request accepted: HTTP body and gRPC message alike."
    )
    grpc_max_concurrent_streams: PositiveInt = Field(
        default=256, description="Concurrent calls one gRPC connection may have open."
    )
    grpc_frontend: Literal["auto", "compiled", "aio"] = Field(
        default="auto",
        description="gRPC front end: `compiled` (the C++ extension `make` builds: grpc++ hands Python many calls "
        "per wake-up), `aio` (grpc.aio, one coroutine per call), or `auto` (compiled where it is built).",
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
    prediction_log: PredictionLogConfig = Field(
        default_factory=lambda: PredictionLogConfig(),
        description="The prediction log every model has unless its model.yaml says otherwise (log:).",
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
    def _standalone_alone(self) -> ServerConfig:
        if not self.standalone:
            if self.workers != 1:
                raise ValueError("workers is a standalone setting: add --standalone (Ray mode: --replicas)")
            return self
        if self.ray_address or self.ray_dashboard:
            raise ValueError(
                "standalone serves without Ray: drop the Ray address and dashboard (--address, RAY_ADDRESS, --ray-dashboard)"
            )
        if self.replicas.max is not None or self.replicas.min != 1:
            raise ValueError("standalone has no replicas or autoscaling (Ray mode does): use --workers N")
        return self

    @field_validator("prediction_log")
    @classmethod
    def _absolute_log_folder(cls, v: PredictionLogConfig) -> PredictionLogConfig:
        """A relative log folder is the working directory's here, where the command runs, not a replica's."""
        dest = v.destination
        if dest is None or "://" in dest or Path(dest).is_absolute():
            return v
        return v.model_copy(update={"destination": str(Path(dest).resolve())})

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
        raise ConfigError(f"{where}{format_validation_error(exc, ServerSettings)}") from exc
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read settings: {exc}") from exc
