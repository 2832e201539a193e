"""GPU check of the online path without Ray (the device image has torch with CUDA, no Ray).

Builds the demo repository, loads it through ``LocalInferenceService`` (device: auto), and
checks: which device each version runs on; TorchScript answers on CUDA against the same
artifact on CPU; dynamic batching on the GPU under concurrent requests (from the statistics);
and the TorchScript runtime's rows/s on CUDA for the reference MLP at batch sizes 1..256.

    PYTHONPATH=src python3 bench/gpu_check.py [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serving.demo import build_demo_repository, digits_data
from serving.runtime.torchscript import TorchScriptModel
from serving.service import LocalInferenceService
from serving.types import InferenceRequest, Tensor

warnings.simplefilter("ignore", DeprecationWarning)
LINES: list[str] = []


def say(line: str) -> None:
    print(line, flush=True)
    LINES.append(line)


def cpu_reference(path: Path, x: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    module = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        p, label = module(torch.from_numpy(x))
    return p.numpy(), label.numpy()


async def check_service(repo: Path) -> None:
    svc = LocalInferenceService.from_repository(repo)
    for mv in svc.registry.all_versions():
        say(
            f"model {mv.name} v{mv.version}: state {mv.state.value}, device {mv.model.device}, platform {mv.model.platform}"
        )
    x, _ = digits_data()
    rows = x[:512]
    exp_p, exp_label = cpu_reference(repo / "digits_torch" / "1" / "model.pt", rows)

    # One request carrying 64 rows.
    r = await svc.infer(InferenceRequest("digits_torch", [Tensor("input", "FP32", rows[:64])]))
    got = {o.name: o.data for o in r.outputs}
    diff = float(np.abs(got["probabilities"] - exp_p[:64]).max())
    say(
        f"digits_torch GPU vs CPU, one 64-row request: max |diff| {diff:.2e}, labels equal {np.array_equal(got['label'], exp_label[:64])}"
    )

    # 512 concurrent single-row requests: batched on the GPU.
    results = await asyncio.gather(
        *[svc.infer(InferenceRequest("digits_torch", [Tensor("input", "FP32", rows[i : i + 1])])) for i in range(512)]
    )
    p = np.concatenate([{o.name: o.data for o in res.outputs}["probabilities"] for res in results])
    labels = np.concatenate([{o.name: o.data for o in res.outputs}["label"] for res in results])
    say(
        f"digits_torch GPU, 512 concurrent 1-row requests: max |diff| vs CPU {float(np.abs(p - exp_p).max()):.2e}, "
        f"labels equal {np.array_equal(labels, exp_label)}"
    )
    stats = svc.statistics("digits_torch", "1")[0]
    sizes = sorted(stats.batch_stats)
    say(
        f"statistics: inference_count {stats.inference_count}, execution_count {stats.execution_count}, "
        f"batch sizes executed {sizes[:6]}..{sizes[-3:]} (max {max(sizes)})"
    )
    await svc.registry.close()


def mlp_torchscript(path: Path, sizes: tuple[int, ...] = (784, 1024, 1024, 10)) -> None:
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    torch.manual_seed(0)
    torch.jit.script(torch.nn.Sequential(*layers).eval()).save(str(path))


def runtime_throughput(path: Path) -> None:
    model = TorchScriptModel(path, input_names=["input"], output_names=["output"], device="auto", num_threads=0)
    model.load()
    where = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
    say(f"reference MLP 784-1024-1024-10 TorchScript on {model.device} ({where})")
    for batch in (1, 8, 32, 64, 128, 256):
        x = np.random.default_rng(0).random((batch, 784), dtype=np.float32)
        for _ in range(20):
            model.predict({"input": x}, ["output"])
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < 1.0:
            model.predict({"input": x}, ["output"])  # includes host->device and device->host copies
            n += batch
        say(f"  batch {batch:4d}: {n / (time.perf_counter() - start):12,.0f} rows/s (numpy in, numpy out)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    say(f"python {sys.version.split()[0]}, torch {torch.__version__}, cuda available {torch.cuda.is_available()}")
    try:
        import onnxruntime as ort

        say(f"onnxruntime {ort.__version__}, providers {ort.get_available_providers()}")
    except ImportError:
        say("onnxruntime not installed")
    work = Path(tempfile.mkdtemp())
    repo = build_demo_repository(work / "repo")
    asyncio.run(check_service(repo))
    mlp_torchscript(work / "mlp.pt")
    runtime_throughput(work / "mlp.pt")
    if args.out:
        args.out.write_text("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
