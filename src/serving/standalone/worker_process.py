"""A supervised worker's process: ``python -m serving.standalone.worker_process NAME SETTINGS_JSON
LIVE_FOLDER READY_FD`` (``supervisor`` runs it). Serves until SIGTERM; writes ``ready`` to
READY_FD once it listens; exits 2 on a configuration error (its reason on stderr)."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from pathlib import Path

from serving.errors import ConfigError
from serving.standalone.settings_source import SettingsSource
from serving.standalone.worker import Generation, Worker, serve

log = logging.getLogger("serving.standalone.worker_process")  # also when run as __main__

PR_SET_PDEATHSIG = 1


def stop_with_the_supervisor(supervisor: int) -> None:
    """SIGTERM this worker when the supervisor dies, however it dies (Linux's parent-death signal):
    a worker never outlives its supervisor holding the ports."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    if os.getppid() != supervisor:  # it died before the signal was asked for
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str]) -> int:
    """A supervised worker: serve until told to stop; write ``ready`` to READY_FD once listening."""
    name, source_json, live_folder, ready_fd = argv
    source = SettingsSource.from_json(source_json)
    supervisor = os.getppid()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def ready(_: Generation) -> None:
        os.write(int(ready_fd), b"ready\n")
        os.close(int(ready_fd))

    try:
        settings = source.load()
        # Until Worker.run installs its handlers a SIGTERM ends the process at once (nothing to
        # drain yet); from then on it drains.
        stop_with_the_supervisor(supervisor)
        serve(Worker(source, name, Path(live_folder)), settings, ready)
    except ConfigError as exc:
        print(f"error: {name}: {exc.message}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
