"""serving: a model server for the Open Inference Protocol (KServe V2).

What a ``platform: python`` model's code imports from here: :class:`InvalidInput` (refuse a
request with 400 / INVALID_ARGUMENT), :data:`ROW_ERRORS` (fail single rows of a batch) and
:class:`ModelContext` (what the model's constructor receives).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from serving.errors import InvalidInput
from serving.rows import ROW_ERRORS

if TYPE_CHECKING:
    from serving.runtime.python import ModelContext

__all__ = ["ROW_ERRORS", "InvalidInput", "ModelContext"]


def __getattr__(name: str) -> Any:
    if name == "ModelContext":  # imported on use: `import serving` stays light
        from serving.runtime.python import ModelContext

        return ModelContext
    raise AttributeError(f"module 'serving' has no attribute {name!r}")
