"""``serving serve --standalone``: the replica's data plane without Ray.

One process holds the same servers, service, batchers and lifecycle reconcile a Ray Serve
replica holds (``worker``), and serves Prometheus metrics with prometheus-client under the
names Ray's agent gives them (``prometheus_endpoint``). With ``--workers N`` a supervisor
(``supervisor``) runs N such processes on the same SO_REUSEPORT ports, restarts one that
dies, and serves the metrics of all of them from the snapshots they publish (``live_files``).
"""
