"""Types of the compiled hand-over (``_hand_over.c``)."""

from collections.abc import Callable
from typing import Any

import numpy as np

from serving.prediction_log.writer import HandOverFunction

Array = np.ndarray[Any, Any]

BLOCK_BYTES: int

class RowBlocks:
    row_shape: tuple[int, ...]
    dtype: np.dtype[Any]
    rows: int
    max_blocks: int
    def __init__(self, row_shape: tuple[int, ...], dtype: np.dtype[Any], max_bytes: float) -> None: ...
    def copy(self, values: Array) -> Array: ...
    def take_runs(self) -> list[Array] | None: ...

def HandOver(log: object, /) -> HandOverFunction: ...  # a class: typed by how its instances are called
def configure(
    nbytes_of: Callable[[dict[str, Array] | None], int],
    sampled: Callable[[str, float], bool],
    array: Callable[..., Array],
    empty: Callable[..., Array],
    /,
) -> None: ...
