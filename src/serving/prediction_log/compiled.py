"""The prediction log's compiled hand-over (``_hand_over.c``: ``HandOver``, the request path's
part of the log, and ``RowBlocks``), where setup.py built it; None where it did not (no C
compiler), and the Python it mirrors runs instead."""

from __future__ import annotations

from types import ModuleType

import numpy as np

from serving.prediction_log.records import nbytes_of, sampled

hand_over: ModuleType | None
try:
    import serving.prediction_log._hand_over as _hand_over
except ImportError:  # pragma: no cover (every test machine builds it)
    hand_over = None
else:
    _hand_over.configure(nbytes_of, sampled, np.array, np.empty)
    hand_over = _hand_over
