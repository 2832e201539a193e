"""What the least a prediction log can do costs, beside the log as it is: servers of copies of
``src`` with the log cut short at each stage, measured side by side by ``bench/server_variants.py``
(batch-1 reference MLP over gRPC, every request logged; calls/s, the server's CPU per call and its
event loop thread's, the median over alternating windows):

- ``off``: no log;
- ``noop``: a log configured, but the hand-over is a Python method that returns at once (the
  stream's lookup and the request's route are all that runs);
- ``minimal``: the hand-over appends the request id to a list and copies the input row into a
  ring of rows; nothing is ever written: the least any log of the inputs must do on the request
  path, written as plainly as Python allows;
- ``written``: ``minimal``'s hand-over, and a thread that writes its rows as the log's Parquet
  files (the log's columns and options, 10,000 rows a file; time, latency and outputs filled in
  by the writer): the best a hand-over in compiled code could do, with the files still written;
- ``discard``: the log's whole hand-over as it is (sampling, the record, the copy into the row
  blocks, the queue and its bounds); the writer thread takes the rows and drops them;
- ``python``: the log as it is, with the hand-over in Python (where the compiled one is not built);
- ``log``: the log as it is (the rows written to Parquet).

Each stage is a patch of a copy of ``src`` at an anchor in the code; a patch whose anchor is
gone fails the run instead of measuring something else.

    .venv/bin/python bench/log_floor.py --rounds 16
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
RESULTS = HERE / "results" / "log_floor.md"

LOGGING = "serving/service/prediction_logging.py"
WRITER = "serving/prediction_log/writer.py"
OFFER = "        self.offer = self.log.hand_over_function()\n"
METHODS = "    def receive_feedback("
FLOOR_OFFER = OFFER.replace("self.log.hand_over_function()", "self._floor_offer")
STREAMS = "        self._streams: dict"
WRITE = "        stream = batch.stream\n        times = batch.pending.times_ns\n"
MODULE = 'SHADOW = "shadow"\n'
COMPILED = "serving/prediction_log/compiled.py"

MINIMAL_HAND_OVER = (
    "        ids = self._floor_ids\n"
    "        ids.append(request_id)\n"
    "        if len(ids) > 100_000:\n"
    "            ids.clear()\n"
    "        for values in (inputs or {}).values():\n"
    "            self._floor_rows[self._floor_next % 10_000] = values[0]\n"
    "            self._floor_next += 1\n"
    "        return\n"
)
RING = (
    "        self._floor_ids: list[str] = []\n"
    "        self._floor_next = 0\n"
    "        self._floor_rows = np.zeros((10_000, 784), np.float32)\n"
)
NOOP_HAND_OVER = "        return\n"
WRITTEN_HAND_OVER = (
    "        self._floor_ids.append(request_id)\n"
    "        for values in (inputs or {}).values():\n"
    "            self._floor_rows[self._floor_next % 30_000] = values[0]\n"
    "            self._floor_next += 1\n"
    "        return\n"
)
FLOOR_WRITER = '''

def floor_writer(logging: Any) -> None:
    """Every 10,000 rows handed over, a file of them as the log writes it (bench/log_floor.py)."""
    import os
    import threading
    import time

    import pyarrow as pa

    from serving.prediction_log.files import open_destination, write_atomically
    from serving.prediction_log.records import OK

    folder = os.environ["SERVING_LOG_FLOOR_DIR"]
    fs, _ = open_destination(folder)

    def run() -> None:
        n, taken = 10_000, 0
        while True:
            time.sleep(0.02)
            ids = logging._floor_ids
            if len(ids) < n:
                continue
            batch = ids[:n]
            del ids[:n]
            start = taken % 30_000
            taken += n
            rows = logging._floor_rows[start : start + n]
            now_us = time.time_ns() // 1000
            table = pa.table({
                "request_id": pa.array(batch, pa.string()),
                "row": pa.array(np.zeros(n, np.int32)),
                "time": pa.array(now_us - np.arange(n, dtype=np.int64)).cast(pa.timestamp("us", tz="UTC")),
                "route": pa.array(["latest"] * n, pa.string()),
                "status": pa.repeat(pa.scalar(OK), n),
                "error": pa.nulls(n, pa.string()),
                "latency_ms": pa.array(np.random.default_rng(taken).random(n)),
                "input": pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), 784),
                "output": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(n * 10, np.float32)), 10),
            })
            write_atomically(fs, folder, f"part-{taken:012d}.parquet", table)

    threading.Thread(target=run, name="prediction-log", daemon=True).start()
'''


def floor_offer(body: str) -> list[tuple[str, str, str]]:
    """Patches that make the service's hand-over a Python method of ``body``."""
    method = (
        "    def _floor_offer(self, stream: Any, request_id: str, route: str, start_ns: int, inputs: Any,"
        " outputs: Any, failure: Any = None) -> None:\n" + body + "\n"
    )
    return [(LOGGING, OFFER, FLOOR_OFFER), (LOGGING, METHODS, method + METHODS)]


PATCHES: dict[str, list[tuple[str, str, str]]] = {
    "noop": floor_offer(NOOP_HAND_OVER),
    "minimal": [*floor_offer(MINIMAL_HAND_OVER), (LOGGING, STREAMS, RING + STREAMS)],
    "written": [
        *floor_offer(WRITTEN_HAND_OVER),
        (LOGGING, STREAMS, RING.replace("10_000", "30_000") + "        floor_writer(self)\n" + STREAMS),
        (LOGGING, MODULE, MODULE + FLOOR_WRITER),
    ],
    "python": [(COMPILED, "    hand_over = _hand_over\n", "    hand_over = None\n")],
    "discard": [
        (WRITER, WRITE, WRITE + "        self._forget(batch, list(range(len(batch.pending))))\n        return True\n")
    ],
}


def patched_copy(name: str, into: Path) -> Path:
    """A copy of ``src`` (the compiled front end with it) with ``name``'s patches applied."""
    src = into / name / "src"
    shutil.copytree(SRC, src, ignore=shutil.ignore_patterns("__pycache__"))
    for path, anchor, replacement in PATCHES[name]:
        file = src / path
        text = file.read_text()
        if text.count(anchor) != 1:
            raise SystemExit(f"{name}: the anchor {anchor.strip()!r} is not once in {path}; update bench/log_floor.py")
        file.write_text(text.replace(anchor, replacement))
    return src


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0, help="one window")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="serving-log-floor-") as tmp:
        copies = {name: patched_copy(name, Path(tmp)) for name in PATCHES}
        written = Path(tmp) / "written-files"
        written.mkdir()
        variants = [
            "off=:off",
            f"noop={copies['noop']}:log",
            f"minimal={copies['minimal']}:log",
            f"written={copies['written']}:log:SERVING_LOG_FLOOR_DIR~{written}",
            f"discard={copies['discard']}:log",
            f"python={copies['python']}:log",
            "log=:log",
        ]
        command = [sys.executable, str(HERE / "server_variants.py"), *variants]
        command += ["--rounds", str(args.rounds), "--seconds", str(args.seconds)]
        lines = []
        with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as run:
            assert run.stdout is not None
            for line in run.stdout:
                print(line, end="", flush=True)
                lines.append(line)
        if run.returncode:
            raise SystemExit(run.returncode)
        files = list(written.glob("*.parquet"))
        print(f"written: {len(files)} files of 10,000 rows", flush=True)
        if not files:
            raise SystemExit("the written variant wrote no file: its writer thread failed (see its server's log)")
    table = "".join(line for line in lines if line.startswith("|"))
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    RESULTS.write_text(
        f"# The prediction log's floor ({when})\n\n`.venv/bin/python bench/log_floor.py --rounds {args.rounds}`: "
        "the batch-1 reference MLP over gRPC (grpc.aio, 16 calls in flight), every request logged; "
        "medians over alternating windows of "
        f"{args.seconds:g} s. The variants are described in the script's docstring.\n\n{table}"
    )


if __name__ == "__main__":
    main()
