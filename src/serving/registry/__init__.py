"""The versions a server holds and how a request picks one.

- :mod:`~serving.registry.versions`: :class:`ModelRegistry`, every known version, loaded or not;
  loading, reloading and unloading them while the others serve.
- :mod:`~serving.registry.lane`: :class:`ModelVersion`, one served version's lane (state,
  batcher, worker thread, statistics).
- :mod:`~serving.registry.hang`: a version whose execution hangs, reloaded on a fresh thread.
- :mod:`~serving.registry.choice`: the version a request gets (number, alias, traffic split, shadow).
"""
