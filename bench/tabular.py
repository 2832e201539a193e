"""Tabular models native vs converted to ONNX (`serving convert`), in one process, side by side:
batch-1 latency (median of single-row calls through the runtime) and 100k-row throughput
(chunks of 4,096 rows), for a gradient-boosted model and a random forest of each library, on
100,000 synthetic rows of 30 features. Writes bench/results/tabular.md.

    .venv/bin/python bench/tabular.py [--rows 100000] [--out bench/results/tabular.md]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from serving.control.convert import convert
from serving.errors import ServingError
from serving.offline.scorer import open_version, resolve_version

Array = np.ndarray[Any, Any]
FEATURES = 30


def train(root: Path, x: Array, y: Array) -> list[tuple[str, str, str]]:
    """(model name, library, kind) of each model written under ``root``."""
    import joblib
    import lightgbm
    import xgboost
    from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier, RandomForestClassifier

    fit = slice(0, 20_000)
    models: list[tuple[str, str, str]] = []

    def write(name: str, platform_: str, save: Any, filename: str) -> None:
        folder = root / name / "1"
        folder.mkdir(parents=True)
        save(folder / filename)
        (root / name / "model.yaml").write_text(yaml.safe_dump({"platform": platform_, "max_batch_size": 4096}))

    sk = {
        "sk_gb": ("gradient boosting (GradientBoostingClassifier, 100 trees)", GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=0)),
        "sk_hgb": ("gradient boosting (HistGradientBoostingClassifier, 100 iterations)", HistGradientBoostingClassifier(max_iter=100, random_state=0)),
        "sk_rf": ("random forest (RandomForestClassifier, 100 trees, depth 10)", RandomForestClassifier(n_estimators=100, max_depth=10, n_jobs=1, random_state=0)),
    }  # fmt: skip
    for name, (kind, est) in sk.items():
        est.fit(x[fit], y[fit])
        write(name, "sklearn", lambda p, e=est: joblib.dump(e, p), "model.joblib")
        models.append((name, "scikit-learn", kind))
    xg = {
        "xgb_gb": ("gradient boosting (100 trees, depth 6)", xgboost.XGBClassifier(n_estimators=100, max_depth=6, n_jobs=1)),
        "xgb_rf": ("random forest (XGBRFClassifier, 100 trees, depth 10)", xgboost.XGBRFClassifier(n_estimators=100, max_depth=10, n_jobs=1)),
    }  # fmt: skip
    for name, (kind, est) in xg.items():
        est.fit(x[fit], y[fit])
        write(name, "xgboost", lambda p, e=est: e.save_model(p), "model.json")
        models.append((name, "XGBoost", kind))
    lg = {
        "lgbm_gb": ("gradient boosting (100 trees, 31 leaves)", lightgbm.LGBMClassifier(n_estimators=100, verbose=-1, n_jobs=1)),
        "lgbm_rf": ("random forest (boosting_type=rf, 100 trees)", lightgbm.LGBMClassifier(boosting_type="rf", n_estimators=100, bagging_freq=1, bagging_fraction=0.7, verbose=-1, n_jobs=1)),
    }  # fmt: skip
    for name, (kind, est) in lg.items():
        est.fit(x[fit], y[fit])
        write(name, "lightgbm", lambda p, e=est: e.booster_.save_model(p), "model.txt")
        models.append((name, "LightGBM", kind))
    return models


def latency_us(instance: Any, row: dict[str, Array], calls: int = 2000) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        instance.predict(row)
        times.append(time.perf_counter_ns() - start)
    return float(np.median(times)) / 1000


def throughput(instance: Any, x: Array, chunk: int = 4096) -> float:
    start = time.perf_counter()
    for i in range(0, len(x), chunk):
        instance.predict({"input": x[i : i + chunk]})
    return len(x) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "tabular.md")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=args.rows, n_features=FEATURES, n_informative=12, random_state=0)
    lines = [
        "# Tabular models: native runtime vs `serving convert` ONNX",
        "",
        f"`.venv/bin/python bench/tabular.py` on {platform.node() or 'this machine'} ({platform.machine()}), one process, "
        "one thread per runtime; {:,} rows x {} features (make_classification), models fitted on 20,000 of them. "
        "Batch-1: median of 2,000 single-row calls through the runtime (what one online request costs the model). "
        "Throughput: the {:,} rows in chunks of 4,096 (what `serving score` does). Parity: the conversion's check "
        "on the first 10,000 rows.".format(args.rows, FEATURES, args.rows),
        "",
        "| library | model | batch-1 native µs | batch-1 ONNX µs | rows/s native | rows/s ONNX | ONNX / native rows/s | parity |",
        "|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="bench-tabular-") as tmp:
        root = Path(tmp)
        data = root / "check.parquet"
        pq.write_table(pa.table({"input": pa.array(list(x[:10_000]), pa.list_(pa.float64()))}), data)
        for name, library, kind in train(root, x, y):
            native = open_version(*resolve_version(root, f"{name}:1"), threads=1)
            row = {"input": x[:1]}
            nat_lat, nat_rate = latency_us(native, row), throughput(native, x)
            native.unload()
            try:
                done = convert(root, f"{name}:1", [str(data)], tolerance=1e-4)
                parity = f"max diff {done.record.max_abs_diff:.1e}, 0 label changes"
                onnx = open_version(*resolve_version(root, f"{name}:{done.version}"), threads=1)
                onnx_lat, onnx_rate = latency_us(onnx, row), throughput(onnx, x)
                onnx.unload()
                cells = f"{onnx_lat:.0f} | {nat_rate:,.0f} | {onnx_rate:,.0f} | {onnx_rate / nat_rate:.2f}"
            except ServingError as exc:
                parity = "refused: " + exc.message.split("; worst rows")[0].split(" on 10,000 rows: ")[-1][:160]
                cells = f"n/a | {nat_rate:,.0f} | n/a | n/a"
            line = f"| {library} | {kind} | {nat_lat:.0f} | {cells} | {parity} |"
            print(line, flush=True)
            lines.append(line)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
