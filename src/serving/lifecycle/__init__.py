"""The lifecycle's pure domain: routing (aliases, weights, sticky keys), evaluation metrics,
promotion gates, drift (PSI) and lineage records. No orchestration and no I/O beyond reading
and writing its own records; what acts on the registry lives in :mod:`serving.control`."""
