from __future__ import annotations

from pathlib import Path

import pytest

from serving.config.model import ModelConfig, Platform, VersionPolicy, load_model_config
from serving.config.server import load_settings
from serving.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_minimal_onnx_config_gets_defaults(tmp_path: Path) -> None:
    cfg = load_model_config(write(tmp_path / "model.yaml", "platform: onnx\n"))
    assert cfg.platform is Platform.ONNX
    assert cfg.max_batch_size == 0
    assert cfg.version_policy.select([1, 3, 2]) == [3]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("platform: onnx\nmax_bach_size: 8\n", "max_bach_size: unknown key"),
        ("platform: tensorflow\n", "unknown platform 'tensorflow'"),
        ("platform: onnx\nmax_batch_size: -1\n", "max_batch_size"),
        ("platform: onnx\ninputs: [{name: x, datatype: FLOAT, shape: [4]}]\n", "unknown datatype 'FLOAT'"),
        ("platform: onnx\ninputs: [{name: x, datatype: FP32, shape: [0]}]\n", "inputs.0.shape"),
        ("platform: torchscript\n", "must declare inputs and outputs"),
        ("platform: onnx\nversion_policy: {latest: 1, all: true}\n", "choose one of"),
        ("platform: onnx\ndynamic_batching: {max_queue_size: 0}\n", "dynamic_batching.max_queue_size"),
        ("platform: onnx\ninstance: {device: tpu}\n", "instance.device"),
        ("- just\n- a list\n", "expected a mapping"),
        ("platform: [unclosed\n", "cannot read YAML"),
    ],
)
def test_invalid_model_yaml_names_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path / "model.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_model_config(path)
    assert str(path) in info.value.message
    assert expected in info.value.message


@pytest.mark.parametrize(
    ("text", "key", "allowed"),
    [
        ("platform: onnx\nmax_bach_size: 8\n", "max_bach_size", ["max_batch_size", "platform", "inputs"]),
        ("platform: onnx\ndynamic_batching: {max_wait_ms: 1}\n", "dynamic_batching.max_wait_ms", ["max_queue_size"]),
        (
            "platform: onnx\ninputs: [{name: x, datatype: FP32, shape: [4], dims: [4]}]\n",
            "inputs.0.dims",
            ["datatype", "name", "shape"],
        ),
    ],
)
def test_a_typo_names_the_keys_allowed_where_it_stands(tmp_path: Path, text: str, key: str, allowed: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_model_config(write(tmp_path / "model.yaml", text))
    assert f"{key}: unknown key (typo?); allowed here: " in info.value.message
    listed = info.value.message.split("allowed here: ")[1].split(", ")
    assert set(allowed) <= set(listed)
    assert key.rsplit(".", 1)[-1] not in listed


def test_a_settings_typo_names_the_allowed_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path / "serve.yaml", "http_prot: 9000\n"))
    assert "http_prot: unknown key (typo?); allowed here: " in info.value.message
    assert "http_port" in info.value.message.split("allowed here: ")[1].split(", ")


def test_platform_aliases() -> None:
    for alias in ("onnx", "onnxruntime_onnx", "onnx_onnxv1"):
        assert ModelConfig(platform=alias).platform is Platform.ONNX  # type: ignore[arg-type]
    assert Platform.TORCHSCRIPT.artifact == "model.pt"


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({}, [5]),
        ({"latest": 2}, [5, 3]),
        ({"all": True}, [5, 3, 1]),
        ({"specific": [1, 3, 9]}, [3, 1]),
    ],
)
def test_version_policy_follows_triton(policy: dict[str, object], expected: list[int]) -> None:
    assert VersionPolicy.model_validate(policy).select([1, 3, 5]) == expected


def test_settings_precedence_and_typos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "s.yaml", "http_port: 9000\ngrpc_port: 9001\n")
    assert load_settings(path).http_port == 9000
    monkeypatch.setenv("SERVING_HTTP_PORT", "9100")
    assert load_settings(path).http_port == 9100
    assert load_settings(path, http_port=9200).http_port == 9200
    with pytest.raises(ConfigError, match="htp_port: unknown key"):
        load_settings(write(tmp_path / "bad.yaml", "htp_port: 1\n"))
    with pytest.raises(ConfigError, match="must differ"):
        load_settings(None, http_port=9000, grpc_port=9000)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.yaml")
