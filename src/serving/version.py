"""The version string of the installed ``serving`` package (server metadata, batch manifests)."""

from __future__ import annotations

import importlib.metadata

try:
    SERVER_VERSION = importlib.metadata.version("serving")
except importlib.metadata.PackageNotFoundError:  # running from a source tree without installing
    SERVER_VERSION = "0+unknown"
