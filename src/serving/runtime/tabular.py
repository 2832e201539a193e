"""``platform: sklearn | xgboost | lightgbm``: a trained estimator served with no code to write.

Artifacts: scikit-learn ``model.joblib`` / ``model.pkl`` (any estimator or Pipeline with
``predict``), XGBoost ``model.json`` / ``model.ubj``, LightGBM ``model.txt``; or a ``model.onnx``
that ``serving convert`` wrote, with the same contract (run by onnxruntime). A pickle runs
code when loaded: serve only repositories you trust.

Inputs, unless model.yaml declares them: one FP64 input per named feature (a model trained on a
DataFrame knows its feature names), each of shape [1], stacked in the model's order; otherwise
one ``input`` of shape [n_features]. Outputs: a classifier answers ``label`` (its class: the
model's classes, or model.yaml's ``labels`` by index) and ``probabilities`` (FP32, one per
class); a regressor answers ``prediction`` (FP64).
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.config.model import ModelConfig, Platform
from serving.errors import ModelExecutionError, ModelNotReadyError
from serving.runtime.base import Arrays
from serving.types import TensorSpec

log = logging.getLogger(__name__)

Array = np.ndarray[Any, Any]

# scikit-learn warns on every call when an estimator fitted on a DataFrame gets an array; the
# columns are stacked in the order it was fitted with, so the warning says nothing here.
warnings.filterwarnings("ignore", message="X does not have valid feature names")


@dataclass
class Estimator:
    """What every library's model is reduced to: how many features (and their names), its
    classes (None: a regressor), and one function from a float64 matrix to scores."""

    n_features: int
    feature_names: tuple[str, ...] | None
    classes: tuple[Any, ...] | None
    scores: Callable[[Array], Array]
    """[n, n_features] -> probabilities [n, classes] (a classifier) or predictions [n] (a regressor)."""
    raw: Any = None
    """The library's own object (what ``serving convert`` hands to a converter)."""


class TabularModel:
    """An sklearn, XGBoost or LightGBM model behind the runtime ``Model`` protocol."""

    def __init__(self, path: Path, config: ModelConfig) -> None:
        self.path = path
        self.platform = config.platform.value
        self.device = "cpu"
        self._config = config
        self._estimator: Estimator | None = None
        self._order: tuple[str, ...] = ()
        self._label_names: tuple[str, ...] | None = config.labels

    def load(self) -> None:
        loaders = {Platform.SKLEARN: _sklearn, Platform.XGBOOST: _xgboost, Platform.LIGHTGBM: _lightgbm}
        try:
            self._estimator = loaders[self._config.platform](self.path, self._config.instance.num_threads)
        except ModelNotReadyError:
            raise
        except ImportError as exc:
            extra = self._config.platform.value
            raise ModelNotReadyError(
                f"{self.path}: {exc.name or exc} is not installed (pip install 'serving[{extra}]')"
            ) from exc
        except Exception as exc:
            raise ModelNotReadyError(f"{self.path}: cannot load the model: {type(exc).__name__}: {exc}") from exc
        est = self._estimator
        if est.classes is not None and self._label_names is not None and len(self._label_names) != len(est.classes):
            raise ModelNotReadyError(
                f"{self.path}: model.yaml lists {len(self._label_names)} labels, the model has {len(est.classes)} classes"
            )
        inputs, _ = self.signature()
        if len(inputs) > 1:
            self._order = tuple(s.name for s in inputs)
            known = set(est.feature_names or ())
            unknown = [n for n in self._order if est.feature_names and n not in known]
            if unknown or len(self._order) != est.n_features:
                raise ModelNotReadyError(
                    f"{self.path}: model.yaml's inputs {list(self._order)[:5]}... do not match the model's "
                    f"{est.n_features} features {list(est.feature_names or ())[:5]}"
                )
            if est.feature_names:
                self._order = est.feature_names  # stacked in the order the model was fitted with
        log.info("loaded %s (%s, %d features)", self.path, self.platform, est.n_features)

    def signature(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        est = self._require()
        if self._config.inputs:
            inputs = tuple(TensorSpec(t.name, t.datatype, t.shape) for t in self._config.inputs)
        elif est.feature_names:
            inputs = tuple(TensorSpec(n, "FP64", (1,)) for n in est.feature_names)
        else:
            inputs = (TensorSpec("input", "FP64", (est.n_features,)),)
        if est.classes is None:
            return _batched(inputs), (TensorSpec("prediction", "FP64", (-1, 1)),)
        label_type = "BYTES" if self._label_names or _textual(est.classes) else "INT64"
        outputs = (
            TensorSpec("label", label_type, (-1, 1)),
            TensorSpec("probabilities", "FP32", (-1, len(est.classes))),
        )
        return _batched(inputs), outputs

    @property
    def estimator(self) -> Estimator:
        return self._require()

    @property
    def raw(self) -> Any:
        return self._require().raw

    @property
    def feature_order(self) -> tuple[str, ...]:
        """The named inputs in the order they are stacked (empty: one vector input)."""
        return self._order

    def label_table(self) -> Array:
        """``label`` for each class index: bytes (text classes or model.yaml labels) or int64."""
        est = self._require()
        assert est.classes is not None
        names = self._label_names or est.classes
        if self._label_names or _textual(est.classes):
            return np.array([str(n).encode() for n in names], dtype=np.object_)
        return np.asarray(names, dtype=np.int64)

    def predict(self, inputs: Arrays, outputs: list[str]) -> Arrays:
        est = self._require()
        if self._order:
            matrix = np.concatenate([inputs[n].reshape(len(inputs[n]), -1) for n in self._order], axis=1)
        else:
            matrix = next(iter(inputs.values()))
        matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.ndim != 2:
            matrix = matrix.reshape(len(matrix), -1)
        try:
            scores = est.scores(matrix)
        except Exception as exc:
            raise ModelExecutionError(f"{self.platform} failed: {type(exc).__name__}: {exc}") from exc
        if est.classes is None:
            return {"prediction": np.asarray(scores, dtype=np.float64).reshape(-1, 1)}
        out: Arrays = {}
        if "probabilities" in outputs:
            out["probabilities"] = scores.astype(np.float32, copy=False)
        if "label" in outputs:
            out["label"] = self.label_table()[np.argmax(scores, axis=1)].reshape(-1, 1)
        return out

    def unload(self) -> None:
        self._estimator = None

    def _require(self) -> Estimator:
        if self._estimator is None:
            raise ModelNotReadyError(f"{self.path}: model is not loaded")
        return self._estimator


def _batched(inputs: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
    """The model's own shapes carry the batch dimension (the runtime protocol's convention)."""
    return tuple(TensorSpec(s.name, s.datatype, (-1, *s.shape)) for s in inputs)


def _textual(classes: tuple[Any, ...]) -> bool:
    return any(isinstance(c, str | bytes | np.str_) for c in classes)


def _two_columns(p: Array) -> Array:
    """A binary model's P(class 1) as [P(0), P(1)]."""
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    return np.stack([1.0 - p, p], axis=1)


def _sklearn(path: Path, threads: int) -> Estimator:
    import joblib

    est = joblib.load(path)
    if not callable(getattr(est, "predict", None)):
        raise ModelNotReadyError(f"{path}: holds a {type(est).__name__}, not an estimator with predict")
    names = getattr(est, "feature_names_in_", None)
    n = int(getattr(est, "n_features_in_", len(names) if names is not None else 0))
    if not n:
        raise ModelNotReadyError(f"{path}: the estimator is not fitted (no n_features_in_)")
    classes = getattr(est, "classes_", None)
    if classes is None:
        return Estimator(n, _names(names), None, est.predict, est)
    if callable(getattr(est, "predict_proba", None)):
        scores: Callable[[Array], Array] = est.predict_proba
    else:  # no probabilities (an SVC without probability=True): one-hot of its prediction
        index = {c: i for i, c in enumerate(classes.tolist())}

        def scores(x: Array) -> Array:
            picked = est.predict(x)
            out = np.zeros((len(x), len(index)))
            out[np.arange(len(x)), [index[c] for c in picked.tolist()]] = 1.0
            return out

    return Estimator(n, _names(names), tuple(classes.tolist()), scores, est)


def _xgboost(path: Path, threads: int) -> Estimator:
    import xgboost

    booster = xgboost.Booster(model_file=str(path))
    if threads:
        booster.set_param({"nthread": threads})
    objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
    n = booster.num_features()
    names = _names(booster.feature_names)

    def raw(x: Array) -> Array:
        return np.asarray(booster.inplace_predict(x, validate_features=False))

    if objective == "binary:logistic":
        return Estimator(n, names, (0, 1), lambda x: _two_columns(raw(x)), booster)
    if objective == "multi:softprob":
        k = int(json.loads(booster.save_config())["learner"]["learner_model_param"]["num_class"])
        return Estimator(n, names, tuple(range(k)), lambda x: raw(x).reshape(len(x), k), booster)
    if objective.startswith("multi:") or objective.startswith("binary:"):
        raise ModelNotReadyError(
            f"{path}: objective {objective} gives no probabilities; train with binary:logistic or multi:softprob"
        )
    return Estimator(n, names, None, raw, booster)


def _lightgbm(path: Path, threads: int) -> Estimator:
    import lightgbm

    booster = lightgbm.Booster(model_file=str(path))
    objective = str(booster.dump_model(num_iteration=0).get("objective", ""))
    kind = objective.split()[0] if objective else ""
    n = booster.num_feature()
    given = booster.feature_name()
    names = None if all(re.fullmatch(r"Column_\d+", f) for f in given) else _names(given)

    def raw(x: Array) -> Array:
        return np.asarray(booster.predict(x, num_threads=threads) if threads else booster.predict(x))

    if kind in {"binary", "cross_entropy"}:
        return Estimator(n, names, (0, 1), lambda x: _two_columns(raw(x)), booster)
    if kind in {"multiclass", "multiclassova"}:
        k = booster.num_model_per_iteration()
        return Estimator(n, names, tuple(range(k)), lambda x: raw(x).reshape(len(x), k), booster)
    return Estimator(n, names, None, raw, booster)


def _names(names: Any) -> tuple[str, ...] | None:
    return tuple(str(n) for n in names) if names is not None and len(names) else None
