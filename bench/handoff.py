"""What handing one run to a worker thread and back costs the event loop: ``loop.run_in_executor``
against :class:`serving.worker_threads.WorkerThreads`, one empty run at a time under uvloop (as a
replica's loop runs), alternated round by round. Prints, per hand-off, the wall time and the CPU
time of the event loop's thread.

    .venv/bin/python bench/handoff.py [--runs 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import uvloop

from serving.worker_threads import WorkerThreads


def nothing() -> int:
    return 1


async def per_handoff(runs: int, hand: Callable[[], Awaitable[int]]) -> tuple[float, float]:
    """Microseconds of wall time and of the loop thread's CPU per hand-off."""
    wall, cpu = time.perf_counter(), time.thread_time()
    for _ in range(runs):
        await hand()
    return (time.perf_counter() - wall) / runs * 1e6, (time.thread_time() - cpu) / runs * 1e6


async def main(runs: int, rounds: int) -> None:
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(1)
    workers = WorkerThreads(1, "handoff")
    print("hand-off           wall us   loop CPU us")
    try:
        for _ in range(rounds):
            for name, hand in (
                ("run_in_executor", lambda: loop.run_in_executor(executor, nothing)),
                ("WorkerThreads.run", lambda: workers.run(loop, nothing)),
            ):
                wall, cpu = await per_handoff(runs, hand)
                print(f"{name:<18} {wall:7.1f}   {cpu:7.1f}")
    finally:
        executor.shutdown()
        workers.stop()
        await workers.ended(5.0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    uvloop.run(main(args.runs, args.rounds))
