"""``vacf``: the normalised velocity autocorrelation function (evaluation only).

Options (``config.observable``): ``vacf_window`` (100 frames of lag). The reference is the VACF
of ``ObservableSystem.reference_velocities`` (consecutive frames) when the data hold them, else
None (e.g. rMD17: frames drawn at random, no velocities).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from stabie_jax.observables import functions
from stabie_jax.observables.errors import vacf_mae
from stabie_jax.observables.registry import BuiltObservable, Observable, ObservableSystem

__all__ = ["OBSERVABLE"]


def build(system: ObservableSystem, o: Mapping) -> BuiltObservable:
    window = int(o.get("vacf_window", 100))
    trajectory_fn = functools.partial(functions.vacf, window=window)
    reference = None
    if system.reference_velocities is not None:
        reference = np.asarray(trajectory_fn(jnp.asarray(system.reference_velocities)))
    dt_ps = None if system.frame_interval_fs is None else system.frame_interval_fs / 1000.0
    return BuiltObservable(
        name="vacf",
        label="VACF C(τ)",
        grid=np.arange(window) * (dt_ps or 1.0),
        grid_label="lag (ps)" if dt_ps else "lag (frames)",
        reference=reference,
        frame_fn=None,
        error_fn=lambda value, ref: {"mae": vacf_mae(value, ref)},
        trajectory_fn=trajectory_fn,
    )


OBSERVABLE = Observable(
    "vacf", "velocity autocorrelation function (evaluation only)", build, trainable=False
)
