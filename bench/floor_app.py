"""The Ray Serve request path with no work behind it: the ceiling for any Serve app here.

Same ingress (HAProxy fast path or Serve's default proxy), same one-replica application,
same gRPC servicer and the same metadata/config answers as `serving` (perf_analyzer needs
them), but inference answers a response computed once at start-up: no decoding, no
batching, no model. `make bench` drives it with the same perf_analyzer runs as the real
server, so real/floor says what `serving`'s own work costs on top of Serve's per-request cost.

    python bench/floor_app.py --repository DIR --http-port P --grpc-port P [--default-proxy]

(No ``from __future__ import annotations`` here: Ray pickles the deployment class, and FastAPI
must see the route's ``Request`` annotation as the class, not as a string.)
"""

import argparse
import os
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import Response


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--default-proxy", action="store_true")
    args = parser.parse_args()
    fast = "0" if args.default_proxy else "1"
    os.environ.update(
        RAY_SERVE_ENABLE_HA_PROXY=fast,
        RAY_SERVE_THROUGHPUT_OPTIMIZED=fast,
        RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S="1",
    )
    import ray
    from ray import serve

    from serving.deploy.app import GRPC_SERVICER_FUNCTIONS
    from serving.protocol import grpc_v2, rest_v2
    from serving.protocol.http import build_http_app
    from serving.service import LocalInferenceService
    from serving.types import InferenceRequest, RequestedOutput, Tensor

    ray.init(address="local", include_dashboard=False, _system_config={"worker_niceness": 0})
    serve.start(
        http_options={"host": "127.0.0.1", "port": args.http_port},
        grpc_options={"port": args.grpc_port, "grpc_servicer_functions": GRPC_SERVICER_FUNCTIONS},
    )

    @serve.deployment(max_ongoing_requests=1024, logging_config={"enable_access_log": False})
    @serve.ingress()
    class Floor:
        async def __init__(self, repository: str) -> None:
            self.service = LocalInferenceService.from_repository(Path(repository))
            self.grpc = grpc_v2.GrpcAdapter(self.service)
            self.http_answers: dict[str, tuple[bytes, int]] = {}
            self.grpc_answers: dict[str, Any] = {}
            for name in self.service.registry.names():
                mv = self.service.registry.get(name)
                inputs = [
                    Tensor(s.name, s.datatype, np.zeros([1, *[max(d, 1) for d in s.shape]], dtype=np.float32))
                    for s in mv.inputs
                ]
                request = InferenceRequest(
                    name, inputs, outputs=[RequestedOutput(o.name, {"binary_data": True}) for o in mv.outputs]
                )
                response = await self.service.infer(request)
                encoded = rest_v2.from_core(response, request)
                self.http_answers[name] = (encoded.body, encoded.header_length or 0)
                self.grpc_answers[name] = grpc_v2.from_core(response, raw=True)

        def __serve_build_asgi_app__(self) -> Any:
            app = build_http_app(self.service)

            async def infer(name: str, request: Request) -> Response:
                await request.body()
                self.count(name)
                body, header_length = self.http_answers[name]
                return Response(
                    body, media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(header_length)},
                )  # fmt: skip

            app.router.add_api_route("/v2/models/{name}/infer", infer, methods=["POST"])
            app.router.routes.insert(0, app.router.routes.pop())  # ahead of the real infer route
            return app

        def count(self, name: str) -> None:
            # perf_analyzer reads the statistics extension after each window and needs them to move.
            stats = self.service.registry.get(name).stats
            stats.inference_count += 1
            stats.execution_count += 1
            stats.success.add(0)

        async def ModelInfer(self, request: Any, grpc_context: Any) -> Any:
            self.count(request.model_name)
            return self.grpc_answers[request.model_name]

        async def ModelMetadata(self, request: Any, grpc_context: Any) -> Any:
            return await self.grpc.ModelMetadata(request, grpc_context)

        async def ModelConfig(self, request: Any, grpc_context: Any) -> Any:
            return await self.grpc.ModelConfig(request, grpc_context)

        async def ServerLive(self, request: Any, grpc_context: Any) -> Any:
            return await self.grpc.ServerLive(request, grpc_context)

        async def ServerReady(self, request: Any, grpc_context: Any) -> Any:
            return await self.grpc.ServerReady(request, grpc_context)

        async def ModelReady(self, request: Any, grpc_context: Any) -> Any:
            return await self.grpc.ModelReady(request, grpc_context)

        async def ServerMetadata(self, request: Any, grpc_context: Any) -> Any:
            return await self.grpc.ServerMetadata(request, grpc_context)

        async def ModelStatistics(self, request: Any, grpc_context: Any) -> Any:
            return await self.grpc.ModelStatistics(request, grpc_context)

    serve.run(Floor.bind(str(args.repository.resolve())), name="floor", route_prefix="/")
    print("ready", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()  # type: ignore[no-untyped-call]
    ray.shutdown()


if __name__ == "__main__":
    main()
