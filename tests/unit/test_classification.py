"""Triton's classification extension on real arrays: the order, the strings, the labels, and
what the request may ask."""

from __future__ import annotations

import numpy as np
import pytest

from serving.errors import InvalidInputError
from serving.service.classification import MAX_STRINGS, ranked_outputs, requested_count, top_classes
from serving.types import RequestedOutput, TensorSpec


def texts(values: np.ndarray) -> list[list[str]]:
    return [[x.decode() for x in row] for row in values.tolist()]


def test_each_batch_row_answers_its_highest_values_first_with_their_index() -> None:
    values = np.array([[1, 5, 10, 4], [0.5, 0.25, 0.125, 2]], np.float32)
    out = top_classes(values, 2, batched=True, labels=None)
    assert out.shape == (2, 2) and out.dtype == object
    assert texts(out) == [["10.000000:2", "5.000000:1"], ["2.000000:3", "0.500000:0"]]


def test_labels_are_added_where_the_row_has_one_value_per_label() -> None:
    values = np.array([[0.1, 0.7, 0.2]], np.float64)
    assert texts(top_classes(values, 1, True, ("cat", "dog", "bird"))) == [["0.700000:1:dog"]]
    assert texts(top_classes(values, 1, True, ("cat", "dog"))) == [["0.700000:1"]]


def test_a_count_past_the_row_answers_every_value_and_ties_keep_index_order() -> None:
    values = np.array([[3, 7, 7, 1]], np.int64)
    assert texts(top_classes(values, 10, True, None)) == [["7:1", "7:2", "3:0", "1:3"]]


def test_integers_at_their_extremes_are_compared_and_printed_exactly() -> None:
    u = np.array([[0, 2**64 - 1, 2**63]], np.uint64)
    assert texts(top_classes(u, 2, True, None)) == [[f"{2**64 - 1}:1", f"{2**63}:2"]]
    i = np.array([[-(2**63), 2**63 - 1, -1]], np.int64)
    assert texts(top_classes(i, 3, True, None)) == [[f"{2**63 - 1}:1", "-1:2", f"{-(2**63)}:0"]]


def test_nan_ranks_below_every_number_and_infinities_keep_their_place() -> None:
    values = np.array([[np.nan, -np.inf, 1.0, np.inf]], np.float32)
    assert texts(top_classes(values, 4, True, None)) == [["inf:3", "1.000000:2", "-inf:1", "nan:0"]]


def test_a_model_without_a_batch_dimension_ranks_the_whole_tensor() -> None:
    values = np.array([[0.2, 0.9], [0.5, 0.1]], np.float16)
    out = top_classes(values, 3, batched=False, labels=None)
    assert out.shape == (3,)
    assert [x.decode() for x in out] == ["0.899902:1", "0.500000:2", "0.199951:0"]


def test_a_batch_row_of_several_dimensions_is_ranked_over_all_its_values() -> None:
    values = np.arange(12, dtype=np.int32).reshape(2, 2, 3)
    assert texts(top_classes(values, 2, True, None)) == [["5:5", "4:4"], ["11:5", "10:4"]]


@pytest.mark.parametrize("count", [0, -1, True, 1.5, "3", None])
def test_a_count_that_is_not_a_positive_integer_is_refused(count: object) -> None:
    params = {"classification": count}
    if count is None:
        assert requested_count("y", "FP32", params) is None
        return
    with pytest.raises(InvalidInputError, match="classification must be a positive integer"):
        requested_count("y", "FP32", params)


@pytest.mark.parametrize("datatype", ["BYTES", "BOOL", "BF16"])
def test_an_output_without_numbers_to_rank_is_refused(datatype: str) -> None:
    with pytest.raises(InvalidInputError, match="ranks numbers only"):
        requested_count("y", datatype, {"classification": 1})


SPECS = {"a": TensorSpec("a", "FP32", (10,)), "b": TensorSpec("b", "INT8", (-1,)), "c": TensorSpec("c", "FP64", (4, 5))}


def test_only_the_outputs_asked_for_as_classes_are_ranked() -> None:
    outputs = [RequestedOutput("a", {"binary_data": True}), RequestedOutput("b", {"classification": 3})]
    assert ranked_outputs(outputs, SPECS, rows=8) == {"b": 3}
    assert ranked_outputs([], SPECS, rows=8) == {}


def test_a_count_past_a_fixed_row_is_cut_to_its_values_before_the_bound() -> None:
    outputs = [RequestedOutput("a", {"classification": 2**63}), RequestedOutput("c", {"classification": 50})]
    assert ranked_outputs(outputs, SPECS, rows=64) == {"a": 10, "c": 20}


def test_an_answer_of_too_many_strings_is_refused_before_the_model_runs() -> None:
    assert ranked_outputs([RequestedOutput("b", {"classification": MAX_STRINGS})], SPECS, rows=1) == {"b": MAX_STRINGS}
    with pytest.raises(InvalidInputError, match="strings; at most"):
        ranked_outputs([RequestedOutput("b", {"classification": MAX_STRINGS // 8 + 1})], SPECS, rows=8)
    with pytest.raises(InvalidInputError, match="strings; at most"):
        ranked_outputs([RequestedOutput("b", {"classification": 10**30})], SPECS, rows=1)
