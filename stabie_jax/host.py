"""Host copies of device arrays, also of arrays spread over several processes.

With ``jax.distributed`` the replicas of a run live on the devices of several processes; a
process can read only its own shards, so a replica-sharded array is all-gathered
(``jax.experimental.multihost_utils.process_allgather``) before it is read on the host. In one
process :func:`to_host` is ``np.asarray``.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils

__all__ = ["to_host"]


def to_host(x, dtype=None) -> np.ndarray:
    """``np.asarray(x, dtype)``; an array sharded over several processes is all-gathered first
    (every process gets the whole array)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x, dtype)
