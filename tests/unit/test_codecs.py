from __future__ import annotations

import numpy as np
import pytest

from serving import codecs
from serving.errors import InvalidInputError, UnsupportedDatatypeError


def test_bytes_wire_format_matches_the_spec_example() -> None:
    assert codecs.serialize_bytes([b"ab", "c"]) == bytes.fromhex("020000006162010000006" + "3")
    assert codecs.deserialize_bytes(bytes.fromhex("02000000616201000000" + "63"), "x") == [b"ab", b"c"]


def test_truncated_bytes_are_rejected() -> None:
    with pytest.raises(InvalidInputError, match="runs past the end"):
        codecs.deserialize_bytes(b"\x05\x00\x00\x00ab", "x")
    with pytest.raises(InvalidInputError, match="truncated"):
        codecs.deserialize_bytes(b"\x01\x00", "x")


@pytest.mark.parametrize("datatype", [d for d in codecs.DATATYPES if d != "BYTES"])
def test_raw_round_trip_every_numeric_datatype(datatype: str) -> None:
    dtype = codecs.numpy_dtype(datatype)
    arr = (np.arange(6) % 2).astype(dtype).reshape(2, 3)
    raw = codecs.to_raw(arr, datatype)
    assert len(raw) == 6 * dtype.itemsize
    back = codecs.from_raw(datatype, (2, 3), raw, "t")
    np.testing.assert_array_equal(back, arr)
    assert codecs.datatype_of(back) == datatype


def test_raw_is_little_endian() -> None:
    assert codecs.to_raw(np.array([1], np.uint32), "UINT32") == b"\x01\x00\x00\x00"
    assert codecs.from_raw("INT16", (1,), b"\x00\x01", "t")[0] == 256


def test_raw_size_mismatch_is_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match="needs 16 bytes, got 12"):
        codecs.from_raw("FP32", (2, 2), b"\x00" * 12, "t")


def test_bool_raw_rejects_values_other_than_0_and_1() -> None:
    with pytest.raises(InvalidInputError, match="BOOL"):
        codecs.from_raw("BOOL", (2,), b"\x00\x02", "t")


def test_json_nested_and_flat_data_give_the_same_tensor() -> None:
    flat = codecs.from_list("FP32", (2, 2), [1, 2, 3, 4], "t")
    nested = codecs.from_list("FP32", (2, 2), [[1, 2], [3, 4]], "t")
    np.testing.assert_array_equal(flat, nested)
    assert flat.dtype == np.float32


@pytest.mark.parametrize(
    ("datatype", "data", "match"),
    [
        ("FP32", [1, 2, 3], "needs 4 elements"),
        ("INT32", [1.5, 2, 3, 4], "integers"),
        ("UINT8", [1, 2, 3, 300], "out of range"),
        ("INT8", [-129, 0, 0, 0], "out of range"),
        ("BOOL", [1, 0, 1, 0], "true/false"),
        ("FP32", ["a", "b", "c", "d"], "numbers"),
        ("FP64", [True, False, True, False], "not booleans"),
        ("BYTES", [1, 2, 3, 4], "strings"),
    ],
)
def test_json_data_that_does_not_fit_is_rejected(datatype: str, data: list[object], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        codecs.from_list(datatype, (2, 2), data, "t")


def test_unknown_and_bf16_datatypes() -> None:
    with pytest.raises(InvalidInputError, match="unknown datatype"):
        codecs.numpy_dtype("FLOAT")
    with pytest.raises(UnsupportedDatatypeError):
        codecs.numpy_dtype("BF16")


def test_shapes() -> None:
    assert codecs.check_shape([1, 2], "t") == (1, 2)
    for bad in ([-1], [1.5], "12", [True]):
        with pytest.raises(InvalidInputError):
            codecs.check_shape(bad, "t")
    assert codecs.shape_matches((4, 3), (-1, 3))
    assert not codecs.shape_matches((4, 3), (-1, 4))
    assert not codecs.shape_matches((4, 3, 1), (-1, 3))


def test_bytes_json_round_trip() -> None:
    arr = codecs.from_list("BYTES", (2,), ["héllo", ""], "t")
    assert list(arr) == ["héllo".encode(), b""]
    assert codecs.to_list(arr, "BYTES") == ["héllo", ""]
