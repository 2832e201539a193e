"""Locust scenarios for any Open Inference Protocol (KServe V2) server.

Users: ``HttpJsonUser`` (JSON tensors), ``HttpBinaryUser`` (binary tensor extension) and
``GrpcUser`` (``inference.GRPCInferenceService/ModelInfer``, reported to Locust as request
events). Inputs are built from the target model's metadata (``GET /v2/models/{m}``), so any
model works. Each request carries an ``X-Request-ID`` (gRPC: ``x-request-id`` metadata).

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --grpc-host 127.0.0.1:8001 \\
        --model digits --shape step HttpBinaryUser GrpcUser

Options (also ``LOADTEST_*`` environment variables): --model, --model-version, --grpc-host,
--shape constant|step|spike, --peak-users, --duration-s, --max-requests.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from typing import Any

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from locust import FastHttpUser, LoadTestShape, User, between, events, task  # noqa: E402
from locust.env import Environment  # noqa: E402

from serving import codecs  # noqa: E402
from serving.protocol._pb import inference_pb2 as pb  # noqa: E402
from serving.protocol._pb import inference_pb2_grpc  # noqa: E402


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--model", env_var="LOADTEST_MODEL", default="digits", help="model to load")
    parser.add_argument("--model-version", env_var="LOADTEST_MODEL_VERSION", default="", help="version ('' = newest)")
    parser.add_argument("--grpc-host", env_var="LOADTEST_GRPC_HOST", default="127.0.0.1:8001", help="host:port")
    parser.add_argument("--shape", env_var="LOADTEST_SHAPE", default="constant", choices=["constant", "step", "spike"])
    parser.add_argument("--peak-users", env_var="LOADTEST_PEAK_USERS", type=int, default=8)
    parser.add_argument("--duration-s", env_var="LOADTEST_DURATION_S", type=float, default=30.0)
    parser.add_argument("--max-requests", env_var="LOADTEST_MAX_REQUESTS", type=int, default=100_000)


class Target:
    """The model's inputs, read once from its metadata: one row of valid random data."""

    inputs: list[tuple[str, str, list[int], np.ndarray[Any, Any]]] = []
    path = ""
    sent = 0

    @classmethod
    def load(cls, environment: Environment) -> None:
        opts = environment.parsed_options
        assert opts is not None and environment.host
        version = f"/versions/{opts.model_version}" if opts.model_version else ""
        cls.path = f"/v2/models/{opts.model}{version}"
        with urllib.request.urlopen(f"{environment.host}{cls.path}", timeout=10) as r:
            metadata = json.loads(r.read())
        rng = np.random.default_rng(0)
        cls.inputs = []
        for spec in metadata["inputs"]:
            shape = [1 if d < 0 else d for d in spec["shape"]]
            cls.inputs.append((spec["name"], spec["datatype"], shape, random_tensor(rng, spec["datatype"], shape)))


def random_tensor(rng: np.random.Generator, datatype: str, shape: list[int]) -> np.ndarray[Any, Any]:
    if datatype == "BYTES":
        arr = np.empty(shape, dtype=object)
        arr.reshape(-1)[:] = [f"item-{i}".encode() for i in range(arr.size)]
        return arr
    if datatype == "BOOL":
        return rng.random(shape) > 0.5
    dtype = codecs.numpy_dtype(datatype)
    if dtype.kind == "f":
        return rng.random(shape).astype(dtype)
    return rng.integers(0, 100, size=shape).astype(dtype)


@events.test_start.add_listener
def _on_start(environment: Environment, **kwargs: Any) -> None:
    Target.load(environment)


@events.request.add_listener
def _bound_requests(**kwargs: Any) -> None:
    Target.sent += 1
    env = kwargs.get("context", {}).get("environment")
    if env is not None and env.parsed_options and Target.sent >= env.parsed_options.max_requests and env.runner:
        env.runner.quit()


class _Base(User):
    abstract = True
    wait_time = between(0.0, 0.01)

    def context(self) -> dict[str, Any]:
        return {"environment": self.environment}


class _HttpInferUser(FastHttpUser):
    """POST .../infer with a body built once in ``on_start``."""

    abstract = True
    wait_time = between(0.0, 0.01)
    label = ""
    body: bytes = b""
    headers: dict[str, str] = {}

    def context(self) -> dict[str, Any]:
        return {"environment": self.environment}

    @task
    def infer(self) -> None:
        headers = {**self.headers, "X-Request-ID": uuid.uuid4().hex}
        self.client.post(f"{Target.path}/infer", data=self.body, headers=headers, name=self.label)


class HttpJsonUser(_HttpInferUser):
    """JSON tensors."""

    label = "http-json infer"

    def on_start(self) -> None:
        inputs = [
            {"name": n, "datatype": dt, "shape": shape, "data": codecs.to_list(arr, dt)}
            for n, dt, shape, arr in Target.inputs
        ]
        self.body = json.dumps({"inputs": inputs}).encode()
        self.headers = {"Content-Type": "application/json"}


class HttpBinaryUser(_HttpInferUser):
    """The binary tensor data extension, binary outputs too."""

    label = "http-binary infer"

    def on_start(self) -> None:
        blobs, inputs = [], []
        for n, dt, shape, arr in Target.inputs:
            blob = codecs.to_raw(arr, dt)
            blobs.append(blob)
            inputs.append({"name": n, "datatype": dt, "shape": shape, "parameters": {"binary_data_size": len(blob)}})
        header = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}).encode()
        self.body = header + b"".join(blobs)
        self.headers = {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        }


class GrpcUser(_Base):
    """ModelInfer with raw_input_contents; each call fires a Locust request event."""

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        assert opts is not None
        self.channel = grpc.insecure_channel(opts.grpc_host)
        self.stub = inference_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.request = pb.ModelInferRequest(model_name=opts.model, model_version=opts.model_version)
        for n, dt, shape, arr in Target.inputs:
            self.request.inputs.add(name=n, datatype=dt, shape=shape)
            self.request.raw_input_contents.append(codecs.to_raw(arr, dt))
        self.size = self.request.ByteSize()

    def on_stop(self) -> None:
        self.channel.close()

    @task
    def infer(self) -> None:
        start = time.perf_counter()
        exception: Exception | None = None
        length = 0
        try:
            response = self.stub.ModelInfer(self.request, metadata=(("x-request-id", uuid.uuid4().hex),), timeout=30)
            length = response.ByteSize()
        except grpc.RpcError as exc:
            exception = exc
        self.environment.events.request.fire(
            request_type="grpc",
            name="grpc infer",
            response_time=(time.perf_counter() - start) * 1000,
            response_length=length,
            exception=exception,
            context=self.context(),
        )


class StagedShape(LoadTestShape):
    """constant: peak users throughout; step: four equal steps up to the peak; spike: a
    quarter of the peak with a burst to the peak in the middle fifth. Stops at --duration-s."""

    def tick(self) -> tuple[int, float] | None:
        opts = self.runner.environment.parsed_options if self.runner else None
        if opts is None:
            return None
        t, peak, total = self.get_run_time(), max(opts.peak_users, 1), opts.duration_s
        if t >= total:
            return None
        if opts.shape == "step":
            users = max(1, peak * (int(4 * t / total) + 1) // 4)
        elif opts.shape == "spike":
            users = peak if 0.4 * total <= t < 0.6 * total else max(1, peak // 4)
        else:
            users = peak
        return users, float(peak)
