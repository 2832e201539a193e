"""Reading the small files an operator or a tool writes (model.yaml, lineage.yaml, the API keys
file), bounded before anything is allocated or parsed: a size limit, and nesting refused with
a clear error instead of a ``RecursionError``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from serving.errors import ConfigError, FileReadError

MAX_CONFIG_BYTES = 1 << 20
"""The largest YAML file read (a model.yaml with every option is about 3 KiB)."""


def read_text(path: Path, max_bytes: int = MAX_CONFIG_BYTES) -> str:
    """The file's UTF-8 text. ``FileNotFoundError`` passes through (callers decide what absent means).

    Raises:
        ConfigError: larger than ``max_bytes``, or not UTF-8.
        FileReadError: the file exists but cannot be read (permissions, a folder in its place, I/O).
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise ConfigError(f"{path} is {size:,} bytes; at most {max_bytes:,} are read")
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise FileReadError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:  # grew while being read
        raise ConfigError(f"{path} is over {max_bytes:,} bytes; at most that many are read")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text: {exc}") from None


def load_yaml(path: Path, max_bytes: int = MAX_CONFIG_BYTES) -> Any:
    """The file parsed with ``yaml.safe_load`` (None when empty).

    Raises:
        ConfigError: too large, not UTF-8, not YAML, or nested too deeply to parse.
        FileReadError: the file exists but cannot be read.
    """
    text = read_text(path, max_bytes)
    try:
        return yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"{path}: cannot read YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: cannot read YAML: {exc}") from None
