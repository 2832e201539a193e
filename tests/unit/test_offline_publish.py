"""Recovering after a run killed while it published without a folder exchange (a filesystem
without renameat2): the previous output, set aside as ``<staging>.old``, is put back, never
deleted as stale staging."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs
import pytest

from serving.errors import InvalidInputError
from serving.offline.plan import output_location
from serving.offline.publish import remove_stale_staging, staging_prefix


def make(folder: Path, name: str) -> None:
    folder.mkdir(parents=True)
    (folder / name).write_text(name)


def test_an_output_set_aside_by_a_killed_run_is_put_back(tmp_path: Path) -> None:
    out = tmp_path / "scored"
    staging = Path(f"{staging_prefix(str(out))}1234abcd")
    make(Path(f"{staging}.old"), "previous.parquet")  # killed after moving the output aside...
    make(staging, "new.parquet")  # ... before moving the new one in
    removed = remove_stale_staging(pafs.LocalFileSystem(), str(out))
    assert (out / "previous.parquet").read_text() == "previous.parquet"
    assert removed == [str(staging)] and not staging.exists()


def test_a_set_aside_output_is_deleted_once_the_new_one_is_in_place(tmp_path: Path) -> None:
    out = tmp_path / "scored"
    staging = Path(f"{staging_prefix(str(out))}1234abcd")
    make(out, "new.parquet")  # killed after moving the new one in, before deleting the old one
    make(Path(f"{staging}.old"), "previous.parquet")
    remove_stale_staging(pafs.LocalFileSystem(), str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scored"]
    assert (out / "new.parquet").exists()


@pytest.mark.parametrize("output", ["s3://bucket/x", "gs://bucket/x", "abfs://c/x", "S3://bucket/x"])
def test_object_store_outputs_are_refused_without_touching_the_network(output: str) -> None:
    with pytest.raises(InvalidInputError, match="not supported"):
        output_location(output)


def test_file_uris_and_paths_are_local(tmp_path: Path) -> None:
    fs, path = output_location(f"file://{tmp_path}/out")
    assert isinstance(fs, pafs.LocalFileSystem) and path == f"{tmp_path}/out"
