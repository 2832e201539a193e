"""Named points of a scoring run where a test can stop it (fault injection).

With ``SERVING_SCORE_PAUSE_AT=<point>[:<seconds>]`` in its environment a run prints
``paused at <point>`` to stderr there and sleeps (an hour unless told), so a test can SIGKILL
it, or start a second run, at exactly that moment. Points:
``scoring`` (the first unit is written, the rest are not), ``staged`` (everything is written
to the staging folder, nothing published), ``exchanged`` (the new output is in place, the
previous one not yet deleted).
"""

from __future__ import annotations

import os
import sys
import time

PAUSE_ENV = "SERVING_SCORE_PAUSE_AT"


def checkpoint(point: str) -> None:
    name, _, seconds = os.environ.get(PAUSE_ENV, "").partition(":")
    if name == point:
        print(f"paused at {point}", file=sys.stderr, flush=True)
        time.sleep(float(seconds or 3600))
