"""A supervised worker's process: ``python -m serving.standalone.worker_process NAME SETTINGS_JSON
LIVE_FOLDER READY_FD`` (``supervisor`` runs it). Serves until SIGTERM; writes ``ready`` to
READY_FD once it listens; exits 2 on a configuration error (its reason on stderr)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

from serving.errors import ConfigError
from serving.standalone.settings_source import SettingsSource
from serving.standalone.worker import Generation, Worker


def main(argv: list[str]) -> int:
    """A supervised worker: serve until told to stop; write ``ready`` to READY_FD once listening."""
    name, source_json, live_folder, ready_fd = argv
    source = SettingsSource.from_json(source_json)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def ready(_: Generation) -> None:
        os.write(int(ready_fd), b"ready\n")
        os.close(int(ready_fd))

    async def serve() -> None:
        worker = Worker(source, name, Path(live_folder))
        await worker.run(source.load(), ready)

    try:
        asyncio.run(serve())
    except ConfigError as exc:
        print(f"error: {name}: {exc.message}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
