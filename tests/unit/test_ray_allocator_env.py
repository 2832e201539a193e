"""The allocator setting for the local Ray's raylet and GCS server: set only while Ray starts, and
never over what the user chose."""

from __future__ import annotations

import os

import pytest

from serving.ray_start import RAY_ALLOCATOR_ENV, allocator_env


@pytest.fixture(autouse=True)
def no_allocator_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in (*RAY_ALLOCATOR_ENV, "LD_PRELOAD"):
        monkeypatch.delenv(k, raising=False)


def test_set_while_ray_starts_then_removed() -> None:
    with allocator_env():
        assert {k: os.environ[k] for k in RAY_ALLOCATOR_ENV} == RAY_ALLOCATOR_ENV
    assert not any(k in os.environ for k in RAY_ALLOCATOR_ENV)


@pytest.mark.parametrize("user_var", ["RAY_JEMALLOC_CONF", "RAY_JEMALLOC_PROFILE", "LD_PRELOAD"])
def test_a_users_own_setting_wins(monkeypatch: pytest.MonkeyPatch, user_var: str) -> None:
    monkeypatch.setenv(user_var, "theirs")
    with allocator_env():
        assert os.environ[user_var] == "theirs"
        assert all(os.environ.get(k) in (None, "theirs") for k in RAY_ALLOCATOR_ENV)
    assert os.environ[user_var] == "theirs"
