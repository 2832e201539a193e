"""Configuration schemas, each validated when it is built: a typo or an out-of-range value fails
at start-up with the file, the key and what is allowed.

- :mod:`serving.config.model`: one model's ``model.yaml``.
- :mod:`serving.config.server`: the server-wide settings, the one settings model of every entry point.
- :mod:`serving.config.strict`: their common base (unknown keys refused) and error formatting.
"""
