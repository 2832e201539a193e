"""One run at a time per output: an exclusive ``flock`` on ``.<name>.lock`` beside the output.

The kernel drops the lock when its holder exits, however it exits (SIGKILL included), so a
killed run never leaves a stale lock behind; a second run started meanwhile stops at once.
"""

from __future__ import annotations

import errno
import fcntl
import os

from serving.errors import ServingError

LOCK_HELD_EXIT = 75
"""Exit code of a run that found the lock held (EX_TEMPFAIL: try again later)."""


class OutputLockedError(ServingError):
    """Another run holds this output's lock."""


class OutputLock:
    """Context manager holding the lock of one output folder (local filesystems)."""

    def __init__(self, out_path: str) -> None:
        parent, _, name = out_path.rstrip("/").rpartition("/")
        self.path = f"{parent}/.{name}.lock"
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise OutputLockedError(
                    f"another run holds the lock {self.path} (pid {holder or 'unknown'}); nothing done"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None
