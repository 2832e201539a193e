from __future__ import annotations

import io
from pathlib import Path

import pytest

from serving.errors import InvalidInputError
from serving.offline.job import choose_executor
from serving.offline.plan import ScoreJob
from serving.offline.progress import Progress


def test_a_terminal_gets_a_bar_that_redraws_and_ends_with_the_totals() -> None:
    out = io.StringIO()
    p = Progress(1000, out, tty=True, bar_every_s=0)
    p.add(400, 0)
    p.add(500, 100)
    p.close()
    text = out.getvalue()
    assert text.count("\r[") == 3 and text.endswith("\n")
    last = text.rsplit("\r", 1)[1]
    assert "[" + "#" * 28 + "]" in last
    assert "1,000/1,000 rows (100%)" in last and "failed 100" in last and "rows/s" in last and "ETA" in last


def test_a_log_gets_plain_lines_every_few_seconds_and_a_last_one() -> None:
    out = io.StringIO()
    p = Progress(10_000, out, tty=False, line_every_s=3600)
    for _ in range(10):
        p.add(1000, 0)
    p.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # the first update, then none for an hour, then the final line
    assert lines[0].startswith("progress: 1,000/10,000 rows (10%)")
    assert lines[1].startswith("progress: 10,000/10,000 rows (100%)") and "\r" not in out.getvalue()


def test_the_first_update_is_shown_on_a_machine_booted_moments_ago() -> None:
    # time.monotonic() counts from boot: on a fresh machine it is below the line interval
    now = [1.5]
    out = io.StringIO()
    p = Progress(100, out, tty=False, line_every_s=5.0, clock=lambda: now[0])
    p.add(10, 0)
    now[0] = 2.0
    p.add(10, 0)
    now[0] = 7.0
    p.add(10, 0)
    lines = out.getvalue().splitlines()
    assert [line.split(" rows")[0] for line in lines] == ["progress: 10/100", "progress: 30/100"]


def test_disabled_progress_writes_nothing() -> None:
    out = io.StringIO()
    p = Progress(10, out, enabled=False)
    p.add(10, 0)
    p.close()
    assert out.getvalue() == ""


def job(**kw: object) -> ScoreJob:
    return ScoreJob(repository=Path("r"), model="m", inputs=["i"], output="o", **kw)  # type: ignore[arg-type]


def test_the_executor_is_in_process_for_small_jobs_without_a_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert choose_executor(job(), 120_000)[0] == "local"
    assert choose_executor(job(local_max_rows=100), 120_000)[0] == "ray"
    assert choose_executor(job(address="127.0.0.1:6379"), 10)[0] == "ray"
    assert choose_executor(job(executor="ray"), 10)[0] == "ray"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert choose_executor(job(), 10) == ("ray", "Ray cluster 127.0.0.1:6379")
    with pytest.raises(InvalidInputError, match="cannot use --address"):
        choose_executor(job(executor="local", address="127.0.0.1:6379"), 10)
