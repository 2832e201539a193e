"""CORS for browser clients: which origins may call, and the headers that say so.

Exposed response headers include ``Inference-Header-Content-Length``, so a page can split a
binary tensor answer read with ``fetch()``.
"""

from __future__ import annotations

import fnmatch

from serving.config.server import CorsConfig

EXPOSE = b"inference-header-content-length, x-request-id, retry-after"


class CorsPolicy:
    def __init__(self, config: CorsConfig) -> None:
        self.config = config
        self._any = "*" in config.allow_origins
        self._exact = {o.lower() for o in config.allow_origins if "*" not in o}
        self._patterns = [o.lower() for o in config.allow_origins if "*" in o and o != "*"]
        self._methods = ", ".join(m.upper() for m in config.allow_methods).encode()
        self._headers = ", ".join(h.lower() for h in config.allow_headers).encode()

    def allows(self, origin: str) -> bool:
        o = origin.lower()
        return self._any or o in self._exact or any(fnmatch.fnmatchcase(o, p) for p in self._patterns)

    def response_headers(self, origin: str) -> list[tuple[bytes, bytes]]:
        """Headers for an actual request from an allowed origin."""
        return [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-expose-headers", EXPOSE),
            (b"vary", b"origin"),
        ]

    def preflight_headers(self, origin: str) -> list[tuple[bytes, bytes]]:
        return [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-methods", self._methods),
            (b"access-control-allow-headers", self._headers),
            (b"access-control-max-age", str(self.config.max_age_s).encode()),
            (b"vary", b"origin"),
        ]
