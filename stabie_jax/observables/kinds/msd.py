"""``msd``: the mean squared displacement against lag time (evaluation only).

Options (``config.observable``): ``msd_max_lag`` (100 frames). Positions must be unwrapped
(:func:`stabie_jax.evaluation.unwrap_positions`). The reference is the MSD of the reference
frames when they are consecutive (``ObservableSystem.frame_interval_fs`` given), else None.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from stabie_jax.observables import functions
from stabie_jax.observables.registry import (
    BuiltObservable,
    Observable,
    ObservableSystem,
    mean_absolute_error,
)

__all__ = ["OBSERVABLE"]


def build(system: ObservableSystem, o: Mapping) -> BuiltObservable:
    max_lag = int(o.get("msd_max_lag", 100))
    trajectory_fn = functools.partial(functions.mean_squared_displacement, max_lag=max_lag)
    reference, dt_ps = None, None
    if system.frame_interval_fs is not None:
        dt_ps = system.frame_interval_fs / 1000.0
        reference = np.asarray(trajectory_fn(jnp.asarray(system.reference_positions)))
    return BuiltObservable(
        name="msd",
        label="MSD (Å²)",
        grid=np.arange(max_lag + 1) * (dt_ps or 1.0),
        grid_label="lag (ps)" if dt_ps else "lag (frames)",
        reference=reference,
        frame_fn=None,
        error_fn=mean_absolute_error,
        trajectory_fn=trajectory_fn,
    )


OBSERVABLE = Observable(
    "msd", "mean squared displacement (evaluation only)", build, trainable=False
)
