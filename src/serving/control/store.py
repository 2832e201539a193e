"""Where the routing of every model lives, shared by all replicas and kept across restarts.

Two files in the state folder (default ``<repository>/_serving``; the repository scan skips
``_`` names): ``lifecycle.json``, the current routing of every model, and ``audit.jsonl``, one
JSON line per change (time, who, action, model, details, before, after). A change takes an
exclusive ``flock`` on ``.lock``, reads the file, applies the change, writes a new file and
renames it over the old one (readers never see half a file), then appends the audit line.
Replicas notice a change by the file's identity (inode, size, mtime), polled; on a cluster
the folder must be shared by the nodes, as the repository already is.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.errors import ConfigError
from serving.files import read_text
from serving.lifecycle.routing import ModelRouting

STATE_FILE = "lifecycle.json"
AUDIT_FILE = "audit.jsonl"
MAX_STATE_BYTES = 16 << 20
"""The largest state file read (a model's routing is a few hundred bytes)."""
AUDIT_TAIL_BYTES = 1 << 20
"""How much of the end of the audit log a listing reads (the log itself is never cut)."""


class LifecycleState(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    revision: int = 0
    models: dict[str, ModelRouting] = Field(default_factory=dict)

    def routing(self, model: str) -> ModelRouting:
        return self.models.get(model) or ModelRouting()


class LifecycleStore:
    """The state folder: read, watch, change (one change at a time across processes), audit."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.state_path = directory / STATE_FILE
        self.audit_path = directory / AUDIT_FILE
        self._seen: tuple[int, int, int] | None = None

    def _identity(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.state_path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def read(self) -> LifecycleState:
        """The current state (empty when nothing was ever changed).

        Raises:
            ConfigError: the state file is not valid.
        """
        self._seen = self._identity()
        try:
            raw = read_text(self.state_path, MAX_STATE_BYTES)
        except FileNotFoundError:
            return LifecycleState()
        try:
            return LifecycleState.model_validate_json(raw)
        except ValidationError as exc:
            raise ConfigError(f"{self.state_path} is not a valid lifecycle state: {exc}") from exc

    def changed(self) -> LifecycleState | None:
        """The state when the file changed since the last read, else None (a stat: cheap to poll)."""
        if self._identity() == self._seen:
            return None
        return self.read()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def update(
        self,
        model: str,
        change: Callable[[ModelRouting], ModelRouting],
        *,
        who: str,
        action: str,
        details: dict[str, Any] | None = None,
    ) -> tuple[ModelRouting, ModelRouting, LifecycleState]:
        """Apply ``change`` to one model's routing and record it; (before, after, the whole new
        state). The new state holds every other replica's changes too (this read may be the
        first to see them): apply all of it, not only ``model``.

        A ``change`` that raises changes and records nothing. Blocking file I/O: call it off
        the event loop.
        """
        with self._locked():
            state = self.read()
            before = state.routing(model)
            after = change(before)
            new = LifecycleState(revision=state.revision + 1, models={**state.models, model: after})
            self._write(new)
            self._append(
                who=who,
                action=action,
                model=model,
                details=details or {},
                before=before.model_dump(mode="json"),
                after=after.model_dump(mode="json"),
                revision=new.revision,
            )
            return before, after, new

    def _write(self, state: LifecycleState) -> None:
        """Replace the state file atomically and durably: the new file's data reaches the disk
        before the rename, and the rename before we return (after a crash, the old or the new
        file, never an empty one)."""
        tmp = self.state_path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(state.model_dump_json(indent=1))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.state_path)
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self._seen = self._identity()

    def record(self, model: str, *, who: str, action: str, details: dict[str, Any]) -> None:
        """Audit something that changed no routing (a refused promote)."""
        with self._locked():
            self._append(who=who, action=action, model=model, details=details)

    def _append(self, **fields: Any) -> None:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "unix": round(time.time(), 3), **fields}
        with open(self.audit_path, "a", encoding="utf-8") as audit:
            audit.write(json.dumps(entry, separators=(",", ":")) + "\n")
            audit.flush()
            os.fsync(audit.fileno())

    def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        """The last ``limit`` audit entries, oldest first."""
        try:
            with open(self.audit_path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - AUDIT_TAIL_BYTES))
                tail = f.read()
        except FileNotFoundError:
            return []
        lines = tail.splitlines()[1:] if size > AUDIT_TAIL_BYTES else tail.splitlines()  # the first may be cut
        entries = []
        for line in lines[-limit:]:
            try:
                entry = json.loads(line)
            except ValueError:  # a line cut by a crash mid-write: skipped, the rest still listed
                continue
            if isinstance(entry, dict):
                entries.append(entry)
        return entries
