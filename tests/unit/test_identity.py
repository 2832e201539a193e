"""Audit entries and lineage name who ran a command, even where the uid has no login name."""

from __future__ import annotations

import os
import pwd

import pytest

from serving.identity import current_user


def test_the_login_name_when_there_is_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGNAME", "alice")
    assert current_user() == "alice"


def test_a_uid_without_a_passwd_entry_is_named_by_its_number(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a container started with an arbitrary uid: no login variables, no passwd entry (the
    user database is the boundary faked here); getpass.getuser() raises there."""
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)

    def no_entry(uid: int) -> pwd.struct_passwd:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    assert current_user() == f"uid {os.getuid()}"
