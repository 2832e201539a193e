"""Runtime options that matter on GPUs, exercised on the CPU: provider choice, I/O binding, FP16."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from serving.config.model import ModelConfig, OnnxOptions, TorchOptions
from serving.registry.versions import ModelRegistry
from serving.repository import scan_repository
from serving.runtime.onnx import OnnxModel, choose_providers
from serving.runtime.torchscript import TorchScriptModel

ALL = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from serving.demo import build_demo_repository

    return build_demo_repository(tmp_path_factory.mktemp("demo"))


def test_providers_follow_the_configured_order_and_cpu_closes_the_list() -> None:
    opts = OnnxOptions(providers=("tensorrt", "cuda"), provider_options={"tensorrt": {"trt_fp16_enable": True}})
    chosen, missing = choose_providers("auto", opts, ALL)
    assert chosen == [
        ("TensorrtExecutionProvider", {"trt_fp16_enable": "True"}),
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert missing == []


def test_missing_providers_are_skipped_and_reported() -> None:
    chosen, missing = choose_providers("auto", OnnxOptions(providers=("tensorrt", "cuda")), ["CPUExecutionProvider"])
    assert chosen == ["CPUExecutionProvider"]
    assert missing == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]


def test_device_cpu_uses_only_the_cpu_provider() -> None:
    assert choose_providers("cpu", OnnxOptions(), ALL) == (["CPUExecutionProvider"], [])


def test_unknown_provider_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="providers"):
        ModelConfig.model_validate({"platform": "onnx", "instance": {"onnx": {"providers": ["rocm"]}}})


def test_gpu_device_without_a_gpu_provider_is_not_ready(demo: Path) -> None:
    import onnxruntime as ort

    from serving.errors import ModelNotReadyError

    root = demo

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(ModelNotReadyError, match="no GPU provider"):
        OnnxModel(root / "digits/1/model.onnx", device="gpu").load()


def test_io_binding_gives_the_same_answers(demo: Path) -> None:
    from serving.demo import digits_data

    root = demo
    x, _ = digits_data()
    plain = OnnxModel(root / "digits/2/model.onnx")
    bound = OnnxModel(root / "digits/2/model.onnx", options=OnnxOptions(io_binding=True))
    plain.load()
    bound.load()
    a = plain.predict({"input": x[:33]}, ["probabilities", "label"])
    b = bound.predict({"input": x[:33]}, ["probabilities", "label"])
    np.testing.assert_array_equal(a["probabilities"], b["probabilities"])
    np.testing.assert_array_equal(a["label"], b["label"])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_fp16_stays_close_to_fp32_and_returns_fp32(demo: Path) -> None:
    from serving.demo import digits_data

    root = demo
    x, _ = digits_data()
    names = (["input"], ["probabilities", "label"])
    full = TorchScriptModel(root / "digits_torch/1/model.pt", input_names=names[0], output_names=names[1])
    half = TorchScriptModel(
        root / "digits_torch/1/model.pt", input_names=names[0], output_names=names[1], options=TorchOptions(fp16=True)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full.load()
        half.load()
    a = full.predict({"input": x[:64]}, names[1])
    b = half.predict({"input": x[:64]}, names[1])
    assert b["probabilities"].dtype == np.float32
    np.testing.assert_allclose(a["probabilities"], b["probabilities"], atol=5e-3)
    assert (a["label"] == b["label"]).mean() > 0.95


def test_a_torch_models_first_answer_on_a_new_thread_equals_the_loading_threads(demo: Path) -> None:
    """Batches run on worker threads: the first one on a fresh thread must use the configured
    intra-op thread count too (OpenMP's default there gave answers differing in the last bits)."""
    from serving.demo import digits_data

    x, _ = digits_data()
    names = (["input"], ["probabilities", "label"])
    model = TorchScriptModel(demo / "digits_torch/1/model.pt", input_names=names[0], output_names=names[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.load()
    rows = np.ascontiguousarray(x[:7])
    expected = model.predict({"input": rows}, names[1])
    answers: list[dict[str, np.ndarray]] = []
    for _ in range(3):  # each on a thread of its own, as a batcher's new worker thread
        worker = threading.Thread(target=lambda: answers.append(model.predict({"input": rows}, names[1])))
        worker.start()
        worker.join()
    assert len(answers) == 3
    for answer in answers:
        np.testing.assert_array_equal(answer["probabilities"], expected["probabilities"])
        np.testing.assert_array_equal(answer["label"], expected["label"])


def test_metadata_reports_the_device_and_instance_count_and_warmup_sizes_are_configurable(
    demo: Path, tmp_path: Path
) -> None:
    import shutil

    import yaml

    from serving.protocol.triton import config_json
    from serving.service.local import LocalInferenceService

    root = tmp_path / "repo"
    shutil.copytree(demo, root)
    doc = yaml.safe_load((root / "digits/model.yaml").read_text())
    doc["instance"] = {"warmup_batch_sizes": [3, 7], "count": 2}
    (root / "digits/model.yaml").write_text(yaml.safe_dump(doc))
    registry = ModelRegistry()
    registry.load_entries([e for e in scan_repository(root) if e.name == "digits"])
    svc = LocalInferenceService(registry)
    assert svc.model_metadata("digits").device == "cpu"
    group = config_json(svc.model_config("digits"))["instance_group"][0]
    assert group["kind"] == "KIND_CPU" and group["count"] == 2
    assert registry.get("digits").config.instance.warmup_batch_sizes == (3, 7)
