"""Column mapping of batch scoring: plan checks and per-row reasons, without Ray."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from serving.config.model import BatchConfig, ColumnSource
from serving.errors import InvalidInputError
from serving.offline.mapping import extract_inputs, parse_mapping, plan_columns, tensor_column
from serving.types import TensorSpec

VEC = (TensorSpec("x", "FP32", (3,)),)
OUT = (TensorSpec("probs", "FP32", (2,)), TensorSpec("label", "INT64", ()))


def plan_for(table: pa.Table, config: BatchConfig, inputs: tuple[TensorSpec, ...] = VEC, **kw: object):  # type: ignore[no-untyped-def]
    return plan_columns(config, inputs, OUT, table.schema, **kw)  # type: ignore[arg-type]


def test_parse_mapping_one_column_or_stacked_columns() -> None:
    m = parse_mapping(["x=pixels", "y=a,b,c", "z=only,"])
    assert m["x"] == ColumnSource(column="pixels")
    assert m["y"] == ColumnSource(columns=("a", "b", "c"))
    assert m["z"] == ColumnSource(columns=("only",))
    for bad in ("x", "=a", "x="):
        with pytest.raises(InvalidInputError, match="expected INPUT=COLUMN"):
            parse_mapping([bad])


def test_column_source_needs_exactly_one_of_column_and_columns() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        ColumnSource()
    with pytest.raises(ValueError, match="exactly one"):
        ColumnSource(column="a", columns=("b",))


def test_list_column_rows_that_cannot_be_scored_get_a_reason() -> None:
    table = pa.table(
        {
            "id": [0, 1, 2, 3, 4, 5],
            "v": pa.array([[1, 2, 3], None, [1, 2], [1, None, 3], [1, math.nan, 3], [4, 5, 6]], pa.list_(pa.float64())),
        }
    )
    plan = plan_for(table, BatchConfig(inputs={"x": ColumnSource(column="v")}, passthrough=("id",)))
    arrays, errors = extract_inputs(table, plan)
    assert errors.bad.tolist() == [False, True, True, True, True, False]
    assert "is null" in errors.reasons[1]
    assert "must hold 3 values" in errors.reasons[2]
    assert "null value" in errors.reasons[3]
    assert "NaN" in errors.reasons[4]
    assert arrays["x"].dtype == np.float32
    np.testing.assert_array_equal(arrays["x"][[0, 5]], [[1, 2, 3], [4, 5, 6]])


def test_fixed_size_and_nested_list_columns() -> None:
    flat = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(6, dtype=np.float32)), 3)
    nested = pa.array([[[0, 1], [2, 3]], [[4, 5], [6]]], pa.list_(pa.list_(pa.int32())))
    spec = (TensorSpec("x", "FP32", (2, 2)),)
    t1 = pa.table({"v": flat})
    arrays, errors = extract_inputs(t1, plan_for(t1, BatchConfig(inputs={"x": ColumnSource(column="v")})))
    assert not errors.bad.any()
    np.testing.assert_array_equal(arrays["x"], [[0, 1, 2], [3, 4, 5]])
    t2 = pa.table({"v": nested})
    arrays, errors = extract_inputs(t2, plan_for(t2, BatchConfig(inputs={"x": ColumnSource(column="v")}), spec))
    assert errors.bad.tolist() == [False, True]
    np.testing.assert_array_equal(arrays["x"][0], [[0, 1], [2, 3]])


def test_scalar_columns_stack_in_declared_order_and_flag_nulls_and_nan() -> None:
    table = pa.table({"c": [3.0, 6.0, math.nan], "a": [1.0, 4.0, 7.0], "b": pa.array([2, None, 8], pa.int64())})
    plan = plan_for(table, BatchConfig(inputs={"x": ColumnSource(columns=("a", "b", "c"))}))
    arrays, errors = extract_inputs(table, plan)
    np.testing.assert_array_equal(arrays["x"][0], [1, 2, 3])
    assert errors.bad.tolist() == [False, True, True]
    assert "'b' is null" in errors.reasons[1]
    assert "'c' has a NaN" in errors.reasons[2]


def test_integer_inputs_flag_fractions_and_out_of_range() -> None:
    spec = (TensorSpec("x", "INT8", (1,)),)
    table = pa.table({"v": [1.0, 2.5, 300.0, -5.0]})
    arrays, errors = extract_inputs(table, plan_for(table, BatchConfig(inputs={"x": ColumnSource(column="v")}), spec))
    assert errors.bad.tolist() == [False, True, True, False]
    assert "non-integer" in errors.reasons[1]
    assert "out of INT8 range" in errors.reasons[2]
    assert arrays["x"].dtype == np.int8
    assert arrays["x"][3, 0] == -5


def test_input_column_defaults_to_the_input_name() -> None:
    table = pa.table({"x": pa.array([[1.0, 2.0, 3.0]], pa.list_(pa.float32()))})
    plan = plan_for(table, BatchConfig())
    assert plan.inputs[0].columns == ("x",)


@pytest.mark.parametrize(
    ("table", "config", "message"),
    [
        (pa.table({"a": [1.0]}), BatchConfig(), "model input 'x' has no column"),
        (pa.table({"a": [1.0]}), BatchConfig(inputs={"x": ColumnSource(column="b")}), r"columns \['b'\] are not in"),
        (pa.table({"a": ["s"]}), BatchConfig(inputs={"x": ColumnSource(columns=("a", "a", "a"))}), "type string"),
        (
            pa.table({"a": pa.array([["s"]], pa.list_(pa.string()))}),
            BatchConfig(inputs={"x": ColumnSource(column="a")}),
            "type string",
        ),
        (pa.table({"a": [1.0]}), BatchConfig(inputs={"x": ColumnSource(column="a")}), "holds one"),
        (pa.table({"a": [1.0]}), BatchConfig(inputs={"x": ColumnSource(columns=("a",))}), "1 columns are mapped"),
        (pa.table({"a": [1.0]}), BatchConfig(inputs={"nope": ColumnSource(column="a")}), "does not have"),
        (
            pa.table({"x": pa.array([[1.0, 2.0, 3.0]]), "id": [1]}),
            BatchConfig(passthrough=("id", "missing")),
            "passthrough columns",
        ),
        (
            pa.table({"x": pa.array([[1.0, 2.0, 3.0]]), "label": [1]}),
            BatchConfig(passthrough=("label",)),
            "repeat",
        ),
    ],
)
def test_bad_mappings_are_refused_before_any_row_is_read(table: pa.Table, config: BatchConfig, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        plan_for(table, config)


def test_variable_dimension_inputs_are_refused() -> None:
    table = pa.table({"x": pa.array([[1.0]])})
    with pytest.raises(InvalidInputError, match="variable dimension"):
        plan_for(table, BatchConfig(), (TensorSpec("x", "FP32", (-1,)),))


def test_label_column_when_the_model_declares_classes() -> None:
    table = pa.table({"x": pa.array([[1.0, 2.0, 3.0]])})
    plan = plan_for(table, BatchConfig(), labels=("cat", "dog"))
    assert plan.label_output == "probs"
    assert plan.label_column == "probs_class"


def test_tensor_columns_scalar_vector_and_matrix() -> None:
    assert tensor_column(np.array([1, 2])).type == pa.int64()
    assert tensor_column(np.array([[1.0], [2.0]])).type == pa.float64()
    vec = tensor_column(np.zeros((2, 3), np.float32))
    assert vec.type == pa.list_(pa.float32(), 3)
    mat = tensor_column(np.arange(8, dtype=np.float32).reshape(2, 2, 2))
    assert mat.type == pa.list_(pa.list_(pa.float32(), 2), 2)
    assert mat.to_pylist()[1] == [[4, 5], [6, 7]]
