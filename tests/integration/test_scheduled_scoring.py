"""`serving score` run on a schedule: incremental runs over a growing lake, one run at a time per
output (a lock with its own exit code), SIGKILL at any point leaving the previous or the new
output, never a mix, output templates, the `_runs/` history and the scheduler examples."""

from __future__ import annotations

import ast
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import yaml

from models import add_model

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "schedulers"
LOCK_HELD_EXIT = 75


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    add_model(root, "add", versions=(1,), batch={"inputs": {"x": {"column": "x"}}, "passthrough": ["id"]})
    return root


def write_file(lake: Path, rel: str, rows: int, first_id: int, row_group: int = 1000) -> None:
    path = lake / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(first_id).random((rows, 4), dtype=np.float32)
    table = pa.table({"id": np.arange(first_id, first_id + rows), "x": pa.array(list(x), pa.list_(pa.float32()))})
    pq.write_table(table, path, row_group_size=row_group)


def score(
    repo: Path, lake: Path, out: Path | str, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    cmd = [
        sys.executable, "-m", "serving.cli", "score", "--repository", str(repo), "--model", "add",
        "--input", str(lake), "--output", str(out), *extra,
    ]  # fmt: skip
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )


def finish(proc: subprocess.Popen[str], code: int = 0) -> str:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == code, err[-3000:]
    return out + err


def manifest(out: Path) -> dict[str, Any]:
    return dict(json.loads((out / "_manifest.json").read_text()))


def scored(out: Path) -> pa.Table:
    table = pads.dataset(out, format="parquet", partitioning="hive").to_table()
    return table.sort_by("id")


def assert_whole(out: Path) -> dict[str, Any]:
    """A published output: what is on disk is exactly what its manifest lists, and rows add up."""
    m = manifest(out)
    listed = {f["path"] for f in m["output"]["files"] + m["output"]["errors"]}
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.suffix in (".parquet", ".parq")}
    assert on_disk == listed
    assert (out / "_SUCCESS").is_file()
    assert m["rows"]["read"] == m["rows"]["scored"] + m["rows"]["failed"]
    assert m["rows"]["read"] == scored(out).num_rows
    return m


def test_a_growing_lake_scored_incrementally_equals_a_full_run(repo: Path, tmp_path: Path) -> None:
    lake, out = tmp_path / "lake", tmp_path / "scored"
    write_file(lake, "day=1/a.parquet", 3000, 0)
    write_file(lake, "day=1/b.parquet", 2000, 10_000)
    finish(score(repo, lake, out, "--incremental"))
    first = assert_whole(out)
    assert (first["run"]["files_scored"], first["run"]["rows_scored"]) == (2, 5000)

    write_file(lake, "day=2/c.parquet", 1500, 20_000)  # step 2: a new partition
    write_file(lake, "day=2/d.parquet", 500, 30_000)
    finish(score(repo, lake, out, "--incremental"))
    second = assert_whole(out)
    assert (second["run"]["files_scored"], second["run"]["files_kept"], second["run"]["rows_scored"]) == (2, 2, 2000)

    write_file(lake, "day=3/e.parquet", 700, 40_000)  # step 3: one new file, one rewritten
    write_file(lake, "day=1/b.parquet", 1200, 50_000)
    text = finish(score(repo, lake, out, "--incremental"))
    third = assert_whole(out)
    assert (third["run"]["files_scored"], third["run"]["files_kept"], third["run"]["rows_scored"]) == (2, 3, 1900)
    assert "1 new and 1 changed input files" in text

    again = finish(score(repo, lake, out, "--incremental"))  # nothing new: no work, same output
    assert "nothing to do" in again
    assert manifest(out) == third

    full = tmp_path / "full"
    finish(score(repo, lake, full))
    assert scored(out).equals(scored(full))
    assert manifest(full)["rows"] == third["rows"] == {"read": 6900, "scored": 6900, "failed": 0}
    assert sorted(f["path"] for f in manifest(full)["output"]["files"]) == sorted(
        f["path"] for f in third["output"]["files"]
    )
    runs = subprocess.run(
        [sys.executable, "-m", "serving.cli", "runs", str(out)], capture_output=True, text=True, timeout=60
    )
    assert runs.returncode == 0, runs.stderr
    assert len(runs.stdout.strip().splitlines()) == 1 + 3  # header + the three runs that published
    assert "incremental" in runs.stdout and "1,900" in runs.stdout


def test_a_second_run_on_the_same_output_exits_with_the_lock_code(repo: Path, tmp_path: Path) -> None:
    lake, out = tmp_path / "lake", tmp_path / "scored"
    write_file(lake, "a.parquet", 2000, 0)
    first = score(repo, lake, out, "--incremental", env={"SERVING_SCORE_PAUSE_AT": "staged:4"})
    wait_for_pause(first)
    second = score(repo, lake, out, "--incremental")
    text = finish(second, LOCK_HELD_EXIT)
    assert "another run holds the lock" in text
    finish(first)
    assert assert_whole(out)["rows"]["read"] == 2000


def wait_for_pause(proc: subprocess.Popen[str]) -> None:
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    seen = ""
    while "paused at" not in seen:
        line = proc.stderr.readline()
        assert line or proc.poll() is None, f"run ended before its pause: {seen}"
        seen += line
        assert time.monotonic() < deadline, seen


@pytest.mark.parametrize("point", ["scoring", "staged", "exchanged"])
def test_a_run_killed_at_any_point_leaves_the_previous_or_the_new_output(
    repo: Path, tmp_path: Path, point: str
) -> None:
    lake, out = tmp_path / "lake", tmp_path / "scored"
    write_file(lake, "day=1/a.parquet", 3000, 0)
    finish(score(repo, lake, out, "--incremental"))
    before = assert_whole(out)
    write_file(lake, "day=2/b.parquet", 2000, 10_000, row_group=500)
    write_file(lake, "day=2/c.parquet", 2000, 20_000, row_group=500)

    killed = score(repo, lake, out, "--incremental", "--rows-per-file", "500", env={"SERVING_SCORE_PAUSE_AT": point})
    wait_for_pause(killed)
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    now = assert_whole(out)
    assert now == before if point in ("scoring", "staged") else now["rows"]["read"] == 7000
    assert list(tmp_path.glob(".scored.staging-*"))  # what the killed run left

    text = finish(score(repo, lake, out, "--incremental"))
    final = assert_whole(out)
    assert final["rows"] == {"read": 7000, "scored": 7000, "failed": 0}
    assert not list(tmp_path.glob(".scored.staging-*"))
    if point != "exchanged":
        assert "left by a run that did not finish" in text


def test_output_templates_are_filled_in(repo: Path, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    write_file(lake, "a.parquet", 100, 0)
    finish(score(repo, lake, f"{tmp_path}/scored/{{model}}/v{{version}}/ds={{date}}"))
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert assert_whole(tmp_path / "scored" / "add" / "v1" / f"ds={today}")["rows"]["read"] == 100
    bad = score(repo, lake, f"{tmp_path}/scored/{{day}}")
    assert "{date}, {model}, {version}" in finish(bad, 2)


def example_env(tmp_path: Path, repo: Path) -> tuple[Path, Path, dict[str, str]]:
    lake, out = tmp_path / "lake", tmp_path / "scored"
    write_file(lake, "day=1/a.parquet", 500, 0)
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # where `serving` is installed
    env = {"PATH": path, "MODELS": str(repo), "MODEL": "add", "LAKE": str(lake), "SCORED": str(out)}
    return lake, out, env


def run_twice(command: str, env: dict[str, str], out: Path) -> None:
    """A scheduler's command, run as the scheduler would (sh -c), twice: the second does nothing."""
    for expect_rows in (500, 500):
        proc = subprocess.run(
            ["sh", "-c", command], env={**os.environ, **env}, capture_output=True, text=True, timeout=240
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert assert_whole(out)["rows"]["read"] == expect_rows


def test_the_cron_example_runs_as_cron_would(repo: Path, tmp_path: Path) -> None:
    _, out, env = example_env(tmp_path, repo)
    lines = [ln for ln in (EXAMPLES / "crontab").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    jobs = [ln for ln in lines if ln.split()[0][0].isdigit() or ln.startswith("*")]
    assert len(jobs) == 1
    command = jobs[0].split(None, 5)[5].replace("\\%", "%")  # what cron does before sh -c
    env["LOG"] = str(tmp_path / "score.log")
    run_twice(command, env, out / time.strftime("ds=%Y-%m-%d", time.gmtime()))
    assert "nothing to do" in (tmp_path / "score.log").read_text()


def test_the_airflow_example_bash_command_runs_and_skips_on_the_lock_code(repo: Path, tmp_path: Path) -> None:
    _, out, env = example_env(tmp_path, repo)
    tree = ast.parse((EXAMPLES / "airflow_dag.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "BashOperator"]
    assert len(calls) == 1
    kwargs = {
        k.arg: ast.literal_eval(k.value) for k in calls[0].keywords if k.arg in ("bash_command", "skip_on_exit_code")
    }
    assert kwargs["skip_on_exit_code"] == LOCK_HELD_EXIT
    command = kwargs["bash_command"].replace("{{ ds }}", "2026-11-30")  # Airflow's template: the run's date
    run_twice(command, env, out / "ds=2026-11-30")


def test_the_kuberay_rayjob_example_is_a_rayjob_whose_entrypoint_runs(repo: Path, tmp_path: Path) -> None:
    _, out, env = example_env(tmp_path, repo)
    doc = yaml.safe_load((EXAMPLES / "rayjob.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob")
    spec = doc["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and "rayClusterSpec" in spec
    entrypoint = spec["entrypoint"]
    assert "--incremental" in shlex.split(entrypoint)
    # On KubeRay the entrypoint runs on the head with RAY_ADDRESS set; here against a local Ray.
    run_twice(entrypoint, env, out)
