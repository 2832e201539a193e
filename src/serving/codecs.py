"""OIP datatypes <-> numpy, shape checks and the BYTES wire encoding.

See the OIP datatype table (inference_rest.md, "Tensor Data Types") and Triton's
binary tensor data extension for the 4-byte little-endian length prefix of BYTES.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from serving.errors import InvalidInputError, UnsupportedDatatypeError

_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
_DATATYPES: dict[np.dtype[Any], str] = {v: k for k, v in _DTYPES.items()}
DATATYPES: tuple[str, ...] = tuple(_DTYPES)
_LE_DTYPES: dict[str, np.dtype[Any]] = {k: v.newbyteorder("<") for k, v in _DTYPES.items() if k != "BYTES"}
_LEN = struct.Struct("<I")


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype of an OIP datatype.

    Raises:
        UnsupportedDatatypeError: BF16 (no numpy dtype) or an unknown name.
    """
    try:
        return _DTYPES[datatype]
    except KeyError:
        if datatype == "BF16":
            raise UnsupportedDatatypeError("datatype BF16 is not supported by this server") from None
        raise InvalidInputError(f"unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}") from None


def datatype_of(array: np.ndarray[Any, Any]) -> str:
    """The OIP datatype of a numpy array (str/bytes arrays map to BYTES).

    Raises:
        UnsupportedDatatypeError: the dtype has no OIP datatype.
    """
    if array.dtype.kind in "SUO":
        return "BYTES"
    try:
        return _DATATYPES[array.dtype.newbyteorder("=")]
    except KeyError:
        raise UnsupportedDatatypeError(f"numpy dtype {array.dtype} has no OIP datatype") from None


def element_count(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


MAX_DIMS = 32
MAX_DECLARED_ELEMENTS = 2**40
"""A shape may declare at most this many elements counting its non-zero dimensions only
(numpy refuses shapes whose sizes overflow, even with a zero dimension among them)."""


def quote(value: Any, limit: int = 80) -> str:
    """What a client sent, as error messages may quote it: a short prefix."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def check_shape(shape: Any, what: str) -> tuple[int, ...]:
    """Validate a wire shape: at most MAX_DIMS non-negative integers declaring at most
    MAX_DECLARED_ELEMENTS elements.

    Raises:
        InvalidInputError: anything else.
    """
    if not isinstance(shape, (list, tuple)):
        raise InvalidInputError(f"{what}: shape must be a list of integers, got {quote(shape)}")
    if len(shape) > MAX_DIMS:
        raise InvalidInputError(f"{what}: shape has {len(shape)} dimensions, at most {MAX_DIMS} are allowed")
    out = []
    declared = 1
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise InvalidInputError(f"{what}: shape must hold non-negative integers, got {quote(list(shape))}")
        out.append(int(d))
        declared *= max(int(d), 1)
        if declared > MAX_DECLARED_ELEMENTS:
            raise InvalidInputError(f"{what}: shape {quote(list(shape))} declares more than 2**40 elements")
    return tuple(out)


def shape_matches(shape: Sequence[int], declared: Sequence[int]) -> bool:
    """Whether ``shape`` fits ``declared`` (-1 matches any size)."""
    return len(shape) == len(declared) and all(d == -1 or d == s for s, d in zip(shape, declared))


def from_raw(datatype: str, shape: Sequence[int], buf: bytes | memoryview, what: str) -> np.ndarray[Any, Any]:
    """Decode a raw little-endian buffer (binary extension, gRPC raw contents).

    Raises:
        InvalidInputError: the byte count does not match the shape.
    """
    count = element_count(shape)
    if datatype == "BYTES":
        items = deserialize_bytes(buf, what)
        if len(items) != count:
            raise InvalidInputError(f"{what}: shape {list(shape)} needs {count} BYTES elements, got {len(items)}")
        arr = np.empty(count, dtype=np.object_)
        arr[:] = items
        return arr.reshape(shape)
    dtype = numpy_dtype(datatype)
    expected = count * dtype.itemsize
    if len(buf) != expected:
        raise InvalidInputError(f"{what}: shape {list(shape)} of {datatype} needs {expected} bytes, got {len(buf)}")
    arr = np.frombuffer(buf, dtype=_LE_DTYPES[datatype]).reshape(shape)
    if datatype == "BOOL" and arr.size and arr.view(np.uint8).max() > 1:
        raise InvalidInputError(f"{what}: BOOL bytes must be 0 or 1")
    return arr


def to_raw(array: np.ndarray[Any, Any], datatype: str) -> bytes:
    """Encode an array as raw little-endian bytes (BYTES: length-prefixed elements)."""
    if datatype == "BYTES":
        return serialize_bytes(array.reshape(-1))
    return np.ascontiguousarray(array, dtype=_LE_DTYPES[datatype]).tobytes()


def serialize_bytes(items: Iterable[Any]) -> bytes:
    """``[b"ab", b"c"]`` -> ``02000000 6162 01000000 63``."""
    parts = []
    for item in items:
        b = _as_bytes(item)
        parts.append(_LEN.pack(len(b)))
        parts.append(b)
    return b"".join(parts)


def deserialize_bytes(buf: bytes | memoryview, what: str) -> list[bytes]:
    """Inverse of :func:`serialize_bytes`.

    Raises:
        InvalidInputError: a length prefix runs past the end of the buffer.
    """
    view = memoryview(buf)
    out: list[bytes] = []
    pos, end = 0, len(view)
    while pos < end:
        if pos + 4 > end:
            raise InvalidInputError(f"{what}: truncated BYTES length prefix at offset {pos}")
        (n,) = _LEN.unpack_from(view, pos)
        pos += 4
        if pos + n > end:
            raise InvalidInputError(f"{what}: BYTES element of {n} bytes runs past the end of the data")
        out.append(bytes(view[pos : pos + n]))
        pos += n
    return out


def _as_bytes(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, np.ndarray) or isinstance(item, np.generic):
        return _as_bytes(item.item())
    return str(item).encode("utf-8")


def from_list(datatype: str, shape: Sequence[int], data: Any, what: str) -> np.ndarray[Any, Any]:
    """Decode JSON tensor data (flat or nested, row-major) into an array of ``shape``.

    Raises:
        InvalidInputError: wrong element count or values that do not fit the datatype.
    """
    count = element_count(shape)
    if datatype == "BYTES":
        flat = _flatten(data)
        if len(flat) != count:
            raise InvalidInputError(f"{what}: shape {list(shape)} needs {count} elements, got {len(flat)}")
        arr = np.empty(count, dtype=np.object_)
        for i, item in enumerate(flat):
            if not isinstance(item, str):
                raise InvalidInputError(f"{what}: BYTES data must be strings, got {type(item).__name__}")
            try:
                arr[i] = item.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate escape such as "\ud800"
                raise InvalidInputError(f"{what}: BYTES element {i} is not valid Unicode text") from None
        return arr.reshape(shape)
    dtype = numpy_dtype(datatype)
    if not isinstance(data, list):
        data = [data]
    try:
        arr = np.asarray(data)
    except ValueError:
        raise InvalidInputError(f"{what}: data is a ragged nested list") from None
    if arr.size != count:
        raise InvalidInputError(f"{what}: shape {list(shape)} needs {count} elements, got {arr.size}")
    kind = arr.dtype.kind
    if count and kind not in "biuf":
        raise InvalidInputError(f"{what}: {datatype} data must be numbers, got {arr.dtype.kind!r} values")
    if datatype == "BOOL":
        if kind != "b" and count:
            raise InvalidInputError(f"{what}: BOOL data must be true/false")
    elif dtype.kind in "iu":
        if kind == "f" or kind == "b":
            raise InvalidInputError(f"{what}: {datatype} data must be integers")
        if count:
            info = np.iinfo(dtype)
            lo, hi = int(arr.min()), int(arr.max())
            if lo < info.min or hi > info.max:
                raise InvalidInputError(f"{what}: value out of range for {datatype}")
    elif kind == "b":
        raise InvalidInputError(f"{what}: {datatype} data must be numbers, not booleans")
    elif count:  # floating point: finite values must fit (non-finite ones are refused by check_finite)
        finite = arr[np.isfinite(arr)]
        if finite.size and float(np.abs(finite).max()) > float(np.finfo(dtype).max):
            raise InvalidInputError(f"{what}: value out of range for {datatype}")
    return arr.astype(dtype, copy=False).reshape(shape)


NON_FINITE = "has a NaN or infinite value"
"""Why a floating-point input is refused, online (400 / INVALID_ARGUMENT) and offline (the row
goes to ``_errors``) alike: one rule for what a valid row is."""


def check_finite(array: np.ndarray[Any, Any], what: str) -> None:
    """Floating-point data must be finite (about a microsecond for a 784-value request).

    Raises:
        InvalidInputError: a NaN or an infinity (however it was sent: JSON's 1e400, binary, protobuf).
    """
    if array.dtype.kind == "f" and array.size and not np.isfinite(array).all():
        raise InvalidInputError(f"{what} {NON_FINITE}: only finite numbers are accepted")


def to_list(array: np.ndarray[Any, Any], datatype: str) -> list[Any]:
    """Flat row-major JSON-able list of an array's elements."""
    flat = array.reshape(-1)
    if datatype == "BYTES":
        return [_as_bytes(x).decode("utf-8", errors="replace") for x in flat]
    result: list[Any] = flat.tolist()
    return result


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out
