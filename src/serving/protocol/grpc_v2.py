"""gRPC adapter: ``inference.GRPCInferenceService`` messages <-> core types.

Every RPC goes through :meth:`GrpcAdapter._call`, which maps ``ServingError`` to the
status code from ``protocol.status`` and returns an empty response message with the code
set on the context (Ray Serve's servicer wrappers, and plain grpc.aio, both honour it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2

from serving import codecs
from serving.auth import AccessPolicy, Authenticator
from serving.control.admin import OperatorCommands
from serving.errors import ErrorKind, InvalidInputError, ModelNotFoundError, ServingError
from serving.protocol import admin_json
from serving.protocol._pb import inference_pb2 as pb
from serving.protocol.infer_message import InferMessage, parse_infer_request
from serving.protocol.status import REFUSAL_PACE_S, grpc_code
from serving.protocol.triton import config_json, stats_json
from serving.service.api import InferenceService
from serving.telemetry.requests import client_request_id
from serving.types import InferenceRequest, InferenceResponse, Parameters, RequestedOutput, Tensor

log = logging.getLogger(__name__)

R = TypeVar("R")

# datatype -> the typed field of InferTensorContents (FP16 has none: raw only).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _param_value(p: pb.InferParameter) -> str | int | float | bool:
    which = p.WhichOneof("parameter_choice")
    if which is None:
        return ""
    value: str | int | float | bool = getattr(p, which)
    return value


def params_to_core(params: Any) -> Parameters:
    if not params:  # most maps are empty; iterating one still costs ~1 us (protobuf's items() view)
        return {}
    return {k: _param_value(v) for k, v in params.items()}


def _set_param(target: pb.InferParameter, value: str | int | float | bool) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


def to_core(parsed: InferMessage | pb.ModelInferRequest) -> InferenceRequest:
    """Decode a ``ModelInferRequest`` (typed ``contents`` or ``raw_input_contents``).

    Raises:
        InvalidInputError: mixed raw/typed inputs, a raw count that differs from the
            inputs, or data that does not match the shape.
    """
    if isinstance(parsed, pb.ModelInferRequest):
        parsed = InferMessage.of(parsed)
    request, raw = parsed.message, parsed.raw
    if raw and len(raw) != len(request.inputs):
        raise InvalidInputError(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    inputs = []
    for i, t in enumerate(request.inputs):
        what = f"input {t.name!r}"
        if not t.name:
            raise InvalidInputError(f"inputs[{i}] needs a name")
        shape = codecs.check_shape(list(t.shape), what)
        codecs.numpy_dtype(t.datatype)
        if raw:
            if t.HasField("contents"):
                raise InvalidInputError(f"{what}: contents must be empty when raw_input_contents is used")
            data = codecs.from_raw(t.datatype, shape, raw[i], what)
        else:
            field = _CONTENTS_FIELD.get(t.datatype)
            if field is None:
                raise InvalidInputError(f"{what}: {t.datatype} must be sent in raw_input_contents")
            values = getattr(t.contents, field)
            count = codecs.element_count(shape)
            if len(values) != count:
                raise InvalidInputError(f"{what}: shape {list(shape)} needs {count} elements, got {len(values)}")
            if t.datatype == "BYTES":
                data = np.empty(count, dtype=np.object_)
                data[:] = list(values)
                data = data.reshape(shape)
            else:
                dtype = codecs.numpy_dtype(t.datatype)
                arr = np.asarray(values)
                if dtype.kind in "iu" and arr.size:
                    info = np.iinfo(dtype)
                    if int(arr.min()) < info.min or int(arr.max()) > info.max:
                        raise InvalidInputError(f"{what}: value out of range for {t.datatype}")
                data = arr.astype(dtype).reshape(shape)
        inputs.append(Tensor(t.name, t.datatype, data, params_to_core(t.parameters)))
    return InferenceRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        id=request.id,
        parameters=params_to_core(request.parameters),
        inputs=inputs,
        outputs=[RequestedOutput(o.name, params_to_core(o.parameters)) for o in request.outputs],
    )


def from_core(response: InferenceResponse, raw: bool) -> pb.ModelInferResponse:
    """Encode a response; ``raw`` puts tensors in ``raw_output_contents`` (as Triton does)."""
    msg = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version, id=response.id)
    for k, v in response.parameters.items():
        _set_param(msg.parameters[k], v)
    for t in response.outputs:
        out = msg.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        field = _CONTENTS_FIELD.get(t.datatype)
        if raw or field is None:
            msg.raw_output_contents.append(codecs.to_raw(t.data, t.datatype))
        elif t.datatype == "BYTES":
            getattr(out.contents, field).extend(codecs._as_bytes(x) for x in t.data.reshape(-1))
        else:
            getattr(out.contents, field).extend(t.data.reshape(-1).tolist())
    if msg.raw_output_contents and len(msg.raw_output_contents) != len(msg.outputs):
        # Mixed typed and raw outputs are not allowed: go all raw.
        return from_core(response, raw=True)
    return msg


@dataclass(frozen=True, slots=True)
class MalformedRequest:
    """Stands in for a request whose bytes did not parse, so it gets INVALID_ARGUMENT."""

    error: str


def _tolerant(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return MalformedRequest(str(exc) or "cannot parse the protobuf message")

    return deserialize


_RPCS: dict[str, tuple[Any, Any]] = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
    "ModelConfig": (pb.ModelConfigRequest, pb.ModelConfigResponse),
    "ModelStatistics": (pb.ModelStatisticsRequest, pb.ModelStatisticsResponse),
    "RepositoryIndex": (pb.RepositoryIndexRequest, pb.RepositoryIndexResponse),
    "RepositoryModelLoad": (pb.RepositoryModelLoadRequest, pb.RepositoryModelLoadResponse),
    "RepositoryModelUnload": (pb.RepositoryModelUnloadRequest, pb.RepositoryModelUnloadResponse),
}
SERVICE_NAME = "inference.GRPCInferenceService"


HEALTH_SERVICE_NAME = "grpc.health.v1.Health"


@dataclass(frozen=True, slots=True)
class Method:
    """One RPC as a front end dispatches it: the handler, and its message codecs."""

    handler: Callable[[Any, Any], Coroutine[Any, Any, Any]]
    deserialize: Callable[[bytes], Any]
    serialize: Callable[[Any], bytes]


def rpc_methods(servicer: Any) -> dict[str, Method]:
    """Every RPC of ``inference.GRPCInferenceService`` and ``grpc.health.v1.Health/Check`` by its
    full path (``/inference.GRPCInferenceService/ModelInfer``).

    A request that is not valid protobuf reaches the servicer as :class:`MalformedRequest`
    (answered INVALID_ARGUMENT) instead of failing inside grpc with INTERNAL.
    """
    methods = {
        f"/{SERVICE_NAME}/{name}": Method(getattr(servicer, name), _tolerant(req.FromString), resp.SerializeToString)
        for name, (req, resp) in _RPCS.items()
    }
    infer = methods[f"/{SERVICE_NAME}/ModelInfer"]
    methods[f"/{SERVICE_NAME}/ModelInfer"] = Method(infer.handler, _tolerant(parse_infer_request), infer.serialize)
    methods[f"/{HEALTH_SERVICE_NAME}/Check"] = Method(
        servicer.Check,
        _tolerant(health_pb2.HealthCheckRequest.FromString),
        health_pb2.HealthCheckResponse.SerializeToString,
    )
    return methods


def _request_id(metadata: dict[str, str]) -> str:
    return client_request_id(metadata.get("x-request-id"))


def _metadata(context: Any) -> dict[str, str]:
    """The call's metadata as a dict (where a client's ``traceparent`` travels)."""
    try:
        return {str(k): v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
    except Exception:  # a context without metadata: no trace parent
        return {}


class GrpcAdapter:
    """Implements each RPC of ``GRPCInferenceService`` (and grpc.health.v1) over a service.

    Every RPC goes through :meth:`_call`: one place maps errors to status codes.
    """

    def __init__(
        self,
        service: InferenceService,
        auth: Authenticator | None = None,
        protect_health: bool = False,
        probe_token: str | None = None,
        admin: OperatorCommands | None = None,
    ) -> None:
        self.service = service
        self.admin = admin
        """Operator commands (RepositoryModelLoad/Unload); None answers them UNIMPLEMENTED."""
        self.in_flight = 0
        """Calls whose handler is running (a stopping server cuts grpc's grace once none is)."""
        self.access = AccessPolicy(auth, protect_health, probe_token)

    def _check_health(self, context: Any) -> None:
        self.access.check_health(_metadata(context).get("authorization"))

    def _check(self, context: Any, *, model: str = "", all_models: str = "") -> None:
        self.access.check(_metadata(context).get("authorization"), model=model, all_models=all_models)

    async def _call(
        self,
        request: Any,
        context: Any,
        empty: R,
        fn: Callable[[Any], Awaitable[R]],
        on_error: Callable[[BaseException], None] | None = None,
        request_id: str = "",
    ) -> R:
        self.in_flight += 1
        try:
            if isinstance(request, MalformedRequest):
                raise InvalidInputError(f"malformed protobuf request: {request.error}")
            return await fn(request)
        except Exception as exc:
            if on_error is not None:
                on_error(exc)
            if isinstance(exc, ServingError) and exc.kind is ErrorKind.OVERLOADED:
                await asyncio.sleep(REFUSAL_PACE_S)
            return self._answer_error(exc, context, empty, request_id or _request_id(_metadata(context)))
        finally:
            self.in_flight -= 1

    @staticmethod
    def _answer_error(exc: Exception, context: Any, empty: R, request_id: str) -> R:
        """The one mapping from an exception to a gRPC status."""
        if isinstance(exc, ServingError) and exc.kind is not ErrorKind.INTERNAL:
            context.set_code(grpc_code(exc.kind))
            context.set_details(exc.message)
            return empty
        what = exc.message if isinstance(exc, ServingError) else "unhandled error in gRPC call"
        log.error("internal error (request id %s): %s", request_id, what, exc_info=exc)
        context.set_code(grpc.StatusCode.INTERNAL)
        shown = f": {exc.message}" if isinstance(exc, ServingError) and exc.shown else ""
        context.set_details(f"internal error (request id {request_id}){shown}")
        return empty

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        async def run(r: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
            self._check_health(context)
            return pb.ServerLiveResponse(live=self.service.live())

        return await self._call(request, context, pb.ServerLiveResponse(), run)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        async def run(r: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
            self._check_health(context)
            return pb.ServerReadyResponse(ready=self.service.ready())

        return await self._call(request, context, pb.ServerReadyResponse(), run)

    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        async def run(r: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
            self._check(context, model=r.name)
            return pb.ModelReadyResponse(ready=self.service.model_ready(r.name, r.version))

        return await self._call(request, context, pb.ModelReadyResponse(), run)

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        async def run(r: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
            self._check(context)
            md = self.service.server_metadata()
            return pb.ServerMetadataResponse(name=md["name"], version=md["version"], extensions=md["extensions"])

        return await self._call(request, context, pb.ServerMetadataResponse(), run)

    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        async def run(r: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
            self._check(context, model=r.name)
            md = self.service.model_metadata(r.name, r.version)
            tm = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=md.name,
                versions=md.versions,
                platform=md.platform,
                inputs=[tm(name=s.name, datatype=s.datatype, shape=s.shape) for s in md.inputs],
                outputs=[tm(name=s.name, datatype=s.datatype, shape=s.shape) for s in md.outputs],
            )

        return await self._call(request, context, pb.ModelMetadataResponse(), run)

    async def ModelInfer(self, request: Any, context: Any) -> pb.ModelInferResponse:
        """``request``: as the front ends parse it (:func:`parse_infer_request`), or a message."""

        async def run(parsed: InferMessage) -> pb.ModelInferResponse:
            r = parsed.message
            self._check(context, model=r.model_name)
            self.service.admit(r.model_name, r.model_version)
            core = to_core(parsed)
            core.header = metadata.get
            core.request_id = request_id
            remaining = context.time_remaining()
            if remaining is not None:  # the client's deadline: a request still queued then is dropped
                core.deadline_s = time.monotonic() + remaining
            response = await self.service.infer(core)
            tracker.served_version = response.model_version
            return from_core(response, raw=bool(parsed.raw))

        if isinstance(request, pb.ModelInferRequest):
            request = InferMessage.of(request)
        malformed = isinstance(request, MalformedRequest)
        metadata = _metadata(context)
        request_id = _request_id(metadata)
        context.set_trailing_metadata((("x-request-id", request_id),))
        tracker = self.service.track(
            "" if malformed else request.message.model_name,
            "" if malformed else request.message.model_version,
            "grpc",
            request_id,
            metadata,
        )
        tracker.start()
        errors: list[BaseException] = []
        try:
            return await self._call(request, context, pb.ModelInferResponse(), run, errors.append, request_id)
        except BaseException as exc:  # cancelled (the client went away, its deadline passed): not an Exception
            errors.append(exc)
            raise
        finally:
            tracker.finish(errors[0] if errors else None)

    async def ModelConfig(self, request: Any, context: Any) -> pb.ModelConfigResponse:
        async def run(r: pb.ModelConfigRequest) -> pb.ModelConfigResponse:
            self._check(context, model=r.name)
            msg = pb.ModelConfigResponse()
            json_format.ParseDict(
                config_json(self.service.model_config(r.name, r.version)), msg.config, ignore_unknown_fields=True
            )
            return msg

        return await self._call(request, context, pb.ModelConfigResponse(), run)

    async def ModelStatistics(self, request: Any, context: Any) -> pb.ModelStatisticsResponse:
        async def run(r: pb.ModelStatisticsRequest) -> pb.ModelStatisticsResponse:
            if r.name:
                self._check(context, model=r.name)
            else:
                self._check(context, all_models="the statistics of every model")
            msg = pb.ModelStatisticsResponse()
            json_format.ParseDict(stats_json(self.service.statistics(r.name, r.version)), msg)
            return msg

        return await self._call(request, context, pb.ModelStatisticsResponse(), run)

    async def RepositoryIndex(self, request: Any, context: Any) -> pb.RepositoryIndexResponse:
        async def run(r: pb.RepositoryIndexRequest) -> pb.RepositoryIndexResponse:
            self._check(context, all_models="the repository index")
            idx = pb.RepositoryIndexResponse.ModelIndex
            rows = self.service.repository_index(r.ready)
            return pb.RepositoryIndexResponse(
                models=[idx(name=x.name, version=x.version, state=x.state, reason=x.reason) for x in rows]
            )

        return await self._call(request, context, pb.RepositoryIndexResponse(), run)

    def _admin(self, context: Any, what: str) -> str:
        return self.access.check_admin(_metadata(context).get("authorization"), what, f"anonymous@{context.peer()}")

    async def RepositoryModelLoad(self, request: Any, context: Any) -> pb.RepositoryModelLoadResponse:
        async def run(r: pb.RepositoryModelLoadRequest) -> pb.RepositoryModelLoadResponse:
            who = self._admin(context, "loading a model")
            version = admin_json.load_parameters(_repository_parameters(r.parameters))
            await admin_json.commands(self.admin).load(r.model_name, version, who)
            return pb.RepositoryModelLoadResponse()

        return await self._call(request, context, pb.RepositoryModelLoadResponse(), run)

    async def RepositoryModelUnload(self, request: Any, context: Any) -> pb.RepositoryModelUnloadResponse:
        async def run(r: pb.RepositoryModelUnloadRequest) -> pb.RepositoryModelUnloadResponse:
            who = self._admin(context, "unloading a model")
            version = admin_json.load_parameters(_repository_parameters(r.parameters))
            await admin_json.commands(self.admin).unload(r.model_name, version, who)
            return pb.RepositoryModelUnloadResponse()

        return await self._call(request, context, pb.RepositoryModelUnloadResponse(), run)

    async def Check(self, request: Any, context: Any) -> health_pb2.HealthCheckResponse:
        """grpc.health.v1: SERVING when ready; the service name may be empty or ours."""
        status = health_pb2.HealthCheckResponse

        async def run(r: health_pb2.HealthCheckRequest) -> health_pb2.HealthCheckResponse:
            self._check_health(context)
            if r.service not in ("", SERVICE_NAME):
                raise ModelNotFoundError(f"unknown service {r.service!r}")
            return status(status=status.SERVING if self.service.ready() else status.NOT_SERVING)

        return await self._call(request, context, status(), run)


def _repository_parameters(params: Any) -> dict[str, Any]:
    """Triton's ``map<string, ModelRepositoryParameter>`` as plain values."""
    out: dict[str, Any] = {}
    for key, p in params.items():
        choice = p.WhichOneof("parameter_choice")
        out[key] = None if choice is None else getattr(p, choice)
    return out
