"""The data plane: what every protocol adapter calls (OIP semantics, no wire types).

- :mod:`~serving.service.api`: :class:`InferenceService`, the interface the adapters call.
- :mod:`~serving.service.local`: :class:`LocalInferenceService`, the models of a repository
  hosted in this process (admission, inference, health).
- :mod:`~serving.service.checks`: a request checked against a model version's inputs and outputs.
- :mod:`~serving.service.metadata`: model metadata, configuration, statistics, repository index.
- :mod:`~serving.service.tracking`: requests metered and traced; the load the autoscaler reads.
- :mod:`~serving.service.drift_watch`: the per-second PSI gauges of watched versions.
"""
