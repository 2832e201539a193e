"""Evaluation metrics of a model version on labelled data (numpy only, no I/O).

Classification: accuracy, macro F1, log loss (needs class probabilities), ROC AUC (binary,
needs the positive class's score). Regression: RMSE, MAE, R². The metric's direction is
known here, so gates can say what "worse" means.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]

HIGHER_IS_BETTER = {
    "accuracy": True,
    "macro_f1": True,
    "roc_auc": True,
    "r2": True,
    "log_loss": False,
    "rmse": False,
    "mae": False,
}
EPS = 1e-15


def classification_metrics(
    truth: Array, predicted: Array, probabilities: Array | None, classes: Array
) -> dict[str, float]:
    """``truth`` and ``predicted``: class values (same kind); ``probabilities``: rows x
    len(classes), in the order of ``classes`` (None when the model gives no scores)."""
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    out = {"accuracy": float(np.mean(truth == predicted)), "macro_f1": macro_f1(truth, predicted)}
    if probabilities is not None:
        index = {c: i for i, c in enumerate(classes.tolist())}
        rows = np.array([index.get(t, -1) for t in truth.tolist()])
        if np.all(rows >= 0):
            p = np.clip(probabilities[np.arange(len(rows)), rows].astype(np.float64), EPS, 1.0)
            out["log_loss"] = float(-np.mean(np.log(p)))
            if len(classes) == 2 and len(set(rows.tolist())) == 2:
                out["roc_auc"] = roc_auc(rows == 1, probabilities[:, 1])
    return out


def macro_f1(truth: Array, predicted: Array) -> float:
    """Mean over the classes seen in truth or predictions of each class's F1."""
    scores = []
    for c in np.union1d(truth, predicted):
        tp = float(np.sum((predicted == c) & (truth == c)))
        fp = float(np.sum((predicted == c) & (truth != c)))
        fn = float(np.sum((predicted != c) & (truth == c)))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def roc_auc(positive: Array, score: Array) -> float:
    """Area under the ROC curve: the chance a random positive outranks a random negative
    (ties count half), from average ranks."""
    score = np.asarray(score, np.float64)
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), np.float64)
    sorted_scores = score[order]
    i = 0
    while i < len(score):  # average rank over ties
        j = i
        while j + 1 < len(score) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    pos = np.asarray(positive, bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def as_text(values: Array) -> Array:
    """Class values compared as text: 3, 3.0, "3" and b"3" are one class."""
    out = []
    for v in np.asarray(values).tolist():
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, float) and v.is_integer():
            v = int(v)
        out.append(str(v))
    return np.asarray(out, dtype=object)


def predicted_classes(outputs: list[Array], labels: tuple[str, ...] | None) -> Array | None:
    """Each row's predicted class, as text, from a classifier's outputs (rows first): its own class
    output (one non-float value per row) if it has one, else the argmax of its first score output
    (named by ``labels``, else numbered). None: nothing reads as a class (a regression)."""
    for values in outputs:
        if values.dtype.kind != "f" and values.reshape(len(values), -1).shape[1] == 1:
            return as_text(values.reshape(-1))
    for values in outputs:
        scores = values.reshape(len(values), -1)
        if values.dtype.kind == "f" and scores.shape[1] > 1:
            best = np.argmax(scores, axis=1)
            names = np.asarray(labels, dtype=object) if labels and len(labels) == scores.shape[1] else None
            return names[best] if names is not None else as_text(best)
    return None


def regression_metrics(truth: Array, predicted: Array) -> dict[str, float]:
    t = np.asarray(truth, np.float64).reshape(-1)
    p = np.asarray(predicted, np.float64).reshape(-1)
    err = p - t
    total = float(np.sum((t - t.mean()) ** 2))
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "r2": float(1.0 - np.sum(err**2) / total) if total > 0 else 0.0,
    }
