"""The workers' snapshots as files, for a standalone server with several workers.

Each worker writes its ``live_snapshot()`` (totals, recent errors) to ``<folder>/<worker>.json``
once a second, atomically (a temporary file renamed over the last one). The operator page of
whichever worker answers reads every file and sums them, as a Ray replica reads every replica's
snapshot from the GCS; the supervisor's ``/metrics`` exports them. A worker that dies leaves its
last file, which its replacement (same name) overwrites; the page leaves snapshots older than
``telemetry.live.STALE_AFTER_S`` out.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PUBLISH_EVERY_S = 1.0


def read_snapshots(folder: Path) -> list[dict[str, Any]]:
    """Every worker's last snapshot in ``folder`` (a file that cannot be read is left out)."""
    docs = []
    for path in sorted(folder.glob("*.json")):
        try:
            docs.append(json.loads(path.read_text()))
        except (OSError, ValueError):  # removed meanwhile (a worker stopping)
            continue
    return docs


class LiveFiles:
    """Publishes this worker's snapshot in a thread; :meth:`close` stops it and removes the file."""

    def __init__(self, folder: Path, worker: str, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.folder = folder
        self.worker = worker
        self.path = folder / f"{worker}.json"
        self._snapshot = snapshot
        self._closed = threading.Event()
        self.publish()
        self._thread = threading.Thread(target=self._run, name="serving-live-files", daemon=True)
        self._thread.start()

    def publish(self) -> None:
        temporary = self.folder / f".{self.worker}.{os.getpid()}.tmp"
        temporary.write_text(json.dumps(self._snapshot()))
        os.replace(temporary, self.path)

    def _run(self) -> None:
        while not self._closed.wait(PUBLISH_EVERY_S):
            try:
                self.publish()
            except Exception:  # a full disk for a moment: the next second tries again
                log.warning("could not publish live stats to %s", self.path, exc_info=True)

    def read_all(self) -> list[dict[str, Any]]:
        """Every worker's snapshot, this one's fresh (file reads: run off the event loop)."""
        mine = self._snapshot()
        return [mine, *(d for d in read_snapshots(self.folder) if d.get("replica") != mine.get("replica"))]

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._thread.join()
        self.path.unlink(missing_ok=True)
