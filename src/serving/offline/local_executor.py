"""Score every work unit in this process: no Ray to start, nothing to schedule. What a small or
medium job on one machine spends its time on is then the model and Parquet, as in a plain loop."""

from __future__ import annotations

import os
import socket

import pyarrow.fs as pafs

from serving.offline.faults import checkpoint
from serving.offline.plan import Prepared, ScoreJob
from serving.offline.progress import Progress
from serving.offline.units import UnitResult, open_unit_scorer


def local_node() -> str:
    return socket.gethostname()


def run_local(
    job: ScoreJob, prepared: Prepared, out_fs: pafs.FileSystem, staging: str, progress: Progress
) -> tuple[list[UnitResult], dict[str, int]]:
    """(unit results, rows per node). One model instance with ``--threads`` runtime threads
    (default: every CPU, as one process of its own would use)."""
    worker, mv = open_unit_scorer(job, prepared, out_fs, staging, threads=job.threads or os.cpu_count() or 1)
    try:
        progress.start()
        results = []
        for unit in prepared.units:
            results.append(worker.score_unit(unit, progress.add))
            checkpoint("scoring")
    finally:
        mv.unload()
    return results, {local_node(): sum(r.scored + r.failed for r in results)}
