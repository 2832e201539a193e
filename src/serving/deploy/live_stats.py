"""Every replica's totals in one place, for the operator page: each replica writes its
snapshot (``service.live_snapshot()``) to Ray's GCS key-value store once a second, under
``<server>/<replica>``; the replica that answers ``/ui/api/stats`` reads them all and sums
them (``telemetry.live.summarize``). The GCS is shared by the whole cluster, so the page sees
every replica of the server on every node, whichever replica it asked.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from ray.experimental import internal_kv

log = logging.getLogger(__name__)

NAMESPACE = "serving-live"
PUBLISH_EVERY_S = 1.0


class LiveStatsPublisher:
    """A thread that publishes this replica's snapshot; :meth:`close` stops it and removes the key."""

    def __init__(self, server_name: str, replica: str, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.prefix = f"{server_name}/"
        self.key = f"{self.prefix}{replica}"
        self.replica = replica
        self.node = socket.gethostname()
        self._snapshot = snapshot
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="serving-live-stats", daemon=True)
        self._thread.start()

    def publish(self) -> None:
        doc = {**self._snapshot(), "replica": self.replica, "node": self.node, "pid": os.getpid()}
        internal_kv._internal_kv_put(self.key, json.dumps(doc), overwrite=True, namespace=NAMESPACE)

    def _run(self) -> None:
        while not self._closed.wait(PUBLISH_EVERY_S):
            try:
                self.publish()
            except Exception:  # the GCS away for a moment: the next second tries again
                log.warning("could not publish live stats", exc_info=True)

    def read_all(self) -> list[dict[str, Any]]:
        """Every replica's last snapshot (this one's fresh); blocking GCS calls: run off the loop."""
        docs = {self.replica: {**self._snapshot(), "replica": self.replica, "node": self.node}}
        for key in internal_kv._internal_kv_list(self.prefix, namespace=NAMESPACE):
            name = key.decode()[len(self.prefix) :]
            if name == self.replica:
                continue
            raw = internal_kv._internal_kv_get(key, namespace=NAMESPACE)
            if raw:
                docs[name] = json.loads(raw)
        return list(docs.values())

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._thread.join()
        try:
            internal_kv._internal_kv_del(self.key, namespace=NAMESPACE)
        except Exception:
            log.warning("could not remove live stats key %s", self.key, exc_info=True)
