"""GPU check of the online path without Ray (the device image has torch with CUDA, no Ray).

Builds the demo repository, loads it through ``LocalInferenceService`` (device: auto), and
checks: which device each version runs on; TorchScript answers on CUDA against the same
artifact on CPU; dynamic batching on the GPU under concurrent requests (from the statistics);
the TorchScript runtime's rows/s on CUDA at batch sizes 1..256 for the reference MLP and a
small ResNet (3x64x64 input), FP32 and FP16 (``instance.torch.fp16``); and a torch.export'ed
program of the ResNet on CUDA against CPU. Needs torch (and pydantic, which the device
image lacks: ``pip install .whl/*.whl`` first).

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

from serving.config.model import TorchOptions
from serving.demo import build_demo_repository, digits_data
from serving.runtime.torchscript import TorchScriptModel
from serving.service.local import LocalInferenceService
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
            f"model {mv.name} v{mv.version}: state {mv.state.value}, device {mv.instance.model.device}, platform {mv.instance.model.platform}"
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


class _Block(torch.nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(c_out)
        self.conv2 = torch.nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(c_out)
        self.skip = (
            torch.nn.Sequential(torch.nn.Conv2d(c_in, c_out, 1, stride, bias=False), torch.nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out
            else torch.nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.skip(x))


def small_resnet() -> torch.nn.Module:
    """A ResNet-10-like network for 3x64x64 images, 10 classes (seeded weights)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, 1, 1, bias=False), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
        _Block(32, 32, 1), _Block(32, 64, 2), _Block(64, 128, 2), _Block(128, 256, 2),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(256, 10),
    ).eval()  # fmt: skip


def check_exported(x: np.ndarray[Any, Any]) -> None:
    """A torch.export'ed program on CUDA against the same program on CPU."""
    net = small_resnet()
    program = torch.export.export(net, (torch.from_numpy(x),))  # static batch: the one checked
    with torch.inference_mode():
        cpu = program.module()(torch.from_numpy(x)).numpy()
        if torch.cuda.is_available():
            gpu = program.module().to("cuda")(torch.from_numpy(x).cuda()).cpu().numpy()
            say(f"small ResNet via torch.export: GPU vs CPU max |diff| {float(np.abs(gpu - cpu).max()):.2e}")


def runtime_throughput(path: Path, name: str, row_shape: tuple[int, ...], fp16: bool) -> None:
    model = TorchScriptModel(
        path, input_names=["input"], output_names=["output"], device="auto", num_threads=0,
        options=TorchOptions(fp16=fp16),
    )  # fmt: skip
    model.load()
    where = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
    say(f"{name} TorchScript on {model.device} ({where}), {'FP16' if fp16 else 'FP32'}")
    rng = np.random.default_rng(0)
    reference = rng.random((8, *row_shape), dtype=np.float32)
    if fp16:
        full = TorchScriptModel(path, input_names=["input"], output_names=["output"], device="auto", num_threads=0)
        full.load()
        diff = np.abs(
            model.predict({"input": reference}, ["output"])["output"]
            - full.predict({"input": reference}, ["output"])["output"]
        )
        say(f"  FP16 vs FP32 max |diff| {float(diff.max()):.2e}")
    for batch in (1, 8, 32, 64, 128, 256):
        x = rng.random((batch, *row_shape), dtype=np.float32)
        for _ in range(10):
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
    torch.jit.script(small_resnet()).save(str(work / "resnet.pt"))
    check_exported(np.random.default_rng(1).random((16, 3, 64, 64), dtype=np.float32))
    for fp16 in (False, True) if torch.cuda.is_available() else (False,):  # CPU half precision is emulated: slow
        runtime_throughput(work / "mlp.pt", "reference MLP 784-1024-1024-10", (784,), fp16)
        runtime_throughput(work / "resnet.pt", "small ResNet 3x64x64", (3, 64, 64), fp16)
    if args.out:
        args.out.write_text("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
