"""The plain-Python reference (kernel.reference.settle_many) as a peer: one visit at a time, the
policy read from the Pack Structs, accumulators carried in a dict. The Arrow -> dict conversion
is part of its time, as it would be for a user."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from kernel import reference

from . import chain

NAME = "Python reference"


def version() -> str:
    import platform
    return "CPython " + platform.python_version()


def settle(visits: pa.Table, pack) -> dict[str, np.ndarray]:
    """The compared result columns (chain.COMPARED) in input order."""
    results = reference.settle_many(pack, {}, visits.to_pylist())
    return {c: np.fromiter((r[c] for r in results), dtype=np.int64, count=len(results))
            for c in chain.COMPARED}
