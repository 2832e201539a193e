"""Every file the server reads that an operator or a tool writes is bounded before it is parsed:
model.yaml, lineage.yaml, the API keys file and the lifecycle state file. At the extremes of
size and depth each gives a clear ConfigError (400 where a request reaches it), never a
RecursionError or a whole file in memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.auth import read_keys
from serving.config.model import load_model_config
from serving.control.store import LifecycleStore
from serving.errors import ConfigError, FileReadError
from serving.files import MAX_CONFIG_BYTES
from serving.lifecycle.lineage import file_sha256, read_lineage

DEEP = 100_000

YAML_EXTREMES = {
    "flow sequences nested 100k deep": "a: " + "[" * DEEP + "]" * DEEP,
    "flow mappings nested 100k deep": "a: " + "{b: " * DEEP + "1" + "}" * DEEP,
    "block mappings nested 5k deep": "".join(" " * i + f"k{i}:\n" for i in range(5000)),
    "over the size limit": "# " + "x" * MAX_CONFIG_BYTES + "\nplatform: onnx\n",
    "not UTF-8": "platform: onnx\n# \udcff\n",
    "a tab where YAML forbids one": "platform:\tonnx\n\t- x",
}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8", errors="surrogateescape"))
    return path


@pytest.mark.parametrize("case", list(YAML_EXTREMES))
def test_a_hostile_model_yaml_is_a_config_error(tmp_path: Path, case: str) -> None:
    with pytest.raises(ConfigError):
        load_model_config(write(tmp_path / "model.yaml", YAML_EXTREMES[case]))


@pytest.mark.parametrize("case", list(YAML_EXTREMES))
def test_a_hostile_lineage_yaml_is_a_config_error(tmp_path: Path, case: str) -> None:
    write(tmp_path / "1" / "lineage.yaml", YAML_EXTREMES[case])
    with pytest.raises(ConfigError):
        read_lineage(tmp_path / "1")


@pytest.mark.parametrize("case", list(YAML_EXTREMES))
def test_a_hostile_keys_file_is_a_config_error(tmp_path: Path, case: str) -> None:
    with pytest.raises(ConfigError):
        read_keys(write(tmp_path / "keys.yaml", YAML_EXTREMES[case]))


@pytest.mark.parametrize(
    "text",
    ['{"revision": 1, "models": ' + "[" * DEEP + "]" * DEEP + "}", "", '{"revision": NaN}', "x" * 100],
    ids=["nested 100k deep", "empty", "NaN", "not JSON"],
)
def test_a_hostile_lifecycle_state_file_is_a_config_error(tmp_path: Path, text: str) -> None:
    write(tmp_path / "lifecycle.json", text)
    with pytest.raises(ConfigError):
        LifecycleStore(tmp_path).read()


def test_a_folder_where_a_file_belongs_is_a_read_error_that_may_pass(tmp_path: Path) -> None:
    (tmp_path / "1" / "lineage.yaml").mkdir(parents=True)
    with pytest.raises(FileReadError, match="lineage.yaml"):
        read_lineage(tmp_path / "1")
    (tmp_path / "model.onnx").mkdir()
    with pytest.raises(FileReadError, match="model.onnx"):
        file_sha256(tmp_path / "model.onnx")
