"""Parquet columns <-> model tensors for batch scoring.

``plan_columns`` checks once, against the data's schema, that every mapped column exists
and has a usable type (a bad invocation fails before any work starts). ``extract_inputs``
turns a table into model inputs and gives every row it cannot use a reason (null, NaN,
wrong list length, out of the input's range), so the job can write it to the errors output
instead of dropping it. ``output_columns`` turns output tensors back into columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from serving import codecs
from serving.codecs import numpy_dtype
from serving.config.model import BatchConfig, ColumnSource
from serving.errors import InvalidInputError
from serving.types import TensorSpec

Array = np.ndarray[Any, Any]

MODEL_NAME_COLUMN = "model_name"
MODEL_VERSION_COLUMN = "model_version"
ERROR_COLUMN = "error"


@dataclass(frozen=True, slots=True)
class InputBinding:
    """One model input and the column(s) it is read from."""

    tensor: TensorSpec
    columns: tuple[str, ...]
    stacked: bool

    @property
    def row_size(self) -> int:
        return int(np.prod(self.tensor.shape, dtype=np.int64)) if self.tensor.shape else 1


@dataclass(frozen=True, slots=True)
class ColumnPlan:
    """Everything needed to turn a table into model inputs and back into output columns."""

    inputs: tuple[InputBinding, ...]
    passthrough: tuple[str, ...]
    outputs: tuple[tuple[str, str], ...]
    """(output tensor, column name) pairs."""
    label_output: str | None = None
    labels: tuple[str, ...] = ()

    @property
    def input_columns(self) -> tuple[str, ...]:
        return tuple(c for b in self.inputs for c in b.columns)

    @property
    def label_column(self) -> str | None:
        if self.label_output is None:
            return None
        return f"{dict(self.outputs)[self.label_output]}_class"


def parse_mapping(items: list[str]) -> dict[str, ColumnSource]:
    """``NAME=COL`` (one column) or ``NAME=A,B,C`` (scalar columns stacked) from the command line.

    Raises:
        InvalidInputError: an item without ``=`` or with an empty side.
    """
    out = {}
    for item in items:
        name, sep, cols = item.partition("=")
        names = [c.strip() for c in cols.split(",") if c.strip()]
        if not sep or not name.strip() or not names:
            raise InvalidInputError(f"--map {item!r}: expected INPUT=COLUMN or INPUT=COL1,COL2,...")
        out[name.strip()] = (
            ColumnSource(column=names[0]) if len(names) == 1 and "," not in cols else ColumnSource(columns=tuple(names))
        )
    return out


def plan_columns(
    config: BatchConfig,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    schema: pa.Schema,
    *,
    labels: tuple[str, ...] | None = None,
    extra_columns: tuple[str, ...] = (),
) -> ColumnPlan:
    """Resolve the mapping against the model's I/O and the data's schema.

    ``extra_columns`` (hive partition columns) are carried to the output like passthrough.

    Raises:
        InvalidInputError: an unknown input, a missing column, a column of the wrong type,
            an input without a mapping, or an output column name used twice.
    """
    known = {t.name: t for t in inputs}
    unknown = sorted(set(config.inputs) - set(known))
    if unknown:
        raise InvalidInputError(f"mapping names inputs the model does not have: {unknown} (inputs: {sorted(known)})")
    bindings = []
    for spec in inputs:
        source = config.inputs.get(spec.name)
        if source is None:
            if spec.name not in schema.names:
                raise InvalidInputError(
                    f"model input {spec.name!r} has no column: map it in model.yaml (batch.inputs) or with "
                    f"--map {spec.name}=COLUMN (data columns: {schema.names})"
                )
            source = ColumnSource(column=spec.name)
        bindings.append(_bind(spec, source, schema))
    passthrough = tuple(dict.fromkeys((*config.passthrough, *extra_columns)))
    missing = [c for c in passthrough if c not in schema.names]
    if missing:
        raise InvalidInputError(f"passthrough columns {missing} are not in the data (columns: {schema.names})")
    out_cols = tuple((o.name, config.outputs.get(o.name, o.name)) for o in outputs)
    unknown = sorted(set(config.outputs) - {o.name for o in outputs})
    if unknown:
        raise InvalidInputError(f"mapping renames outputs the model does not have: {unknown}")
    label_output = _label_output(outputs, labels)
    plan = ColumnPlan(tuple(bindings), passthrough, out_cols, label_output, tuple(labels or ()))
    names = [*passthrough, *(c for _, c in out_cols), MODEL_NAME_COLUMN, MODEL_VERSION_COLUMN]
    if plan.label_column:
        names.append(plan.label_column)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InvalidInputError(f"output columns would repeat {dupes}: rename outputs (batch.outputs) or passthrough")
    return plan


def _label_output(outputs: tuple[TensorSpec, ...], labels: tuple[str, ...] | None) -> str | None:
    """The first output with one score per class, when the model declares class labels."""
    if not labels:
        return None
    for o in outputs:
        if o.shape == (len(labels),) and o.datatype in ("FP16", "FP32", "FP64"):
            return o.name
    return None


def _bind(spec: TensorSpec, source: ColumnSource, schema: pa.Schema) -> InputBinding:
    if spec.datatype == "BF16":
        raise InvalidInputError(f"input {spec.name!r}: datatype {spec.datatype} is not supported by batch scoring")
    if spec.datatype == "BYTES":
        return _bind_bytes(spec, source, schema)
    if any(d < 0 for d in spec.shape):
        raise InvalidInputError(
            f"input {spec.name!r} has a variable dimension {list(spec.shape)}; batch scoring needs a fixed "
            "per-row shape (declare it in model.yaml inputs)"
        )
    missing = [c for c in source.names if c not in schema.names]
    if missing:
        raise InvalidInputError(f"input {spec.name!r}: columns {missing} are not in the data (columns: {schema.names})")
    row_size = int(np.prod(spec.shape, dtype=np.int64)) if spec.shape else 1
    if source.columns is not None:
        if len(source.columns) != row_size:
            raise InvalidInputError(
                f"input {spec.name!r} takes {row_size} values per row ({list(spec.shape)}), "
                f"but {len(source.columns)} columns are mapped to it"
            )
        for c in source.columns:
            _check_numeric(spec, c, schema.field(c).type, scalar=True)
        return InputBinding(spec, source.columns, stacked=True)
    col = source.names[0]
    typ = schema.field(col).type
    if _is_list(typ):
        _check_numeric(spec, col, _leaf_type(typ), scalar=False)
    elif row_size != 1:
        raise InvalidInputError(
            f"input {spec.name!r} takes {row_size} values per row but column {col!r} holds one ({typ}); "
            "give a list column or map several columns"
        )
    else:
        _check_numeric(spec, col, typ, scalar=True)
    return InputBinding(spec, (col,), stacked=False)


def _bind_bytes(spec: TensorSpec, source: ColumnSource, schema: pa.Schema) -> InputBinding:
    """A BYTES input reads one binary (or string, as UTF-8) value per row from one column."""
    if source.columns is not None or spec.shape not in ((), (1,)):
        raise InvalidInputError(
            f"input {spec.name!r} (BYTES, shape {list(spec.shape)}): batch scoring reads one binary or string "
            "column into a BYTES input of shape [1]"
        )
    col = source.names[0]
    if col not in schema.names:
        raise InvalidInputError(f"input {spec.name!r}: column {col!r} is not in the data (columns: {schema.names})")
    typ = schema.field(col).type
    if not _is_binary(typ):
        raise InvalidInputError(
            f"column {col!r} has type {typ}; model input {spec.name!r} (BYTES) needs binary or string"
        )
    return InputBinding(spec, (col,), stacked=False)


def _is_binary(typ: pa.DataType) -> bool:
    return bool(
        pa.types.is_binary(typ)
        or pa.types.is_large_binary(typ)
        or pa.types.is_fixed_size_binary(typ)
        or pa.types.is_binary_view(typ)
        or pa.types.is_string(typ)
        or pa.types.is_large_string(typ)
        or pa.types.is_string_view(typ)
    )


def _is_list(typ: pa.DataType) -> bool:
    return bool(pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ))


def _leaf_type(typ: pa.DataType) -> pa.DataType:
    while _is_list(typ):
        typ = typ.value_type
    return typ


def _check_numeric(spec: TensorSpec, column: str, typ: pa.DataType, *, scalar: bool) -> None:
    ok = pa.types.is_boolean(typ) if spec.datatype == "BOOL" else pa.types.is_integer(typ) or pa.types.is_floating(typ)
    if not ok:
        what = "boolean" if spec.datatype == "BOOL" else "numbers"
        shape = "" if scalar else " (list of)"
        raise InvalidInputError(
            f"column {column!r} has type {typ}{shape}; model input {spec.name!r} ({spec.datatype}) needs {what}"
        )


class RowErrors:
    """The first reason each row of a batch cannot be scored."""

    def __init__(self, n: int) -> None:
        self.bad = np.zeros(n, dtype=bool)
        self.reasons = np.full(n, None, dtype=object)

    def add(self, mask: Array, reason: str) -> None:
        new = mask & ~self.bad
        if new.any():
            self.reasons[new] = reason
            self.bad |= new


def extract_inputs(table: pa.Table, plan: ColumnPlan) -> tuple[dict[str, Array], RowErrors]:
    """Model inputs for every row of ``table`` (rows flagged in the errors hold filler values)."""
    errors = RowErrors(table.num_rows)
    arrays = {}
    for b in plan.inputs:
        if b.tensor.datatype == "BYTES":
            arrays[b.tensor.name] = _bytes_values(table.column(b.columns[0]), b, errors)
            continue
        dtype = numpy_dtype(b.tensor.datatype)
        if b.stacked:
            arr = np.empty((table.num_rows, len(b.columns)), dtype=dtype)
            for j, c in enumerate(b.columns):
                arr[:, j] = _scalar_values(table.column(c), b.tensor, c, dtype, errors)
        elif _is_list(table.schema.field(b.columns[0]).type):
            arr = _list_values(table.column(b.columns[0]), b, dtype, errors)
        else:
            arr = _scalar_values(table.column(b.columns[0]), b.tensor, b.columns[0], dtype, errors)
        arrays[b.tensor.name] = arr.reshape((table.num_rows, *b.tensor.shape))
    return arrays, errors


def _bytes_values(col: pa.ChunkedArray, b: InputBinding, errors: RowErrors) -> Array:
    """One ``bytes`` per row (strings encoded as UTF-8); a null row is an error row holding b""."""
    n = len(col)
    if col.null_count:
        errors.add(
            col.is_null().to_numpy(zero_copy_only=False), f"input {b.tensor.name!r}: column {b.columns[0]!r} is null"
        )
    out = np.empty(n, dtype=np.object_)
    for i, value in enumerate(col.to_pylist()):
        out[i] = value.encode("utf-8") if isinstance(value, str) else (value or b"")
    return out.reshape((n, *b.tensor.shape))


def _scalar_values(col: pa.ChunkedArray, spec: TensorSpec, name: str, dtype: np.dtype[Any], errors: RowErrors) -> Array:
    nulls = col.is_null().to_numpy(zero_copy_only=False) if col.null_count else None
    values = col.to_numpy()
    if nulls is not None:
        errors.add(nulls, f"input {spec.name!r}: column {name!r} is null")
    return _convert(values, spec, f"column {name!r}", dtype, errors, np.arange(len(values)))


def _list_values(col: pa.ChunkedArray, b: InputBinding, dtype: np.dtype[Any], errors: RowErrors) -> Array:
    """Rows of a (possibly nested) list column, flattened to ``row_size`` values each."""
    n, size, name = len(col), b.row_size, b.columns[0]
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if arr.null_count:
        errors.add(arr.is_null().to_numpy(zero_copy_only=False), f"input {b.tensor.name!r}: column {name!r} is null")
    if _is_flat_and_full(arr, size):
        values = arr.flatten()
        rows = None
    else:
        values, parents = arr, np.arange(n)
        while _is_list(values.type):
            inner = pc.list_parent_indices(values).to_numpy()
            values = pc.list_flatten(values)
            parents = parents[inner]
        rows = parents
        counts = np.bincount(parents, minlength=n)
        errors.add(
            (counts != size) & ~errors.bad,
            f"input {b.tensor.name!r}: column {name!r} must hold {size} values per row ({list(b.tensor.shape)})",
        )
    if values.null_count:
        null_rows = values.is_null().to_numpy(zero_copy_only=False)
        mask = np.zeros(n, dtype=bool)
        mask[(rows if rows is not None else np.repeat(np.arange(n), size))[null_rows]] = True
        errors.add(mask, f"input {b.tensor.name!r}: column {name!r} has a null value")
    flat = values.to_numpy(zero_copy_only=False)
    value_rows = rows if rows is not None else None
    converted = _convert(flat, b.tensor, f"column {name!r}", dtype, errors, value_rows, size)
    if rows is None:
        return converted.reshape(n, size)
    out = np.zeros((n, size), dtype=dtype)
    good = ~errors.bad
    out[good] = converted[good[rows]].reshape(-1, size)
    return out


def _is_flat_and_full(arr: pa.Array, size: int) -> bool:
    """A one-level list column whose every row holds exactly ``size`` values (the fast path)."""
    if _is_list(arr.type.value_type):
        return False
    if pa.types.is_fixed_size_list(arr.type):
        return bool(arr.type.list_size == size and arr.null_count == 0)
    if arr.null_count:
        return False
    lengths = pc.list_value_length(arr)
    return bool(pc.all(pc.equal(lengths, size)).as_py())


def _convert(
    values: Array,
    spec: TensorSpec,
    where: str,
    dtype: np.dtype[Any],
    errors: RowErrors,
    rows: Array | None,
    per_row: int = 1,
) -> Array:
    """Cast to the input's dtype, flagging NaN/infinite values, non-integers and out-of-range values.

    ``rows`` maps each value to its row (None: ``per_row`` consecutive values per row).
    """

    def flag(value_mask: Array, reason: str) -> None:
        if not value_mask.any():
            return
        if rows is None:
            row_mask = np.asarray(value_mask.reshape(-1, per_row).any(axis=1))
        else:
            row_mask = np.zeros(len(errors.bad), dtype=bool)
            row_mask[rows[value_mask]] = True
        errors.add(row_mask, f"input {spec.name!r}: {where} {reason}")

    if values.dtype == np.bool_ or dtype == np.bool_:
        return values.astype(dtype, copy=False)
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        if not finite.all():
            flag(~finite, codecs.NON_FINITE)
            values = np.where(finite, values, 0)
    if dtype.kind == "f":
        out = values.astype(dtype, copy=False)
        if values.dtype.kind == "f" and out.dtype.itemsize < values.dtype.itemsize:
            overflow = ~np.isfinite(out)
            if overflow.any():
                flag(overflow, f"has a value out of {spec.datatype} range")
                out = np.where(overflow, 0, out).astype(dtype)
        return out
    if values.dtype.kind == "f":
        fractional = values != np.trunc(values)
        flag(np.asarray(fractional), f"has a non-integer value for {spec.datatype}")
    info = np.iinfo(dtype)
    if values.size and (values.min() < info.min or values.max() > info.max):
        out_of_range = (values < info.min) | (values > info.max)
        flag(out_of_range, f"has a value out of {spec.datatype} range")
        values = np.where(out_of_range, 0, values)
    return values.astype(dtype)


def output_columns(outputs: dict[str, Array], plan: ColumnPlan) -> dict[str, pa.Array]:
    """Output tensors ``[rows, ...]`` as columns: scalars for one value per row, fixed-size lists otherwise."""
    cols: dict[str, pa.Array] = {}
    for tensor, column in plan.outputs:
        cols[column] = tensor_column(outputs[tensor])
    if plan.label_output is not None and plan.label_column is not None:
        labels = np.asarray(plan.labels, dtype=object)
        cols[plan.label_column] = pa.array(labels[np.argmax(outputs[plan.label_output], axis=1)], type=pa.string())
    return cols


def tensor_column(values: Array) -> pa.Array:
    """``[rows]`` or ``[rows, 1]`` -> a scalar column; ``[rows, d1, d2...]`` -> nested fixed-size lists.
    BYTES values are a string column when every value is UTF-8 text, binary otherwise."""
    if values.dtype == np.object_:
        values = _text_or_binary(values)
    if values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1):
        return pa.array(values.reshape(len(values)))
    dims = values.shape[1:]
    col: pa.Array = pa.array(np.ascontiguousarray(values).reshape(-1))
    for d in reversed(dims):
        col = pa.FixedSizeListArray.from_arrays(col, int(d))
    return col


def _text_or_binary(values: Array) -> Array:
    """BYTES outputs as str where all of them are UTF-8 (a label reads as text), bytes otherwise."""
    try:
        decoded = [v.decode("utf-8") if isinstance(v, bytes) else v for v in values.reshape(-1)]
    except UnicodeDecodeError:
        return values
    out = np.empty(values.shape, dtype=np.object_)
    out.reshape(-1)[:] = decoded
    return out
