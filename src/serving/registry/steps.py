"""A pipeline version's steps reached through the registry: each step resolves its model (a
number, an alias or the routing) when it runs, so an alias step follows promotions, and its rows
go through that version's batcher, batching with direct calls to the model."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import numpy as np

from serving.errors import ConfigError
from serving.pipeline.coalesce import Coalescer
from serving.pipeline.execute import Arrays, run_pipeline
from serving.pipeline.graph import Signature, Step, StepRef, check_types
from serving.pipeline.model import PipelineModel
from serving.rows import ROW_ERRORS
from serving.telemetry import tracing
from serving.telemetry.metrics import PIPELINE_STEP_SECONDS, Metrics
from serving.types import TensorSpec

if TYPE_CHECKING:
    from serving.registry.lane import ModelVersion
    from serving.registry.versions import ModelRegistry


class RegistrySteps:
    """:class:`serving.pipeline.execute.Steps` over the registry's served versions."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    def version(self, ref: StepRef) -> ModelVersion:
        return self._registry.get(ref.model, ref.version)

    def outputs_of(self, ref: StepRef) -> dict[str, TensorSpec]:
        return {s.name: s for s in self.version(ref).instance.outputs}

    def signature(self, ref: StepRef) -> Signature:
        mv = self.version(ref)
        if mv.pipeline is not None:
            raise ConfigError(f"step model {ref} is itself a pipeline; list its steps instead")
        inst = mv.instance
        return {s.name: s for s in inst.inputs}, {s.name: s for s in inst.outputs}, inst.max_batch_size

    async def run(self, ref: StepRef, inputs: Arrays, deadline_s: float | None) -> tuple[Arrays, str]:
        mv = self.version(ref)
        batcher = mv.batcher
        assert batcher is not None  # a served version that is not a pipeline has one
        rows = len(next(iter(inputs.values())))
        most = mv.instance.max_batch_size
        mv.active += 1
        try:
            if rows <= most:
                return await batcher.submit(inputs, deadline_s, rows_together=True), str(mv.version)
            cuts = range(0, rows, most)
            # every chunk's outcome is collected (none left unretrieved), then the first failure is raised
            answers = await asyncio.gather(
                *(batcher.submit({k: v[i : i + most] for k, v in inputs.items()}, deadline_s) for i in cuts),
                return_exceptions=True,
            )
            failed = next((a for a in answers if isinstance(a, BaseException)), None)
            if failed is not None:
                raise failed
            return _concat([a for a in answers if not isinstance(a, BaseException)]), str(mv.version)
        finally:
            mv.active -= 1


def _concat(parts: list[Arrays]) -> Arrays:
    names = set().union(*parts)
    out: Arrays = {}
    for name in names:
        if name == ROW_ERRORS:
            out[name] = np.concatenate(
                [p.get(name, np.full(len(next(iter(p.values()))), None, dtype=np.object_)) for p in parts]
            )
        else:
            out[name] = np.concatenate([p[name] for p in parts])
    return out


class PipelineRunner:
    """What serves a pipeline version: its graph, checked against the step models, run through them."""

    def __init__(self, model: PipelineModel, steps: RegistrySteps, metrics: Metrics, labels: dict[str, str]) -> None:
        self._model = model
        self._steps = steps
        self._metrics = metrics
        self._labels = labels
        self._together = Coalescer(self._run_rows, model.config.max_batch_size)

    def check(self) -> None:
        """Type-check the wiring against the step models served now.

        Raises:
            ConfigError, ModelNotFoundError, ModelNotReadyError: named by step.
        """
        graph = self._model.graph
        check_types(graph, self._signature)

    def _signature(self, ref: StepRef) -> Signature:
        try:
            return self._steps.signature(ref)
        except ConfigError:
            raise
        except Exception as exc:
            message = getattr(exc, "message", str(exc))
            raise type(exc)(f"pipeline {self._model.name}: step model {ref}: {message}") from exc

    def resolved(self) -> dict[str, str]:
        """Each step's model as it resolves now (``model:version``), for lineage and metadata."""
        out = {}
        for step in self._model.graph.steps:
            try:
                out[step.name] = f"{step.ref.model}:{self._steps.version(step.ref).version}"
            except Exception as exc:
                out[step.name] = f"{step.ref} (not served: {getattr(exc, 'message', exc)})"
        return out

    async def run(self, inputs: Arrays, deadline_s: float | None) -> Arrays:
        """The pipeline's outputs for one request, run with the other requests of this loop turn
        (traced requests run alone: each one's steps in its own trace)."""
        if tracing.enabled():
            traced = _Traced(self._steps, self._model.name)
            return await run_pipeline(self._model.graph, inputs, traced, deadline_s, self._observe)
        return await self._together.submit(inputs, deadline_s)

    async def _run_rows(self, inputs: Arrays, deadline_s: float | None) -> Arrays:
        return await run_pipeline(self._model.graph, inputs, self._steps, deadline_s, self._observe)

    async def close(self) -> None:
        """Stop the grouped runs in progress (an unload: their requests are answered UNAVAILABLE;
        a request running alone runs in its own caller's task, as every request did before)."""
        await self._together.close()

    def _observe(self, step: Step, version: str, seconds: float) -> None:
        self._metrics.observe(PIPELINE_STEP_SECONDS, {**self._labels, "step": step.name}, seconds)


class _Traced:
    """Each step in a span of its own (the step model's queue and batch spans nest under it)."""

    def __init__(self, steps: RegistrySteps, pipeline: str) -> None:
        self._steps = steps
        self._pipeline = pipeline

    def outputs_of(self, ref: StepRef) -> dict[str, TensorSpec]:
        return self._steps.outputs_of(ref)

    async def run(self, ref: StepRef, inputs: Arrays, deadline_s: float | None) -> tuple[Arrays, str]:
        with tracing.span("pipeline.step", {"serving.pipeline": self._pipeline, "serving.step_model": str(ref)}):
            return await self._steps.run(ref, inputs, deadline_s)
