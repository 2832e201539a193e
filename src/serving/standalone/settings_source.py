"""Where a standalone server's settings come from, so that SIGHUP can read them again.

``serving serve`` resolves its settings from a YAML file, ``SERVING_*`` variables and its flags;
the same sources are read again on SIGHUP (and by each worker a supervisor starts), so an edit
of the file or of a keys file takes effect without a restart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.config.server import ServerSettings, load_settings


@dataclass(frozen=True)
class SettingsSource:
    config: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    """The command line's values (JSON values: paths as strings)."""

    def load(self) -> ServerSettings:
        """Raises: ConfigError: a key or value is not allowed."""
        return load_settings(self.config, **self.overrides)

    def to_json(self) -> str:
        return json.dumps({"config": str(self.config) if self.config else None, "overrides": self.overrides})

    @classmethod
    def from_json(cls, text: str) -> SettingsSource:
        doc = json.loads(text)
        return cls(Path(doc["config"]) if doc["config"] else None, dict(doc["overrides"]))


FIXED = ("host", "http_port", "grpc_port", "metrics_port", "workers", "standalone")
"""Settings a reload cannot change: the sockets and processes already made."""


def fixed_changes(running: ServerSettings, reread: ServerSettings) -> list[str]:
    return [name for name in FIXED if getattr(running, name) != getattr(reread, name)]
