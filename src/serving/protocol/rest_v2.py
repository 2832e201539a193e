"""OIP REST (JSON) messages and Triton's binary tensor data extension <-> core types.

The body is validated by hand rather than through pydantic models: tensor ``data``
arrays are long lists of numbers, and numpy converts them in one call where a
per-element pydantic validation would dominate the request cost.
See inference_rest.md ("Inference Request JSON Object") and Triton's
extension_binary_data.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from serving import codecs
from serving.errors import InvalidInputError
from serving.types import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    Parameters,
    RequestedOutput,
    Tensor,
)

HEADER_LENGTH = "inference-header-content-length"


@dataclass(frozen=True, slots=True)
class Encoded:
    """A response body, and the JSON header length when binary tensors follow it."""

    body: bytes
    header_length: int | None


def _params(raw: Any, what: str) -> Parameters:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInputError(f"{what}: parameters must be an object")
    for k, v in raw.items():
        if not isinstance(v, (str, int, float, bool)):
            raise InvalidInputError(f"{what}: parameter {k!r} must be a string, number or boolean")
    return raw


def to_core(body: bytes, header_length: int | None, model_name: str, model_version: str) -> InferenceRequest:
    """Parse an infer request body (JSON, or JSON + binary tensors).

    Raises:
        InvalidInputError: malformed JSON, a missing field, data that does not match the
            shape, or a binary section that disagrees with ``binary_data_size``.
    """
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        if header_length < 0 or header_length > len(body):
            raise InvalidInputError(
                f"Inference-Header-Content-Length {header_length} is outside the body of {len(body)} bytes"
            )
        header, binary = body[:header_length], memoryview(body)[header_length:]
    doc = json_object(header)
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInputError("request needs a non-empty 'inputs' list")
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInputError("'id' must be a string")
    offset = 0
    inputs: list[Tensor] = []
    for i, item in enumerate(raw_inputs):
        if not isinstance(item, dict):
            raise InvalidInputError(f"inputs[{i}] must be an object")
        name = item.get("name")
        datatype = item.get("datatype")
        if not isinstance(name, str) or not name:
            raise InvalidInputError(f"inputs[{i}] needs a 'name' string")
        what = f"input {name!r}"
        if not isinstance(datatype, str):
            raise InvalidInputError(f"{what} needs a 'datatype' string")
        shape = codecs.check_shape(item.get("shape"), what)
        params = _params(item.get("parameters"), what)
        codecs.numpy_dtype(datatype)
        size = params.get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InvalidInputError(f"{what}: binary_data_size must be a non-negative integer")
            if "data" in item:
                raise InvalidInputError(f"{what}: give either 'data' or binary_data_size, not both")
            if offset + size > len(binary):
                raise InvalidInputError(
                    f"{what}: binary_data_size {size} runs past the binary section ({len(binary) - offset} bytes left)"
                )
            data = codecs.from_raw(datatype, shape, binary[offset : offset + size], what)
            offset += size
            params = {k: v for k, v in params.items() if k != "binary_data_size"}
        else:
            if "data" not in item:
                raise InvalidInputError(f"{what} needs 'data' (or parameters.binary_data_size)")
            data = codecs.from_list(datatype, shape, item["data"], what)
        inputs.append(Tensor(name, datatype, data, params))
    if offset != len(binary):
        raise InvalidInputError(
            f"the binary section has {len(binary)} bytes but the inputs' binary_data_size add up to {offset}"
        )
    outputs = []
    raw_outputs = doc.get("outputs") or []
    if not isinstance(raw_outputs, list):
        raise InvalidInputError("'outputs' must be a list")
    for i, item in enumerate(raw_outputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInputError(f"outputs[{i}] needs a 'name' string")
        params = _params(item.get("parameters"), f"output {item['name']!r}")
        outputs.append(RequestedOutput(item["name"], params))
    return InferenceRequest(
        model_name=model_name,
        model_version=model_version,
        id=request_id,
        inputs=inputs,
        outputs=outputs,
        parameters=_params(doc.get("parameters"), "request"),
    )


def from_core(response: InferenceResponse, request: InferenceRequest) -> Encoded:
    """Encode a response; outputs go binary as the request's parameters ask."""
    all_binary = bool(request.parameters.get("binary_data_output", False))
    per_output = {o.name: o.parameters.get("binary_data") for o in request.outputs}
    outputs = []
    blobs: list[bytes] = []
    for t in response.outputs:
        choice = per_output.get(t.name)
        binary = all_binary if choice is None else bool(choice)
        out: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if binary:
            blob = codecs.to_raw(t.data, t.datatype)
            blobs.append(blob)
            out["parameters"] = {"binary_data_size": len(blob)}
        else:
            out["data"] = codecs.to_list(t.data, t.datatype)
        outputs.append(out)
    doc: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = response.parameters
    doc["outputs"] = outputs
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return Encoded(header, None)
    return Encoded(header + b"".join(blobs), len(header))


def metadata_json(md: ModelMetadata) -> dict[str, Any]:
    return {
        "name": md.name,
        "versions": list(md.versions),
        "platform": md.platform,
        "inputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in md.inputs],
        "outputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in md.outputs],
        "device": md.device,
        "parameters": dict(md.parameters),
    }


def json_value(body: bytes) -> Any:
    """A request body that must be JSON (RFC 8259: UTF-8, no NaN or Infinity).

    Raises:
        InvalidInputError: not JSON.
    """
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
    except RecursionError:
        raise InvalidInputError("request body is not valid JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"request body is not valid JSON: {exc}") from None


def json_object(body: bytes) -> dict[str, Any]:
    """A request body that must be one JSON object.

    Raises:
        InvalidInputError: not JSON, or JSON but not an object.
    """
    doc = json_value(body)
    if not isinstance(doc, dict):
        raise InvalidInputError("request body must be a JSON object")
    return doc


def _refuse_constant(token: str) -> Any:
    """``NaN``, ``Infinity`` and ``-Infinity`` are not JSON (RFC 8259): refused, never read as numbers."""
    raise ValueError(f"{token} is not a JSON value (non-finite numbers are not accepted)")
