"""A pipeline's steps parsed from model.yaml and checked.

Structure is checked when model.yaml is read (:func:`compile_graph`): every source names a
pipeline input or an output of an earlier step, no step is wired twice, a conditional step's
outputs that later steps or the pipeline's outputs read are given for the rows it skips.
Types are checked against the step models at load (:func:`check_types`): each step input exists
in its model and agrees in datatype and shape with what feeds it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from serving.codecs import numpy_dtype
from serving.config.model import ModelConfig, StepConfig
from serving.errors import ConfigError
from serving.pipeline.condition import Condition, parse_condition
from serving.types import TensorSpec

_SOURCE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\.[A-Za-z_][A-Za-z0-9_.-]*")
"""STEP.OUTPUT (a text constant in otherwise: is anything else)."""


@dataclass(frozen=True)
class StepRef:
    """What a step calls: ``model``, at ``version`` (a number, an alias, or "" for its routing)."""

    model: str
    version: str = ""

    @classmethod
    def parse(cls, text: str) -> StepRef:
        if "@" in text:
            model, _, alias = text.partition("@")
            return cls(model, alias)
        model, _, version = text.partition(":")
        if version and not version.isdigit():
            raise ConfigError(f"step model {text!r}: a version is a number (MODEL:3), an alias is MODEL@ALIAS")
        return cls(model, version)

    def __str__(self) -> str:
        if not self.version:
            return self.model
        return f"{self.model}:{self.version}" if self.version.isdigit() else f"{self.model}@{self.version}"


@dataclass(frozen=True)
class Fill:
    """What a skipped row of a conditional step's output holds: a constant, or another step's output."""

    value: str | float | int | bool | None = None
    source: str | None = None


@dataclass
class Step:
    name: str
    ref: StepRef
    inputs: dict[str, str]
    """Step input -> source (a pipeline input, or STEP.OUTPUT)."""
    when: Condition | None = None
    otherwise: dict[str, Fill] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)
    """Its outputs read later (by a step, a condition, a fill or the pipeline's outputs)."""


@dataclass
class Graph:
    """The checked steps, in order, and where each pipeline output comes from."""

    name: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    steps: list[Step]
    sources: dict[str, str]
    """Pipeline output -> STEP.OUTPUT."""

    def refs(self) -> list[StepRef]:
        return [s.ref for s in self.steps]


def compile_graph(name: str, config: ModelConfig) -> Graph:
    """Parse and check a pipeline's structure.

    Raises:
        ConfigError: a source that names nothing earlier, a step model that cannot be parsed,
            a condition that does not parse, or a skipped row with no value for an output read later.
    """
    inputs = {t.name: TensorSpec(t.name, t.datatype, t.shape) for t in config.inputs or ()}
    outputs = {t.name: TensorSpec(t.name, t.datatype, t.shape) for t in config.outputs or ()}
    steps: list[Step] = []
    by_name: dict[str, Step] = {}

    def need(source: str, where: str) -> None:
        if source in inputs:
            return
        step_name, dot, output = source.partition(".")
        if not dot or step_name not in by_name:
            known = [*inputs, *(f"{s}.OUTPUT" for s in by_name)]
            raise ConfigError(f"pipeline {name}: {where} reads {source!r}, which is neither a pipeline input nor "
                              f"STEP.OUTPUT of an earlier step (known: {known})")  # fmt: skip
        by_name[step_name].used.add(output)

    for cfg in config.steps:
        step = _step(name, cfg)
        for step_input, source in step.inputs.items():
            need(source, f"step {step.name!r} input {step_input!r}")
        if step.when is not None:
            need(step.when.source, f"step {step.name!r} when")
        for output, fill in step.otherwise.items():
            if fill.source is not None:
                need(fill.source, f"step {step.name!r} otherwise.{output}")
        steps.append(step)
        by_name[step.name] = step
    sources = {}
    for out in config.outputs or ():
        assert out.source is not None  # the schema requires from: on a pipeline's outputs
        need(out.source, f"output {out.name!r}")
        sources[out.name] = out.source
    for step in steps:
        if step.when is None:
            continue
        unfilled = sorted(step.used - set(step.otherwise))
        if unfilled:
            raise ConfigError(
                f"pipeline {name}: step {step.name!r} runs only when {step.when.text!r}, and its outputs {unfilled} "
                "are read later: give each a value for the rows it skips (otherwise: {OUTPUT: VALUE or STEP.OUTPUT})"
            )
    return Graph(name, inputs, outputs, steps, sources)


def _step(pipeline: str, cfg: StepConfig) -> Step:
    try:
        ref = StepRef.parse(cfg.model)
        when = parse_condition(cfg.when) if cfg.when is not None else None
    except ConfigError as exc:
        raise ConfigError(f"pipeline {pipeline}: step {cfg.name!r}: {exc.message}") from None
    if cfg.otherwise and when is None:
        raise ConfigError(f"pipeline {pipeline}: step {cfg.name!r} has otherwise: but no when:")
    otherwise = {
        out: Fill(source=v) if isinstance(v, str) and _SOURCE.fullmatch(v) else Fill(value=v)
        for out, v in cfg.otherwise.items()
    }
    return Step(cfg.name, ref, dict(cfg.inputs), when, otherwise)


Signature = tuple[dict[str, TensorSpec], dict[str, TensorSpec], int]
"""A step model's inputs and outputs (shapes without the batch dimension) and its max_batch_size."""


def check_types(graph: Graph, signature_of: Callable[[StepRef], Signature]) -> None:
    """Check every wire against the step models as they are now.

    Raises:
        ConfigError: a step model that takes no batch, an unwired or unknown step input, or a
            source whose datatype or shape differs from what reads it.
        ModelNotFoundError, ModelNotReadyError: from ``signature_of``, for a step model that is
            not served.
    """
    known: dict[str, TensorSpec] = dict(graph.inputs)
    for step in graph.steps:
        step_inputs, step_outputs, max_batch = signature_of(step.ref)
        where = f"pipeline {graph.name}: step {step.name!r} ({step.ref})"
        if not max_batch:
            raise ConfigError(f"{where}: its model has max_batch_size 0; pipeline steps run on batches of rows")
        missing = sorted(set(step_inputs) - set(step.inputs))
        if missing:
            raise ConfigError(f"{where}: inputs {missing} are not wired (inputs: {{INPUT: SOURCE}})")
        for step_input, source in step.inputs.items():
            if step_input not in step_inputs:
                raise ConfigError(f"{where}: its model has no input {step_input!r} (it has {sorted(step_inputs)})")
            _agree(known[source], step_inputs[step_input], f"{where}: input {step_input!r} from {source!r}")
        if step.when is not None:
            spec = known[step.when.source]
            if isinstance(step.when.value, str) != (spec.datatype == "BYTES"):
                raise ConfigError(f"{where}: when {step.when.text!r} compares {spec.datatype} with {step.when.value!r}")
        for output in step.used:
            if output not in step_outputs:
                raise ConfigError(f"{where}: its model has no output {output!r} (it has {sorted(step_outputs)})")
        for output, fill in step.otherwise.items():
            if output not in step_outputs:
                raise ConfigError(f"{where}: otherwise names {output!r}, not an output of its model")
            if fill.source is not None:
                _agree(known[fill.source], step_outputs[output], f"{where}: otherwise.{output} from {fill.source!r}")
            else:
                _constant_fits(fill.value, step_outputs[output], f"{where}: otherwise.{output}")
        for output, spec in step_outputs.items():
            known[f"{step.name}.{output}"] = spec
    for output, source in graph.sources.items():
        _agree(known[source], graph.outputs[output], f"pipeline {graph.name}: output {output!r} from {source!r}")


def _agree(given: TensorSpec, wanted: TensorSpec, where: str) -> None:
    if given.datatype != wanted.datatype:
        raise ConfigError(f"{where}: {given.datatype} where {wanted.datatype} is expected")
    if len(given.shape) != len(wanted.shape) or any(
        a != b and a != -1 and b != -1 for a, b in zip(given.shape, wanted.shape)
    ):
        raise ConfigError(f"{where}: shape {list(given.shape)} where {list(wanted.shape)} is expected")


def _constant_fits(value: object, spec: TensorSpec, where: str) -> None:
    if spec.datatype == "BYTES":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {value!r} for a BYTES output (give a text)")
        return
    if isinstance(value, str):
        raise ConfigError(f"{where}: {value!r} for a {spec.datatype} output (give a number)")
    if any(d == -1 for d in spec.shape):
        raise ConfigError(f"{where}: a constant cannot fill an output of variable shape {list(spec.shape)}")
    numpy_dtype(spec.datatype)
