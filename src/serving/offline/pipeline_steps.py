"""A pipeline version for batch scoring: its steps opened as model instances in this process,
run chunk by chunk through :func:`serving.pipeline.execute.run_pipeline` (the same graph, the
same conditions and row errors as online).

A step naming MODEL uses that model's newest version its policy serves (as ``serving score
MODEL`` does); MODEL:VERSION that version; MODEL@ALIAS the version the alias points at in the
serving state as the job started (``serving score`` reads it once and hands it to every worker).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

from serving.config.model import ModelConfig, Platform
from serving.errors import ConfigError, ModelNotFoundError
from serving.model_instance import ModelInstance
from serving.pipeline.execute import Arrays, run_pipeline
from serving.pipeline.graph import Signature, StepRef, check_types
from serving.pipeline.model import PipelineModel
from serving.rows import ROW_ERRORS
from serving.types import TensorSpec

Opener = Callable[[str, str], ModelInstance]
"""(model, version or "") -> an opened instance of that version."""


class InstanceSteps:
    """:class:`serving.pipeline.execute.Steps` over opened instances, one per step model."""

    def __init__(self, instances: dict[StepRef, ModelInstance]) -> None:
        self.instances = instances

    def outputs_of(self, ref: StepRef) -> dict[str, TensorSpec]:
        return {s.name: s for s in self.instances[ref].outputs}

    def signature(self, ref: StepRef) -> Signature:
        inst = self.instances[ref]
        return {s.name: s for s in inst.inputs}, {s.name: s for s in inst.outputs}, inst.max_batch_size

    async def run(self, ref: StepRef, inputs: Arrays, deadline_s: float | None) -> tuple[Arrays, str]:
        inst = self.instances[ref]
        rows = len(next(iter(inputs.values())))
        most = inst.max_batch_size
        if rows <= most:
            return inst.predict(inputs), str(inst.version)
        parts = [inst.predict({k: v[i : i + most] for k, v in inputs.items()}) for i in range(0, rows, most)]
        names = set().union(*parts)
        return {n: np.concatenate([p[n] for p in parts]) for n in names}, str(inst.version)


class ScoringPipeline:
    """A pipeline version behind the runtime ``Model`` protocol, for :class:`serving.offline.scorer.Scorer`."""

    platform = "pipeline"
    device = "cpu"

    def __init__(self, name: str, config: ModelConfig, open_step: Opener) -> None:
        self._pipeline = PipelineModel(name, config)
        self._open_step = open_step
        self._steps: InstanceSteps | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def load(self) -> None:
        """Open every step model and type-check the wiring against them.

        Raises:
            ConfigError, ModelNotFoundError, ModelNotReadyError: named by step.
        """
        self._pipeline.load()
        graph = self._pipeline.graph
        instances: dict[StepRef, ModelInstance] = {}
        try:
            for ref in graph.refs():
                if ref in instances:
                    continue
                instances[ref] = self._open_step(ref.model, ref.version)
                if instances[ref].config.platform is Platform.PIPELINE:
                    raise ConfigError(f"step model {ref} is itself a pipeline; list its steps instead")
            self._steps = InstanceSteps(instances)
            check_types(graph, self._steps.signature)
        except BaseException:
            for inst in instances.values():
                inst.unload()
            self._steps = None
            raise
        self._loop = asyncio.new_event_loop()

    def resolved(self) -> dict[str, str]:
        steps = self._require()
        return {s.name: f"{s.ref.model}:{steps.instances[s.ref].version}" for s in self._pipeline.graph.steps}

    def signature(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        return self._pipeline.signature()

    def predict(self, inputs: Arrays, outputs: list[str]) -> Arrays:
        steps = self._require()
        assert self._loop is not None
        result = self._loop.run_until_complete(run_pipeline(self._pipeline.graph, inputs, steps))
        return {name: result[name] for name in (*outputs, ROW_ERRORS) if name in result}

    def unload(self) -> None:
        steps, self._steps = self._steps, None
        if steps is not None:
            for inst in steps.instances.values():
                inst.unload()
        if self._loop is not None:
            self._loop.close()
            self._loop = None
        self._pipeline.unload()

    def _require(self) -> InstanceSteps:
        if self._steps is None:
            raise ModelNotFoundError(f"pipeline {self._pipeline.name} is not loaded")
        return self._steps
