"""The Python floor for `make bench`: one bare grpc.aio process that answers V2 ModelInfer with
a precomputed response (no model, no validation, no framework), plus the metadata and config
RPCs perf_analyzer asks for. What any Python gRPC server costs before it does any work."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import json_format

from serving.protocol._pb import inference_pb2 as pb
from serving.protocol.grpc_v2 import SERVICE_NAME as SERVICE
from serving.protocol.grpc_v2 import from_core
from serving.protocol.servers import grpc_server_options
from serving.protocol.triton import config_json
from serving.service.local import LocalInferenceService
from serving.types import InferenceRequest, Tensor


async def serve(repository: Path, model: str, port: int) -> None:
    service = LocalInferenceService.from_repository(repository)
    md = service.model_metadata(model)
    spec = md.inputs[0]
    x = np.zeros([1, *spec.shape[1:]], np.float32)
    response = await service.infer(InferenceRequest(model, [Tensor(spec.name, spec.datatype, x)]))
    config = config_json(service.model_config(model))
    await service.close()
    tm = pb.ModelMetadataResponse.TensorMetadata
    answers = {
        "ModelInfer": from_core(response, raw=True).SerializeToString(),
        "ModelMetadata": pb.ModelMetadataResponse(
            name=md.name,
            versions=md.versions,
            platform=md.platform,
            inputs=[tm(name=s.name, datatype=s.datatype, shape=s.shape) for s in md.inputs],
            outputs=[tm(name=s.name, datatype=s.datatype, shape=s.shape) for s in md.outputs],
        ).SerializeToString(),
        "ModelConfig": json_format.ParseDict(
            {"config": config}, pb.ModelConfigResponse(), ignore_unknown_fields=True
        ).SerializeToString(),
        "ServerMetadata": pb.ServerMetadataResponse(name="floor", version="0").SerializeToString(),
        "ServerLive": pb.ServerLiveResponse(live=True).SerializeToString(),
        "ServerReady": pb.ServerReadyResponse(ready=True).SerializeToString(),
        "ModelReady": pb.ModelReadyResponse(ready=True).SerializeToString(),
    }

    def constant(answer: bytes):  # type: ignore[no-untyped-def]
        async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return answer

        return grpc.unary_unary_rpc_method_handler(handler)

    server = grpc.aio.server(options=grpc_server_options(64 << 20))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {k: constant(v) for k, v in answers.items()}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.stop(None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--model", default="reference_mlp")
    parser.add_argument("--grpc-port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.repository, args.model, args.grpc_port))


if __name__ == "__main__":
    main()
