"""Where a command's CPU goes, by kind of process: runs the command, reads every process's CPU time
from /proc every half second until it ends, and prints the CPU-seconds each kind used (a kind is
read from the command line as it is at each reading: a Ray worker is counted as ``ray::IDLE`` until
it becomes an actor, then under the actor's name). Processes that live less than half a second are
missed; processes already running when it starts count only what they use from then on.

    .venv/bin/python bench/cpu_by_process.py -- .venv/bin/pytest tests/integration -q -n 2 --dist loadscope
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import time

TICKS = os.sysconf("SC_CLK_TCK")
KINDS = (
    "dashboard/agent.py",
    "runtime_env/agent",
    "log_monitor",
    "default_worker.py",
    "serving serve",
    "serving score",
    "serving evaluate",
    "serving demo",
    "serving",
    "pytest",
    "chromium",
    "prometheus",
    "promtool",
    "moto_server",
    "perf_analyzer",
    "ray start",
)


def kind_of(command: str, name: str) -> str:
    program = command.split(" ", 1)[0]
    if program.endswith("raylet/raylet"):
        return "raylet"
    if program.endswith("gcs_server"):
        return "gcs_server"
    if command.startswith("ray::"):
        return "ray::" + command.split()[0][5:].split(".")[0][:40]
    return next((k for k in KINDS if k in command), f"other: {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    cpu: collections.Counter[str] = collections.Counter()
    pids: dict[str, set[int]] = collections.defaultdict(set)
    last: dict[int, tuple[str, float]] = {}  # pid -> (its start time, CPU-seconds counted)
    busy_before = _busy()
    started = time.monotonic()
    proc = subprocess.Popen(command)
    first = True
    while True:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                _read(int(entry), first, cpu, pids, last)
        first = False
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    wall = time.monotonic() - started
    busy = _busy() - busy_before
    total = sum(cpu.values())
    print(f"\n{' '.join(command)}: exit {proc.returncode}, {wall:.0f} s, {total:.0f} CPU-s counted "
          f"({busy:.0f} CPU-s busy on the machine, {busy / wall / os.cpu_count():.0%} of its {os.cpu_count()} cores)")  # fmt: skip
    for kind, seconds in cpu.most_common():
        if seconds >= 0.5:
            print(f"{seconds:8.1f} CPU-s {len(pids[kind]):5d} processes  {kind}")


def _read(
    pid: int,
    first: bool,
    cpu: collections.Counter[str],
    pids: dict[str, set[int]],
    last: dict[int, tuple[str, float]],
) -> None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/cmdline") as f:
            command = f.read().replace("\0", " ").strip()
    except OSError:
        return
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    used = (int(fields[11]) + int(fields[12])) / TICKS
    start = fields[19]
    if pid not in last or last[pid][0] != start:
        last[pid] = (start, used if first else 0.0)
    kind = kind_of(command, name)
    cpu[kind] += used - last[pid][1]
    pids[kind].add(pid)
    last[pid] = (start, used)


def _busy() -> float:
    """CPU-seconds the whole machine has been busy (all but idle and iowait)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / TICKS


if __name__ == "__main__":
    main()
