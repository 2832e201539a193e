"""Paired throughput of two running servers, for a VM whose speed drifts within minutes: one
client alternates short windows between A and B (A B, then B A, ...), so each pair is measured
seconds apart and the drift cancels in its ratio. The result is the median of the pairs' B/A
ratios with a bootstrap 95 % interval. The client is grpc.aio (V2 ModelInfer, raw tensor bytes,
``concurrency`` calls in flight on one channel, as gRPC applications multiplex them).

Given the targets' process ids, each window also reads the CPU time their process trees spent
(user + system): the server's CPU per call, which the client's own cost does not dilute.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import grpc
import numpy as np
import psutil

from serving.protocol._pb import inference_pb2 as pb
from serving.protocol._pb import inference_pb2_grpc


@dataclass(frozen=True)
class PairedResult:
    rates: dict[str, list[float]]
    """Requests per second of each window, per target."""
    ratio: float
    """Median over the pairs of B's rate / A's rate."""
    low: float
    high: float
    """Bootstrap 95 % interval of that median."""
    cpu_us: dict[str, list[float]] | None = None
    """Microseconds of CPU each target's process tree spent per call, per window (with pids)."""


async def calls_per_second(stub: inference_pb2_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest,
                  concurrency: int, seconds: float) -> float:  # fmt: skip
    done = 0
    until = time.monotonic() + seconds

    async def caller() -> None:
        nonlocal done
        while time.monotonic() < until:
            await stub.ModelInfer(request, timeout=30)
            done += 1

    began = time.monotonic()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return done / (time.monotonic() - began)


def infer_request(model: str, input_name: str, features: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=input_name, datatype="FP32", shape=[1, features])
    request.raw_input_contents.append(np.zeros((1, features), np.float32).tobytes())
    return request


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants."""
    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


async def _paired(targets: dict[str, str], request: pb.ModelInferRequest, pairs: int, window_s: float,
                  concurrency: int, pids: dict[str, int]) -> tuple[dict[str, list[float]], dict[str, list[float]]]:  # fmt: skip
    names = list(targets)
    channels = {n: grpc.aio.insecure_channel(t) for n, t in targets.items()}
    try:
        stubs = {n: inference_pb2_grpc.GRPCInferenceServiceStub(c) for n, c in channels.items()}
        for n in names:  # warm both up (connections, first batches)
            await calls_per_second(stubs[n], request, concurrency, 1.0)
        rates: dict[str, list[float]] = {n: [] for n in names}
        cpu_us: dict[str, list[float]] = {n: [] for n in names if n in pids}
        for i in range(pairs):
            for n in names if i % 2 == 0 else names[::-1]:
                before = _cpu_s(pids[n]) if n in pids else 0.0
                began = time.monotonic()
                rate = await calls_per_second(stubs[n], request, concurrency, window_s)
                rates[n].append(rate)
                if n in pids:
                    calls = rate * (time.monotonic() - began)
                    cpu_us[n].append((_cpu_s(pids[n]) - before) / calls * 1e6)
        return rates, cpu_us
    finally:
        for channel in channels.values():
            await channel.close()


def compare(
    targets: dict[str, str],
    request: pb.ModelInferRequest,
    pairs: int = 40,
    window_s: float = 1.0,
    concurrency: int = 16,
    seed: int = 0,
    pids: dict[str, int] | None = None,
) -> PairedResult:
    """B (the second target) against A (the first): the median ratio of paired windows; ``pids``:
    the targets' server processes, whose CPU per call is then measured too."""
    rates, cpu_us = asyncio.run(_paired(targets, request, pairs, window_s, concurrency, pids or {}))
    a, b = (np.asarray(v) for v in rates.values())
    ratios = b / a
    rng = np.random.default_rng(seed)
    medians = [float(np.median(rng.choice(ratios, len(ratios)))) for _ in range(2000)]
    return PairedResult(
        rates,
        float(np.median(ratios)),
        float(np.percentile(medians, 2.5)),
        float(np.percentile(medians, 97.5)),
        cpu_us if pids else None,
    )
