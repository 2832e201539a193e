"""The prediction log's settings: ``prediction_log:`` in the server settings (every model's
default) and ``log:`` in a model.yaml (the keys it sets win over the server's)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt

from serving.config.strict import Strict

Keep = Literal["inputs", "outputs", "both"]


class PredictionLogConfig(Strict):
    """Which requests are logged, what of them, where to, and how often the log is written."""

    destination: str | None = Field(
        default=None,
        description="A folder or a URI pyarrow writes to (s3://, gs://...). A relative folder is relative to the "
        "server's working directory in the server settings, to the repository root in a model.yaml. None: no log.",
    )
    sample_rate: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Share of requests logged, chosen by request id (a retry with the same id is logged alike).",
    )
    keep: Keep = Field(default="both", description="What of a logged request is kept: inputs, outputs or both.")
    flush_rows: PositiveInt = Field(
        default=10_000,
        description="A file is written once this many rows wait, or a quarter of queue_mb of tensors (fewer, larger "
        "files: a file costs ~1 ms to write, 1 us a row at 1,000 rows).",
    )
    flush_s: PositiveFloat = Field(
        default=5.0, description="...or once the oldest waiting row is this old: what a SIGKILL can lose, at most."
    )
    queue_rows: PositiveInt = Field(
        default=100_000,
        description="Rows held for writing at most, per version; past it (or queue_mb) rows are dropped and counted, "
        "never a request slowed.",
    )
    compression: Literal["lz4", "zstd", "snappy", "none"] = Field(
        default="lz4",
        description="Parquet compression. lz4 costs next to nothing where nothing compresses and still keeps "
        "repeated or sparse inputs small; zstd (zstd_level) writes files 11-25 % smaller for up to 3 us more a row "
        "of 784 floats (bench/log_compression.py); snappy misses rows repeated across a file.",
    )
    zstd_level: int = Field(
        default=1,
        ge=-7,
        le=22,
        description="zstd's level. -1 wrote a row of 784 random floats in 8.0 us instead of 12.9, in 13 % larger "
        "files; on repetitive inputs the time is the same and the files 17-37 % larger.",
    )
    queue_mb: PositiveFloat = Field(
        default=64.0, description="Megabytes of tensors held for writing at most, per version (the memory bound)."
    )

    @property
    def enabled(self) -> bool:
        return self.destination is not None and self.sample_rate > 0

    def merged(self, model: PredictionLogConfig | None, root: Path) -> PredictionLogConfig:
        """This server-wide default with the keys a model.yaml set (a relative model.yaml destination
        is taken from ``root``, the repository)."""
        if model is None:
            return self
        update = {key: getattr(model, key) for key in model.model_fields_set}
        dest = update.get("destination")
        if isinstance(dest, str) and "://" not in dest and not Path(dest).is_absolute():
            update["destination"] = str(root / dest)
        return self.model_copy(update=update)
