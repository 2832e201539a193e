"""``serving score``: score Parquet with a model of the repository, account for every row, publish.

Plan (``plan``: checks and work units from the Parquet footers), execute (in this process for a
small job without a cluster, ``local_executor``; else a Ray Data actor pool, ``ray_executor``;
both run the same ``units.UnitScorer`` and write the same files), then count the footers of
everything written against the input's (read = scored + failed, or the job fails), write
``_manifest.json`` and publish (``publish``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pyarrow.fs as pafs

from serving.errors import InvalidInputError, ServingError
from serving.offline.incremental import Increment, plan_increment
from serving.offline.local_executor import run_local
from serving.offline.lock import OutputLock
from serving.offline.manifest import ERRORS_DIR, RUNS_DIR, Manifest, list_outputs, read_manifest
from serving.offline.plan import Prepared, ScoreJob, output_location, prepare
from serving.offline.progress import Progress
from serving.offline.publish import carry_over, new_staging, publish, remove_stale_staging, set_aside
from serving.offline.scorer import artifact_sha256
from serving.offline.units import UnitResult
from serving.version import SERVER_VERSION

__all__ = ["JobFailedError", "JobResult", "ScoreJob", "choose_executor", "run"]

EXECUTORS = ("auto", "local", "ray")


class JobFailedError(ServingError):
    """The job ran but its result must not be published (error rate, lost rows)."""


@dataclass(frozen=True)
class JobResult:
    output: str
    manifest: Manifest | None
    """None when an incremental run found nothing to do (the output is as it was)."""
    note: str = ""

    def summary(self) -> str:
        m = self.manifest
        if m is None:
            return f"nothing to do: {self.note} -> {self.output}"
        failed = f"{m.rows_failed:,} failed -> {self.output}/{ERRORS_DIR}" if m.rows_failed else "0 failed"
        rate = m.rows_read / m.duration_s if m.duration_s else 0.0
        ray = f"; Ray start {m.ray_start_s:.1f}s" if m.executor == "ray" else ""
        this_run = ""
        if m.run.get("incremental"):
            this_run = (
                f"; this run scored {m.run['files_scored']} input files ({m.run['rows_scored']:,} rows), "
                f"kept {m.run['files_kept']}"
            )
        return (
            f"scored {m.rows_scored:,} of {m.rows_read:,} rows ({failed}) with {m.model_name} "
            f"v{m.model_version} in {m.duration_s:.1f}s ({rate:,.0f} rows/s, {m.executor} executor{ray}{this_run}) "
            f"-> {self.output}"
        )


def choose_executor(job: ScoreJob, rows: int) -> tuple[str, str]:
    """(executor, why). ``auto``: Ray Data when a cluster is named or the job is big, else in-process.

    Raises:
        InvalidInputError: ``local`` together with a cluster address, or an unknown executor.
    """
    cluster = job.address or os.environ.get("RAY_ADDRESS")
    if job.executor not in EXECUTORS:
        raise InvalidInputError(f"unknown executor {job.executor!r} (choose from {', '.join(EXECUTORS)})")
    if job.executor == "local":
        if job.address:
            raise InvalidInputError("--executor local runs in this process: it cannot use --address")
        return "local", "--executor local"
    if job.executor == "ray":
        return "ray", "--executor ray"
    if cluster:
        return "ray", f"Ray cluster {cluster}"
    if rows > job.local_max_rows:
        return "ray", f"{rows:,} rows > --local-max-rows {job.local_max_rows:,}"
    return "local", f"{rows:,} rows <= --local-max-rows {job.local_max_rows:,}, no cluster named"


def run(job: ScoreJob, say: Callable[[str], None] | None = None) -> JobResult:
    """Run the job end to end and publish its output; ``say`` gets the lines meant for a person.

    Raises:
        ServingError subclasses for a bad invocation (before anything runs), OutputLockedError
        when another run holds the output, JobFailedError when the result is not published.
    """
    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    started_at = dt.datetime.now(dt.UTC)
    began = time.monotonic()
    prepared = prepare(job)
    out_fs, out_path = output_location(prepared.output)
    lock = OutputLock(out_path) if isinstance(out_fs, pafs.LocalFileSystem) else contextlib.nullcontext()
    with lock:
        for stale in remove_stale_staging(out_fs, out_path):
            say(f"removed {stale} (left by a run that did not finish)")
        sha256 = artifact_sha256(prepared.entry, prepared.version)
        previous = read_manifest(out_fs, out_path)
        if job.incremental:
            increment = plan_increment(prepared.inputs, previous, prepared.entry.name, prepared.version, sha256)
        else:
            increment = Increment(frozenset(prepared.inputs.paths), reason="full run")
        if increment.nothing_to_do:
            return JobResult(
                prepared.output,
                None,
                f"all {len(prepared.inputs.files)} input files were already scored by "
                f"{prepared.entry.name} v{prepared.version}",
            )
        todo = replace(prepared, units=[u for u in prepared.units if u.path in increment.score])
        rows = sum(u.rows for u in todo.units)
        executor, why = choose_executor(job, rows)
        say(f"executor: {executor} ({why}); {len(todo.units)} work units, {rows:,} rows")
        if job.incremental:
            say(f"incremental: {increment.reason}")
        staging = new_staging(out_fs, out_path)
        try:
            carried = [f for files in increment.kept.values() for f in files]
            if previous is not None:
                carried += [f"{RUNS_DIR}/{r}" for r in _run_files(out_fs, out_path)]
            carry_over(out_fs, out_path, staging, carried)
            results, nodes, ray_start_s = _execute(job, todo, executor, out_fs, staging, rows)
            _check_units(results, todo)
            outputs: dict[str, list[str]] = {path: list(files) for path, files in increment.kept.items()}
            path_of = {u.index: u.path for u in todo.units}
            for r in results:
                outputs.setdefault(path_of[r.index], []).extend(r.files)
            run_record = {
                "id": uuid.uuid4().hex[:8],
                "incremental": job.incremental,
                "files_scored": len(increment.score),
                "files_kept": len(increment.kept),
                "files_dropped": len(increment.dropped),
                "rows_scored": sum(r.scored for r in results),
                "rows_failed": sum(r.failed for r in results),
                "reason": increment.reason,
            }
            scored, errors = list_outputs(out_fs, staging)
            manifest = Manifest(
                model_name=prepared.entry.name,
                model_version=prepared.version,
                artifact=str(prepared.entry.artifact(prepared.version)),
                artifact_sha256=sha256,
                inputs=prepared.inputs,
                scored_files=scored,
                error_files=errors,
                started_at=started_at,
                duration_s=time.monotonic() - began,
                ray_start_s=ray_start_s,
                serving_version=SERVER_VERSION,
                executor=executor,
                nodes=nodes,
                settings=_settings(job),
                file_outputs=outputs,
                run=run_record,
            )
            manifest.write(out_fs, staging)
        except BaseException:
            out_fs.delete_dir(staging)
            raise
        if not manifest.balanced:
            rejected = set_aside(out_fs, staging, out_path)
            raise JobFailedError(
                f"row accounting failed: read {manifest.rows_read}, scored {manifest.rows_scored}, failed "
                f"{manifest.rows_failed}; nothing published, the job's files are in {rejected}"
            )
        if manifest.error_rate > job.max_error_rate:
            rejected = set_aside(out_fs, staging, out_path)
            raise JobFailedError(
                f"{manifest.rows_failed} of {manifest.rows_read} rows failed ({manifest.error_rate:.2%} > "
                f"--max-error-rate {job.max_error_rate:.2%}); nothing published, see {rejected}/{ERRORS_DIR}"
            )
        publish(out_fs, staging, out_path)
    return JobResult(prepared.output, manifest)


def _execute(
    job: ScoreJob, todo: Prepared, executor: str, out_fs: pafs.FileSystem, staging: str, rows: int
) -> tuple[list[UnitResult], dict[str, int], float]:
    progress = Progress(rows, enabled=job.progress)
    try:
        if executor == "local":
            results, nodes = run_local(job, todo, out_fs, staging, progress)
            return results, nodes, 0.0
        return _run_on_ray(job, todo, out_fs, staging, progress)
    finally:
        progress.close()


def _run_files(fs: pafs.FileSystem, out_path: str) -> list[str]:
    selector = pafs.FileSelector(f"{out_path}/{RUNS_DIR}", allow_not_found=True)
    return [os.path.basename(i.path) for i in fs.get_file_info(selector) if i.type == pafs.FileType.File]


def _run_on_ray(
    job: ScoreJob, prepared: Prepared, out_fs: pafs.FileSystem, staging: str, progress: Progress
) -> tuple[list[UnitResult], dict[str, int], float]:
    import ray.exceptions

    from serving.offline.ray_executor import run_ray
    from serving.ray_start import init_ray

    began = time.monotonic()
    init_ray(job.address, quiet=not job.verbose)
    ray_start_s = time.monotonic() - began
    try:
        results, nodes = run_ray(job, prepared, out_fs, staging, progress)
    except ray.exceptions.RayError as exc:
        cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) else exc
        raise JobFailedError(f"the Ray job failed: {type(cause).__name__}: {cause}") from exc
    return results, nodes, ray_start_s


def _check_units(results: list[UnitResult], prepared: Prepared) -> None:
    """Every unit reported once (the footers decide the counts; this catches a lost unit early)."""
    seen = sorted(r.index for r in results)
    if seen != [u.index for u in prepared.units]:
        raise JobFailedError(f"work units lost or repeated: {len(prepared.units)} planned, reports for {seen}")


def _settings(job: ScoreJob) -> dict[str, Any]:
    return {
        "batch_size": job.batch_size,
        "concurrency": job.concurrency,
        "num_cpus": job.num_cpus,
        "num_gpus": job.num_gpus,
        "threads": job.threads,
        "max_error_rate": job.max_error_rate,
        "rows_per_file": job.rows_per_file,
        "mapping": {k: list(v.names) for k, v in job.mapping.items()},
        "passthrough": list(job.passthrough) if job.passthrough is not None else None,
        "incremental": job.incremental,
    }
