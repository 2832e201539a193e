"""The GPU path: same answers as the CPU, batching on the GPU, fractional-GPU replicas, and
offline scoring with --num-gpus. Every test is marked `gpu` and skips without CUDA."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from serving.demo import build_demo_dataset, build_demo_repository, digits_data

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_repository(tmp_path_factory.mktemp("repo"))


def test_torchscript_on_cuda_matches_cpu(repo: Path) -> None:
    from serving.runtime.torchscript import TorchScriptModel

    x, _ = digits_data()
    outs = {}
    for device in ("cpu", "gpu"):
        m = TorchScriptModel(
            repo / "digits_torch/1/model.pt",
            input_names=["input"],
            output_names=["probabilities", "label"],
            device=device,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.load()
        assert m.device == device
        outs[device] = m.predict({"input": x[:256]}, ["probabilities", "label"])
    np.testing.assert_allclose(outs["gpu"]["probabilities"], outs["cpu"]["probabilities"], atol=1e-5)
    np.testing.assert_array_equal(outs["gpu"]["label"], outs["cpu"]["label"])


def test_onnx_on_cuda_matches_cpu(repo: Path) -> None:
    import onnxruntime as ort

    from serving.runtime.onnx import OnnxModel

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime has no CUDA provider: {ort.get_available_providers()} (install onnxruntime-gpu)")
    x, _ = digits_data()
    cpu, gpu = (
        OnnxModel(repo / "digits/2/model.onnx", device="cpu"),
        OnnxModel(repo / "digits/2/model.onnx", device="gpu"),
    )
    cpu.load()
    gpu.load()
    assert gpu.device == "gpu"
    a = cpu.predict({"input": x}, ["probabilities", "label"])
    b = gpu.predict({"input": x}, ["probabilities", "label"])
    np.testing.assert_allclose(a["probabilities"], b["probabilities"], atol=1e-5)
    np.testing.assert_array_equal(a["label"], b["label"])


def test_concurrent_requests_are_batched_on_the_gpu(repo: Path) -> None:
    from serving.service.local import LocalInferenceService
    from serving.types import InferenceRequest, Tensor

    x, _ = digits_data()

    async def run() -> list[int]:
        svc = LocalInferenceService.from_repository(repo)
        assert svc.model_metadata("digits_torch").device == "gpu"
        requests = [InferenceRequest("digits_torch", [Tensor("input", "FP32", x[i : i + 1])]) for i in range(256)]
        await asyncio.gather(*(svc.infer(r) for r in requests))
        stats = svc.statistics("digits_torch")[0]
        await svc.registry.close()
        return [stats.execution_count, stats.inference_count]

    executions, rows = asyncio.run(run())
    assert rows == 256
    assert executions < 256


def test_fractional_gpu_replicas_share_one_gpu(repo: Path) -> None:
    import ray
    from ray import serve

    from serving.deploy.app import build_app

    yaml_path = repo / "digits_torch" / "model.yaml"
    import yaml

    doc = yaml.safe_load(yaml_path.read_text())
    doc["resources"] = {"replicas": 2, "num_gpus": 0.5}
    single = repo.parent / "fractional"
    (single / "digits_torch").mkdir(parents=True, exist_ok=True)
    (single / "digits_torch" / "model.yaml").write_text(yaml.safe_dump(doc))
    (single / "digits_torch" / "1").mkdir(exist_ok=True)
    (single / "digits_torch" / "1" / "model.pt").write_bytes((repo / "digits_torch/1/model.pt").read_bytes())
    ray.init(address="local", num_gpus=1, include_dashboard=False)
    try:
        serve.start(http_options={"port": 0})
        handle = serve.run(build_app({"repository": str(single)}), name="frac", route_prefix=None)
        status = serve.status().applications["frac"].deployments
        assert all(d.status == "HEALTHY" for d in status.values())
        assert sum(d.replica_states.get("RUNNING", 0) for d in status.values()) == 2
        assert handle is not None
    finally:
        serve.shutdown()
        ray.shutdown()


def test_offline_scoring_with_num_gpus(repo: Path, tmp_path: Path) -> None:
    data = build_demo_dataset(tmp_path / "data")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "serving.cli", "score", "--repository", str(repo), "--model", "digits_torch",
         "--input", str(data), "--output", str(out), "--num-gpus", "0.5", "--concurrency", "2"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["rows"] == {"read": 1797, "scored": 1797, "failed": 0}
    assert manifest["settings"]["num_gpus"] == 0.5
