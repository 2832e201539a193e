"""A job writes into a staging folder beside its output; only a result whose rows all add up is
renamed into place, with ``_SUCCESS`` in it (the marker Spark and Hadoop tools wait for)."""

from __future__ import annotations

import uuid

import pyarrow.fs as pafs

from serving.offline.manifest import ERRORS_DIR, SUCCESS_NAME


def new_staging(fs: pafs.FileSystem, out_path: str) -> str:
    """A fresh hidden folder next to the output (same filesystem, so publishing is a rename)."""
    parent, _, name = out_path.rstrip("/").rpartition("/")
    staging = f"{parent}/.{name}.staging-{uuid.uuid4().hex[:8]}"
    fs.create_dir(staging, recursive=True)
    return staging


def set_aside(fs: pafs.FileSystem, staging: str, out_path: str) -> str:
    """Move a rejected result to ``<output>.rejected`` (replacing an older one); returns its path."""
    rejected = f"{out_path.rstrip('/')}.rejected"
    if fs.get_file_info(rejected).type != pafs.FileType.NotFound:
        fs.delete_dir(rejected)
    fs.move(staging, rejected)
    return rejected


def publish(fs: pafs.FileSystem, staging: str, out_path: str) -> None:
    """Mark the result complete and rename the staging folder into place (atomic on a local
    filesystem; copy + delete on object stores). An older output is replaced."""
    with fs.open_output_stream(f"{staging}/{SUCCESS_NAME}"):
        pass
    old = None
    if fs.get_file_info(out_path).type != pafs.FileType.NotFound:
        old = f"{staging}.old"
        fs.move(out_path, old)
    fs.move(staging, out_path)
    if old is not None:
        fs.delete_dir(old)


__all__ = ["ERRORS_DIR", "new_staging", "publish", "set_aside"]
