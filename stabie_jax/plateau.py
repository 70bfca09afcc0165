"""Reduce-on-plateau learning-rate control as a pure function of an immutable state.

Semantics of PyTorch's ``ReduceLROnPlateau(mode="min", threshold_mode="rel")``, which the
authors' pretraining and StABlE training use (docs/method.md, Learning-rate schedule): a value
*improves* when ``value < best·(1 − threshold)``; after more than ``patience`` consecutive
non-improving updates the learning rate becomes ``max(lr·factor, min_lr)`` and the counter
restarts. The state holds the learning rate itself, so a schedule reads it directly and a
checkpoint restores it exactly.

Examples:
  >>> state = plateau_init(1e-3)
  >>> for v in [1.0, 1.0, 1.0]:
  ...     state = plateau_update(state, v, factor=0.5, patience=1, min_lr=1e-5)
  >>> float(state.learning_rate)
  0.0005
"""

from __future__ import annotations

import math
from typing import NamedTuple

__all__ = [
    "PlateauState",
    "plateau_init",
    "plateau_update",
]


class PlateauState(NamedTuple):
    """Host-side plateau state (Python scalars, checkpointable).

    Attributes:
      learning_rate: current learning rate.
      best: best value seen so far (``inf`` before the first update).
      num_bad: consecutive updates without improvement.
      num_reductions: how many times the rate was reduced.
    """

    learning_rate: float
    best: float
    num_bad: int
    num_reductions: int


def plateau_init(learning_rate: float) -> PlateauState:
    """Initial state at ``learning_rate``."""
    return PlateauState(float(learning_rate), math.inf, 0, 0)


def plateau_update(
    state: PlateauState,
    value: float,
    *,
    factor: float,
    patience: int,
    min_lr: float = 0.0,
    threshold: float = 1e-4,
) -> PlateauState:
    """Feed one monitored value (e.g. the validation loss of an epoch).

    Args:
      state: current :class:`PlateauState`.
      value: monitored quantity (lower is better). NaN never counts as an improvement.
      factor: multiplicative reduction, in (0, 1).
      patience: number of non-improving updates tolerated before reducing.
      min_lr: floor of the learning rate.
      threshold: relative improvement needed.

    Returns:
      The new state.
    """
    if not 0.0 < factor < 1.0:
        raise ValueError(f"plateau factor must be in (0, 1), got {factor}")
    value = float(value)
    if value < state.best * (1.0 - threshold):
        return state._replace(best=value, num_bad=0)
    num_bad = state.num_bad + 1
    if num_bad > patience:
        new_lr = max(state.learning_rate * factor, min_lr)
        reduced = new_lr < state.learning_rate
        return state._replace(
            learning_rate=new_lr, num_bad=0, num_reductions=state.num_reductions + int(reduced)
        )
    return state._replace(num_bad=num_bad)
