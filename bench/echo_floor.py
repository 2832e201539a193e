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
from serving.protocol.grpc_frontends import grpc_server_options
from serving.protocol.grpc_v2 import SERVICE_NAME as SERVICE
from serving.protocol.grpc_v2 import from_core
from serving.protocol.infer_message import read_varint
from serving.protocol.triton import config_json
from serving.service.local import LocalInferenceService
from serving.types import InferenceRequest, Tensor


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def request_id(raw: bytes) -> bytes:
    """ModelInferRequest.id (field 3) from the serialized request, skipping every other field."""
    pos = 0
    try:
        while pos < len(raw):
            tag, pos = read_varint(raw, pos)
            kind = tag & 7
            if kind == 2:
                size, pos = read_varint(raw, pos)
                if tag >> 3 == 3:
                    return raw[pos : pos + size]
                pos += size
            elif kind == 0:
                _, pos = read_varint(raw, pos)
            else:
                pos += 8 if kind == 1 else 4
    except (IndexError, ValueError):
        pass
    return b""


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

    def echo_id(answer: bytes):  # type: ignore[no-untyped-def]
        # perf_analyzer --async finds each answer's call by the id it sent: the precomputed answer
        # (whose id is empty, so absent) gets the request's id appended as field 3, found by
        # stepping over the request's fields, not parsing them.
        async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            rid = request_id(request)
            return answer + b"\x1a" + _varint(len(rid)) + rid if rid else answer

        return grpc.unary_unary_rpc_method_handler(handler)

    server = grpc.aio.server(options=grpc_server_options(64 << 20))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE, {k: (echo_id if k == "ModelInfer" else constant)(v) for k, v in answers.items()}
            ),
        )
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
