"""A small HTTP client for a running server's operator endpoints (what the lifecycle CLI uses)."""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from typing import Any

DEFAULT_SERVER = "http://127.0.0.1:8000"


class AdminClientError(Exception):
    """The server refused the call (its message) or could not be reached."""


class AdminClient:
    def __init__(self, server: str | None = None, api_key: str | None = None, ca_cert: str | None = None) -> None:
        self.server = (server or os.environ.get("SERVING_SERVER") or DEFAULT_SERVER).rstrip("/")
        self.api_key = api_key or os.environ.get("SERVING_API_KEY")
        self.context = ssl.create_default_context(cafile=ca_cert) if ca_cert else None

    def call(self, method: str, path: str, body: Any = None, timeout_s: float = 120.0) -> Any:
        data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
        request = urllib.request.Request(self.server + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s, context=self.context) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                message = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode(errors="replace")[:500]
            raise AdminClientError(f"{exc.code}: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise AdminClientError(f"cannot reach {self.server}: {exc}") from None
        return json.loads(raw) if raw else {}
