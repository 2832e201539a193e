"""``platform: pipeline``: a version whose model.yaml lists ``steps``, a graph of repository models
run in this process.

- :mod:`~serving.pipeline.graph`: the steps parsed and checked (wiring by name, type-checked
  against the step models at load).
- :mod:`~serving.pipeline.condition`: a step's ``when:``, evaluated per row.
- :mod:`~serving.pipeline.execute`: one request (or one batch-scoring chunk) through the steps.
  Each step is handed to a :class:`~serving.pipeline.execute.Steps` (online: its model's batcher,
  so a step's rows batch with direct calls to that model; offline: the model instance). Arrays
  pass between steps as they are: no copy, no serialization.
"""
