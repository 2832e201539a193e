"""Progress of a scoring job for a person: a bar on a terminal, a plain line every few seconds
otherwise (a log file, a scheduler's output). Totals come from the input's Parquet footers."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

BAR_WIDTH = 28


class Progress:
    """Thread-safe counters with a renderer; call :meth:`add` as rows finish, :meth:`close` at the end."""

    def __init__(
        self,
        total: int,
        stream: TextIO | None = None,
        *,
        enabled: bool = True,
        tty: bool | None = None,
        line_every_s: float = 5.0,
        bar_every_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty() if tty is None else tty
        self.every_s = bar_every_s if self.tty else line_every_s
        self.scored = 0
        self.failed = 0
        self._clock = clock
        self._began = clock()
        self._last: float | None = None  # no line yet: the first update is always shown
        self._lock = threading.Lock()

    def start(self) -> None:
        """Scoring starts now (the rate and ETA count from here, not from the Ray start)."""
        self._began = self._clock()

    def add(self, scored: int, failed: int) -> None:
        with self._lock:
            self.scored += scored
            self.failed += failed
            now = self._clock()
            if self.enabled and (self._last is None or now - self._last >= self.every_s):
                self._last = now
                self._render(now, final=False)

    def close(self) -> None:
        with self._lock:
            if self.enabled:
                self._render(self._clock(), final=True)

    def line(self, now: float | None = None) -> str:
        done = self.scored + self.failed
        elapsed = max((self._clock() if now is None else now) - self._began, 1e-9)
        rate = done / elapsed
        eta = (self.total - done) / rate if rate > 0 and done < self.total else 0.0
        pct = 100.0 * done / self.total if self.total else 100.0
        return (
            f"{done:,}/{self.total:,} rows ({pct:.0f}%)  {rate:,.0f} rows/s  ETA {_duration(eta)}  "
            f"failed {self.failed:,}"
        )

    def _render(self, now: float, final: bool) -> None:
        text = self.line(now)
        if self.tty:
            done = self.scored + self.failed
            filled = int(BAR_WIDTH * done / self.total) if self.total else BAR_WIDTH
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            self.stream.write(f"\r[{bar}] {text}\033[K" + ("\n" if final else ""))
        else:
            self.stream.write(f"progress: {text}\n")
        self.stream.flush()


def _duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
