"""What each Parquet compression costs the prediction log's writer, and what it saves: 10,000 rows
of 784 FP32 inputs (the reference MLP's) written as the log writes them (a fixed-size list column,
no dictionary, no statistics), best of five, for three kinds of inputs: random floats (nothing to
compress), digit images scaled to 28x28 (sparse, as image inputs are), and 16 rows repeated (a
load generator's inputs).

    .venv/bin/python bench/log_compression.py
"""

from __future__ import annotations

import io
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.datasets import load_digits

ROWS = 10_000
WIDTH = 784
CODECS = (("lz4", None), ("zstd", 1), ("zstd", -1), ("snappy", None), ("none", None))


def inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    random = rng.random((ROWS, WIDTH), dtype=np.float32)
    digits = load_digits().images.astype(np.float32) / 16.0
    nearest = np.arange(28) * 8 // 28
    images = digits[:, nearest][:, :, nearest].reshape(len(digits), WIDTH)
    return {
        "random floats": random,
        "digit images, 28x28": images[rng.integers(0, len(images), ROWS)],
        "16 rows repeated": np.tile(random[:16], (ROWS // 16, 1)),
    }


def main() -> None:
    print("| inputs | compression | us a row | bytes a row |")
    print("|---|---|---|---|")
    for kind, x in inputs().items():
        table = pa.table({"input": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), WIDTH)})
        for codec, level in CODECS:  # warm: the first writes fault their memory in and size their buffers
            pq.write_table(table, io.BytesIO(), compression=codec, compression_level=level)
        for codec, level in CODECS:
            best, size = float("inf"), 0
            for _ in range(5):
                out = io.BytesIO()
                start = time.perf_counter()
                pq.write_table(
                    table, out, compression=codec, compression_level=level, use_dictionary=False, write_statistics=False
                )
                best = min(best, time.perf_counter() - start)
                size = out.tell()
            name = codec if level is None else f"{codec} level {level}"
            print(f"| {kind} | {name} | {best / ROWS * 1e6:.2f} | {size / ROWS:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
