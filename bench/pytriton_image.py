"""PyTriton peer of the `digits_image` pipeline for bench/image_pipeline.py: Triton's C++ front end
(HTTP + gRPC) with dynamic batching up to 64 rows / 500 us, and in its ``@batch`` Python callable
the same work as the pipeline: decode each PNG (Pillow), gray, 8x8, scaled like scikit-learn's
digits, the `digits` ONNX model (onnxruntime, one thread), the label as text and its probability.
Runs in bench/.pytriton (its own venv). Prints "ready" once Triton answers."""

from __future__ import annotations

import argparse
import io

import numpy as np
import onnxruntime as ort
from PIL import Image
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="path of the digits ONNX file")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    args = parser.parse_args()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    labels = np.array([str(i).encode() for i in range(10)], dtype=np.object_)

    def features(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as img:
            gray = img.convert("L").resize((8, 8), Image.Resampling.BOX)
        return (255.0 - np.asarray(gray, dtype=np.float32).reshape(-1)) / 255.0

    @batch  # type: ignore[misc]
    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        pixels = np.stack([features(bytes(v)) for v in image.reshape(-1)])
        (probabilities,) = sess.run(["probabilities"], {"input": pixels})
        best = np.argmax(probabilities, axis=1)
        return {
            "label": labels[best].reshape(-1, 1),
            "probability": probabilities[np.arange(len(best)), best].reshape(-1, 1).astype(np.float32),
            "probabilities": probabilities.astype(np.float32),
        }

    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
    )
    with Triton(config=config, security_config=TritonSecurityConfig(restricted_endpoints=[])) as triton:
        triton.bind(
            model_name="digits_image",
            infer_func=infer,
            inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
            outputs=[
                Tensor(name="label", dtype=np.bytes_, shape=(1,)),
                Tensor(name="probability", dtype=np.float32, shape=(1,)),
                Tensor(name="probabilities", dtype=np.float32, shape=(10,)),
            ],
            config=ModelConfig(max_batch_size=64, batcher=DynamicBatcher(max_queue_delay_microseconds=500)),
            strict=False,
        )
        print("ready", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
