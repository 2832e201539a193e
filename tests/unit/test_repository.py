from __future__ import annotations

from pathlib import Path

import pytest

from serving.errors import ConfigError
from serving.repository import scan_repository


def make_model(root: Path, name: str, versions: list[str], config: str = "platform: onnx\n") -> None:
    (root / name).mkdir(parents=True)
    (root / name / "model.yaml").write_text(config)
    for v in versions:
        (root / name / v).mkdir()
        (root / name / v / "model.onnx").write_bytes(b"not parsed by the scan")


def test_scan_finds_models_versions_and_applies_policy(tmp_path: Path) -> None:
    make_model(tmp_path, "b", ["1", "2", "10"], "platform: onnx\nversion_policy: {latest: 2}\n")
    make_model(tmp_path, "a", ["3"])
    (tmp_path / "b" / "notes").mkdir()
    (tmp_path / "b" / "7").mkdir()  # a version folder without the artifact is not a version
    (tmp_path / ".hidden").mkdir()
    entries = scan_repository(tmp_path)
    assert [e.name for e in entries] == ["a", "b"]
    assert entries[1].available == (1, 2, 10)
    assert entries[1].selected == (10, 2)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        scan_repository(tmp_path / "nope")


def test_model_without_config_or_versions(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    with pytest.raises(ConfigError, match="no model.yaml"):
        scan_repository(tmp_path)
    (tmp_path / "m" / "model.yaml").write_text(
        "platform: torchscript\ninputs: [{name: x, datatype: FP32, shape: [1]}]\n"
        "outputs: [{name: y, datatype: FP32, shape: [1]}]\n"
    )
    with pytest.raises(ConfigError, match="model.pt"):
        scan_repository(tmp_path)


def test_policy_selecting_nothing_fails(tmp_path: Path) -> None:
    make_model(tmp_path, "m", ["1"], "platform: onnx\nversion_policy: {specific: [4]}\n")
    with pytest.raises(ConfigError, match="selects none"):
        scan_repository(tmp_path)
