from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from serving.errors import InvalidInputError
from serving.offline.incremental import plan_increment
from serving.offline.inputs import InputFile, InputSet
from serving.offline.plan import render_output


def inputs(*files: tuple[str, int, str]) -> InputSet:
    return InputSet(
        pafs.LocalFileSystem(),
        tuple(InputFile(f"/lake/{p}", size, 10, sha) for p, size, sha in files),
        "/lake",
        pa.schema([("x", pa.float32())]),
        (),
    )


def previous(*files: tuple[str, int, str, list[str]], version: int = 2, sha: str = "s") -> dict[str, Any]:
    return {
        "model": {"name": "m", "version": version, "sha256": sha},
        "input": {
            "files": [{"path": f"/lake/{p}", "size": size, "footer_sha256": f, "outputs": o} for p, size, f, o in files]
        },
    }


def test_new_changed_unchanged_and_gone_files() -> None:
    prev = previous(
        ("a", 1, "fa", ["a-u000-000.parquet"]), ("b", 1, "fb", ["b-u000-000.parquet"]), ("gone", 1, "g", [])
    )
    now = inputs(("a", 1, "fa"), ("b", 2, "fb2"), ("c", 1, "fc"))
    inc = plan_increment(now, prev, "m", 2, "s")
    assert inc.score == {"/lake/b", "/lake/c"}
    assert inc.kept == {"/lake/a": ["a-u000-000.parquet"]}
    assert inc.dropped == ("/lake/gone",)
    assert inc.reason.startswith("1 new and 1 changed")


def test_nothing_to_do_only_when_nothing_is_new_changed_or_gone() -> None:
    prev = previous(("a", 1, "fa", ["a.parquet"]))
    assert plan_increment(inputs(("a", 1, "fa")), prev, "m", 2, "s").nothing_to_do
    assert not plan_increment(inputs(), prev, "m", 2, "s").nothing_to_do  # a file went away


@pytest.mark.parametrize("prev", [None, previous(("a", 1, "fa", [])), previous(("a", 1, "fa", []), version=1)])
def test_first_run_or_another_model_artifact_scores_everything(prev: dict[str, Any] | None) -> None:
    model_sha = "other" if prev and prev["model"]["version"] == 2 else "s"
    inc = plan_increment(inputs(("a", 1, "fa")), prev, "m", 2, model_sha)
    assert inc.score == {"/lake/a"} and not inc.kept


def test_output_templates() -> None:
    now = dt.datetime(2026, 11, 30, 23, 59, tzinfo=dt.UTC)
    assert render_output("s3://b/scored/{model}/v{version}/ds={date}", "digits", 2, now) == (
        "s3://b/scored/digits/v2/ds=2026-11-30"
    )
    assert render_output(str(Path("/plain/out")), "m", 1, now) == "/plain/out"
    with pytest.raises(InvalidInputError, match="use {date}, {model}, {version}"):
        render_output("/out/{day}", "m", 1, now)
