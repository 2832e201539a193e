"""A pipeline version as the registry holds it: its declared I/O behind the runtime ``Model``
protocol (metadata, the repository index and the request checks treat it like any model), and
its checked graph. It runs through :func:`serving.pipeline.execute.run_pipeline`, never
``predict``: the pipeline has no batcher of its own, each step batches in its own model."""

from __future__ import annotations

from typing import Any

from serving.config.model import ModelConfig
from serving.errors import ModelExecutionError, ModelNotReadyError
from serving.pipeline.graph import Graph, compile_graph
from serving.types import TensorSpec


class PipelineModel:
    platform = "pipeline"
    device = "cpu"

    def __init__(self, name: str, config: ModelConfig) -> None:
        self.name = name
        self.config = config
        self._graph: Graph | None = None

    @property
    def graph(self) -> Graph:
        if self._graph is None:
            raise ModelNotReadyError(f"pipeline {self.name} is not loaded")
        return self._graph

    def load(self) -> None:
        """Parse and check the steps' structure (types are checked against the step models by the registry).

        Raises:
            ConfigError: the steps do not wire up.
        """
        self._graph = compile_graph(self.name, self.config)

    def signature(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        def batched(specs: dict[str, TensorSpec]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(s.name, s.datatype, (-1, *s.shape)) for s in specs.values())

        return batched(self.graph.inputs), batched(self.graph.outputs)

    def predict(self, inputs: Any, outputs: list[str]) -> Any:
        raise ModelExecutionError(f"pipeline {self.name} runs through its steps, not as one model")

    def unload(self) -> None:
        self._graph = None
