"""``serving convert``: a tabular version to ONNX, written only when it answers like the original."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from serving.control.convert import convert
from serving.errors import ConflictError, UnsupportedError
from serving.offline.scorer import open_version, resolve_version

from models import iris, tabular_models


def features_file(path: Path, x: np.ndarray) -> list[str]:
    pq.write_table(pa.table({"input": pa.array(list(x), pa.list_(pa.float64()))}), path)
    return [str(path)]


@pytest.mark.parametrize("model", ["iris_forest", "iris_xgb", "iris_lgbm"])
def test_a_conversion_that_answers_alike_becomes_the_next_version(tmp_path: Path, model: str) -> None:
    tabular_models(tmp_path)
    x, _ = iris()
    done = convert(tmp_path, f"{model}:1", features_file(tmp_path / "iris.parquet", x))
    assert done.version == 2 and done.path == tmp_path / model / "2" / "model.onnx"
    lineage = yaml.safe_load((tmp_path / model / "2" / "lineage.yaml").read_text())
    assert lineage["conversion"]["from_version"] == 1 and lineage["conversion"]["label_mismatches"] == 0
    assert lineage["conversion"]["data"]["rows"] == 150
    assert_versions_answer_alike(tmp_path, model, x)


def assert_versions_answer_alike(root: Path, model: str, x: np.ndarray) -> None:
    """Version 2 (ONNX) takes version 1's inputs and gives its labels and probabilities."""
    native = open_version(*resolve_version(root, f"{model}:1"))
    onnx = open_version(*resolve_version(root, f"{model}:2"))
    try:
        assert onnx.model.platform == "onnxruntime_onnx"
        assert [(s.name, s.datatype, s.shape) for s in onnx.inputs] == [
            (s.name, s.datatype, s.shape) for s in native.inputs
        ]
        a, b = native.predict({"input": x}), onnx.predict({"input": x})
        np.testing.assert_array_equal(a["label"], b["label"])
        np.testing.assert_allclose(a["probabilities"], b["probabilities"], atol=1e-5)
    finally:
        native.unload()
        onnx.unload()


def test_a_conversion_that_changes_predictions_is_refused_naming_the_rows(tmp_path: Path) -> None:
    """LightGBM keeps float64 thresholds: two points 1e-9 apart fall on either side of one, while
    the converted model's float32 threshold and inputs cannot tell them apart."""
    import lightgbm

    x = np.array([[1.0], [1.0 + 1e-9]] * 20)
    y = np.array([0, 1] * 20)
    folder = tmp_path / "close" / "1"
    folder.mkdir(parents=True)
    model = lightgbm.LGBMClassifier(n_estimators=5, min_child_samples=1, min_data_in_bin=1, verbose=-1).fit(x, y)
    model.booster_.save_model(folder / "model.txt")
    (tmp_path / "close" / "model.yaml").write_text(yaml.safe_dump({"platform": "lightgbm", "max_batch_size": 64}))
    with pytest.raises(
        ConflictError, match=r"changes predictions on 40 rows: .* 20 different labels; worst rows: row 1: label 1 -> 0"
    ):
        convert(tmp_path, "close:1", features_file(tmp_path / "close.parquet", x))
    assert sorted(p.name for p in (tmp_path / "close").iterdir()) == ["1", "model.yaml"]  # nothing written


def test_a_model_the_converter_cannot_take_is_refused_with_its_reason(tmp_path: Path) -> None:
    from sklearn.semi_supervised import LabelSpreading

    x, y = iris()
    folder = tmp_path / "spread" / "1"
    folder.mkdir(parents=True)
    joblib.dump(LabelSpreading().fit(x, y), folder / "model.joblib")  # skl2onnx has no converter for it
    (tmp_path / "spread" / "model.yaml").write_text(yaml.safe_dump({"platform": "sklearn", "max_batch_size": 64}))
    with pytest.raises(UnsupportedError) as refused:
        convert(tmp_path, "spread:1", features_file(tmp_path / "x.parquet", x))
    assert "LabelSpreading" in refused.value.message and "\n" not in refused.value.message
    assert not (tmp_path / "spread" / "2").exists()


@pytest.mark.parametrize("data", ["iris", "breast cancer with missing values"])
def test_hist_gradient_boosting_converts_and_answers_alike(tmp_path: Path, data: str) -> None:
    """skl2onnx 1.20 with onnx 1.23 could not build its tree node (a boolean flag); with the flag
    made an int, the converted version must still pass the parity check, missing values included
    (the flag says which way a NaN goes)."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import HistGradientBoostingClassifier

    if data == "iris":
        x, y = iris()
    else:
        x, y = load_breast_cancer(return_X_y=True)
        x = x.copy()
        x[np.random.default_rng(0).random(x.shape) < 0.1] = np.nan
    folder = tmp_path / "hgb" / "1"
    folder.mkdir(parents=True)
    joblib.dump(HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(x, y), folder / "model.joblib")
    (tmp_path / "hgb" / "model.yaml").write_text(yaml.safe_dump({"platform": "sklearn", "max_batch_size": 64}))
    done = convert(tmp_path, "hgb:1", features_file(tmp_path / "x.parquet", x))
    assert done.version == 2
    lineage = yaml.safe_load((tmp_path / "hgb" / "2" / "lineage.yaml").read_text())
    assert lineage["conversion"]["label_mismatches"] == 0 and lineage["conversion"]["data"]["rows"] == len(x)
    assert_versions_answer_alike(tmp_path, "hgb", x)
