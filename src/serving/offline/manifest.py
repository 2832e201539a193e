"""``_manifest.json``: what a scoring job read, with which model, and what it wrote.

Row counts of the outputs are read back from the Parquet footers of the files the job
wrote, not from the job's own bookkeeping, so ``rows_read == rows_scored + rows_failed``
is a check on the files that exist.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from serving.offline.inputs import InputSet

MANIFEST_NAME = "_manifest.json"
SUCCESS_NAME = "_SUCCESS"
RUNS_DIR = "_runs"
ERRORS_DIR = "_errors"
# Failed rows are Parquet named *.parq: readers that list a folder (pandas, pyarrow, Spark) read
# OUTPUT/_errors like any dataset, and a `OUTPUT/**/*.parquet` glob (DuckDB, Polars), which skips
# no folder name, matches only the scored rows.
ERRORS_SUFFIX = ".parq"


@dataclass(frozen=True, slots=True)
class OutputFile:
    path: str
    rows: int
    size: int


def list_outputs(fs: pafs.FileSystem, root: str) -> tuple[list[OutputFile], list[OutputFile]]:
    """(scored files, error files) under a job's output folder, with their row counts."""
    scored: list[OutputFile] = []
    errors: list[OutputFile] = []
    info = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    for i in sorted(info, key=lambda i: i.path):
        rel = os.path.relpath(i.path, root)
        is_error = rel.split("/")[0] == ERRORS_DIR
        if i.type != pafs.FileType.File or not i.path.endswith(ERRORS_SUFFIX if is_error else ".parquet"):
            continue
        with fs.open_input_file(i.path) as f:
            rows = pq.ParquetFile(f).metadata.num_rows
        (errors if is_error else scored).append(OutputFile(rel, rows, i.size))
    return scored, errors


@dataclass
class Manifest:
    model_name: str
    model_version: int
    artifact: str
    artifact_sha256: str
    inputs: InputSet
    scored_files: list[OutputFile]
    error_files: list[OutputFile]
    started_at: dt.datetime
    duration_s: float
    ray_start_s: float
    serving_version: str
    executor: str
    nodes: dict[str, int] = field(default_factory=dict)
    """Rows read per node (Ray node id, or the host name in-process)."""
    settings: dict[str, Any] = field(default_factory=dict)
    file_outputs: dict[str, list[str]] = field(default_factory=dict)
    """Input file path -> the output files (scored and errors) made from it."""
    run: dict[str, Any] = field(default_factory=dict)
    """This run: id, incremental or not, input files scored / kept from earlier runs, rows scored."""

    @property
    def rows_read(self) -> int:
        return self.inputs.rows

    @property
    def rows_scored(self) -> int:
        return sum(f.rows for f in self.scored_files)

    @property
    def rows_failed(self) -> int:
        return sum(f.rows for f in self.error_files)

    @property
    def balanced(self) -> bool:
        return self.rows_read == self.rows_scored + self.rows_failed

    @property
    def error_rate(self) -> float:
        return self.rows_failed / self.rows_read if self.rows_read else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": {
                "name": self.model_name,
                "version": self.model_version,
                "artifact": self.artifact,
                "sha256": self.artifact_sha256,
            },
            "input": {
                "base_dir": self.inputs.base_dir,
                "filesystem": self.inputs.filesystem.type_name,
                "fingerprint": self.inputs.fingerprint(),
                "partition_columns": list(self.inputs.partition_columns),
                "files": [
                    {
                        "path": f.path,
                        "size": f.size,
                        "rows": f.rows,
                        "footer_sha256": f.footer_sha256,
                        "outputs": self.file_outputs.get(f.path, []),
                    }
                    for f in self.inputs.files
                ],
            },
            "rows": {"read": self.rows_read, "scored": self.rows_scored, "failed": self.rows_failed},
            "output": {
                "files": [{"path": f.path, "rows": f.rows, "size": f.size} for f in self.scored_files],
                "errors": [{"path": f.path, "rows": f.rows, "size": f.size} for f in self.error_files],
            },
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "duration_s": round(self.duration_s, 3),
            "rows_per_s": round(self.rows_read / self.duration_s) if self.duration_s > 0 else None,
            "ray_start_s": round(self.ray_start_s, 3),
            "executor": self.executor,
            "rows_per_node": self.nodes,
            "serving_version": self.serving_version,
            "settings": self.settings,
            "run": self.run,
        }

    def write(self, fs: pafs.FileSystem, root: str) -> None:
        """``_manifest.json``, and a copy under ``_runs/`` (the output's history of runs)."""
        text = json.dumps(self.to_dict(), indent=2).encode()
        with fs.open_output_stream(f"{root}/{MANIFEST_NAME}") as f:
            f.write(text)
        stamp = self.started_at.strftime("%Y%m%dT%H%M%SZ")
        fs.create_dir(f"{root}/{RUNS_DIR}", recursive=True)
        with fs.open_output_stream(f"{root}/{RUNS_DIR}/{stamp}-{self.run.get('id', 'run')}.json") as f:
            f.write(text)


def read_manifest(fs: pafs.FileSystem, root: str) -> dict[str, Any] | None:
    """A published output's ``_manifest.json``, or None when there is none."""
    path = f"{root}/{MANIFEST_NAME}"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return dict(json.loads(f.read()))


def read_runs(fs: pafs.FileSystem, root: str) -> list[dict[str, Any]]:
    """Every run recorded under ``_runs/``, oldest first."""
    selector = pafs.FileSelector(f"{root}/{RUNS_DIR}", allow_not_found=True)
    runs = []
    for info in sorted(fs.get_file_info(selector), key=lambda i: i.path):
        if info.path.endswith(".json"):
            with fs.open_input_stream(info.path) as f:
                runs.append(dict(json.loads(f.read())))
    return runs
