"""PyTriton peer for `make bench`: Triton's C++ front end (HTTP + gRPC) with dynamic batching
up to 128 rows / 500 us, the model = onnxruntime in ``@batch`` Python callables: ``--instances``
model instances (PyTriton runs one callable per instance) sharing one session with ``--threads``
intra-op threads, as serving's ``instance: {count, num_threads}`` runs it; ``--also`` serves the
same file under more names with other layouts. Runs in bench/.pytriton (its own venv). Prints
"ready" once Triton answers."""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64}
"""onnxruntime's output types as numpy's (the reference MLP's FP32 scores, the digits model's INT64 label)."""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="path of the ONNX file")
    parser.add_argument("--name", default="reference_mlp")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--instances", type=int, default=1, help="model instances (Triton's instance_group count)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument(
        "--also", action="append", default=[], metavar="NAME:INSTANCES:THREADS",
        help="the same ONNX file served under another name with another layout (repeatable)",
    )  # fmt: skip
    args = parser.parse_args()
    layouts = [(args.name, args.instances, args.threads)]
    for also in args.also:
        name, instances, threads = also.split(":")
        layouts.append((name, int(instances), int(threads)))
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
    )
    # perf_analyzer reads the statistics extension, which PyTriton puts behind a token by
    # default; serving has no auth on 127.0.0.1 either, so neither side pays for one.
    with Triton(config=config, security_config=TritonSecurityConfig(restricted_endpoints=[])) as triton:
        for name, instances, threads in layouts:
            bind(triton, args.model, name, instances, threads)
        print("ready", flush=True)
        triton.serve()


def bind(triton: Triton, model: str, name: str, instances: int, threads: int) -> None:
    """Serve ``model`` as ``name``: ``instances`` callables sharing one session of ``threads`` threads."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    outs = sess.get_outputs()

    @batch  # type: ignore[misc]
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        results = sess.run(None, {inp.name: inputs[inp.name]})
        return {o.name: r for o, r in zip(outs, results)}

    triton.bind(
        model_name=name,
        infer_func=[infer] * instances,
        inputs=[Tensor(name=inp.name, dtype=np.float32, shape=tuple(inp.shape[1:]))],
        outputs=[Tensor(name=o.name, dtype=DTYPES[o.type], shape=tuple(o.shape[1:]) or (-1,)) for o in outs],
        config=ModelConfig(max_batch_size=128, batcher=DynamicBatcher(max_queue_delay_microseconds=500)),
        strict=False,
    )


if __name__ == "__main__":
    main()
