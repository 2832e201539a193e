"""The API keys file as the server and ``serving keys`` use it: a malformed file fails closed
(a revoked key never comes back to life), and concurrent writers never drop a key."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from serving import auth
from serving.auth import Authenticator, create_key, read_keys
from serving.errors import UnauthenticatedError


def test_a_malformed_keys_file_accepts_no_key_until_it_is_fixed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.yaml"
    alice = create_key(path, "alice")
    bob = create_key(path, "bob")
    good = path.read_text()
    checker = Authenticator(path)
    assert checker.authenticate(f"Bearer {alice}").name == "alice"
    # An operator revokes bob by hand and breaks the file while doing it.
    path.write_text(good.replace("name: bob", "name: [bob"))
    time.sleep(auth.RELOAD_EVERY_S + 0.1)  # the file is looked at once a second
    for key in (alice, bob):
        with pytest.raises(UnauthenticatedError, match="keys file is invalid"):
            checker.authenticate(f"Bearer {key}")
    assert "API keys file refused" in caplog.text
    path.write_text(good)
    time.sleep(auth.RELOAD_EVERY_S + 0.1)
    assert checker.authenticate(f"Bearer {bob}").name == "bob"


def _create(path: str, names: list[str]) -> None:
    for name in names:
        create_key(Path(path), name)


def test_concurrent_key_creation_keeps_every_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    ctx = multiprocessing.get_context("spawn")
    writers = [ctx.Process(target=_create, args=(str(path), [f"w{w}-{i}" for i in range(15)])) for w in range(4)]
    for p in writers:
        p.start()
    for p in writers:
        p.join(60)
        assert p.exitcode == 0
    names = {r.name for r in read_keys(path).values()}
    assert names == {f"w{w}-{i}" for w in range(4) for i in range(15)}
