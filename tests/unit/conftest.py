"""Unit tests never start Ray (like Ray's own ``disallow_ray_init``)."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(autouse=True)
def disallow_ray_init(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        import ray
    except ImportError:
        return

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("unit tests must not start Ray")

    monkeypatch.setattr(ray, "init", refuse)
