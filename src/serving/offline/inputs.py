"""Find the Parquet files a job reads, and describe them for the manifest.

An input is a file, a folder (searched recursively; hive ``key=value`` folders become
columns), a glob, or a URI pyarrow understands (``file://``, ``s3://``, ``gs://``...).
Files and row counts come from Parquet footers only, so the job knows how many rows it
must account for before it reads any data.
"""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from serving.errors import InvalidInputError


@dataclass(frozen=True, slots=True)
class InputFile:
    path: str
    size: int
    rows: int
    footer_sha256: str
    row_groups: tuple[int, ...] = ()
    """Rows in each row group."""

    def partition_values(self, base_dir: str) -> dict[str, str]:
        """Hive ``key=value`` folders between the base folder and the file."""
        values = {}
        for part in os.path.relpath(os.path.dirname(self.path), base_dir).split("/"):
            key, sep, value = part.partition("=")
            if sep and key:
                values[key] = value
        return values


@dataclass(frozen=True, slots=True)
class InputSet:
    """Every Parquet file of a job, on one filesystem."""

    filesystem: pafs.FileSystem
    files: tuple[InputFile, ...]
    base_dir: str
    schema: pa.Schema
    partition_columns: tuple[str, ...]

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.files]

    def fingerprint(self) -> str:
        """sha256 over each file's path below the base, size and footer (schema, row groups, statistics)."""
        digest = hashlib.sha256()
        for f in sorted(self.files, key=lambda f: f.path):
            digest.update(f"{os.path.relpath(f.path, self.base_dir)}\0{f.size}\0{f.footer_sha256}\n".encode())
        return digest.hexdigest()


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" in uri:
        try:
            fs, path = pafs.FileSystem.from_uri(uri)
            return fs, str(path)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise InvalidInputError(f"input {uri!r}: cannot open its filesystem: {exc}") from exc
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def _expand(fs: pafs.FileSystem, path: str, given: str) -> list[str]:
    if isinstance(fs, pafs.LocalFileSystem) and glob.has_magic(path):
        matches = sorted(glob.glob(path, recursive=True))
        files = [m for p in matches for m in _expand(fs, p, given)] if matches else []
        if not files:
            raise InvalidInputError(f"input {given!r}: the pattern matches no Parquet file")
        return files
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise InvalidInputError(f"input {given!r} does not exist")
    if info.type == pafs.FileType.File:
        return [path]
    selector = pafs.FileSelector(path, recursive=True)
    files = sorted(
        i.path
        for i in fs.get_file_info(selector)
        if i.type == pafs.FileType.File
        and i.path.endswith(".parquet")
        and not any(part.startswith((".", "_")) for part in os.path.relpath(i.path, path).split("/"))
    )
    if not files:
        raise InvalidInputError(f"input {given!r} is a folder with no .parquet file")
    return files


def resolve_inputs(uris: list[str]) -> InputSet:
    """Expand every input and read the footers.

    Raises:
        InvalidInputError: a missing input, no Parquet file, inputs on different filesystems,
            a file that is not Parquet, or files whose schemas differ.
    """
    if not uris:
        raise InvalidInputError("no --input given")
    fs: pafs.FileSystem | None = None
    paths: list[str] = []
    roots: list[str] = []
    for uri in uris:
        this_fs, path = _filesystem(uri)
        if fs is not None and this_fs.type_name != fs.type_name:
            raise InvalidInputError("all inputs must be on one filesystem")
        fs = this_fs
        found = _expand(this_fs, path, uri)
        roots.append(path if len(found) > 1 or found[0] != path else os.path.dirname(path))
        paths.extend(found)
    assert fs is not None
    paths = list(dict.fromkeys(paths))
    base_dir = os.path.commonpath(roots) if len(roots) > 1 else roots[0]
    if glob.has_magic(base_dir):
        base_dir = os.path.dirname(base_dir.split("*")[0].split("?")[0].split("[")[0])
    files, schemas = [], []
    for p in paths:
        try:
            with fs.open_input_file(p) as f:
                meta = pq.ParquetFile(f).metadata
                size = f.size()
                f.seek(max(0, size - 8))
                footer_len = int.from_bytes(f.read(8)[:4], "little")
                f.seek(max(0, size - 8 - footer_len))
                footer = f.read(footer_len)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InvalidInputError(f"input file {p} is not readable Parquet: {exc}") from exc
        schemas.append(meta.schema.to_arrow_schema())
        groups = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
        files.append(InputFile(p, size, meta.num_rows, hashlib.sha256(footer).hexdigest(), groups))
    try:
        schema = pa.unify_schemas(schemas)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InvalidInputError(f"input files have conflicting schemas: {exc}") from exc
    partitions = _hive_columns(paths, base_dir)
    clash = [c for c in partitions if c in schema.names]
    if clash:
        raise InvalidInputError(f"hive partition folders {clash} repeat columns that the files hold")
    return InputSet(fs, tuple(files), base_dir, schema, partitions)


def _hive_columns(paths: list[str], base_dir: str) -> tuple[str, ...]:
    names: dict[str, None] = {}
    for p in paths:
        for part in os.path.relpath(os.path.dirname(p), base_dir).split("/"):
            key, sep, _ = part.partition("=")
            if sep and key:
                names[key] = None
    return tuple(names)
