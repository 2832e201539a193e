"""The shared state file and the audit log (real files, several processes)."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from serving.control.store import LifecycleStore
from serving.errors import ConfigError, ModelNotFoundError
from serving.lifecycle import routing as r


def test_changes_are_kept_audited_and_seen_by_another_reader(tmp_path: Path) -> None:
    writer, reader = LifecycleStore(tmp_path), LifecycleStore(tmp_path)
    assert reader.read().models == {}
    assert reader.changed() is None
    writer.update("m", lambda x: r.promote(x, "production", 2), who="alice", action="promote", details={"version": 2})
    seen = reader.changed()
    assert seen is not None and seen.routing("m").aliases == {"production": 2}
    assert reader.changed() is None
    entry = writer.audit()[-1]
    assert entry["who"] == "alice" and entry["action"] == "promote" and entry["model"] == "m"
    assert entry["before"]["aliases"] == {} and entry["after"]["aliases"] == {"production": 2}
    assert LifecycleStore(tmp_path).read().revision == 1  # a restart reads it back


def test_a_refused_change_writes_nothing(tmp_path: Path) -> None:
    store = LifecycleStore(tmp_path)
    with pytest.raises(ModelNotFoundError):
        store.update("m", lambda x: r.rollback(x, "m", "production"), who="a", action="rollback")
    assert store.audit() == [] and store.read().revision == 0


def test_a_corrupt_state_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "lifecycle.json").write_text('{"models": {"m": {"aliases": {"x": "not a number"}}}}')
    with pytest.raises(ConfigError, match="not a valid lifecycle state"):
        LifecycleStore(tmp_path).read()


def _promote_many(directory: str, worker: int) -> None:
    store = LifecycleStore(Path(directory))
    for i in range(25):
        store.update("m", lambda x, i=i: r.promote(x, f"w{worker}", i + 1), who=f"w{worker}", action="promote")


def test_changes_from_several_processes_are_serialized(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_promote_many, args=(str(tmp_path), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    state = LifecycleStore(tmp_path).read()
    assert state.revision == 100
    assert state.routing("m").aliases == {f"w{w}": 25 for w in range(4)}
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["revision"] for x in lines) == list(range(1, 101))
