"""``bond_lengths``: the centre-to-atom distances of every neighbourhood (water: the O–H bonds),
trained with the localized estimator.

The system must consist of identical molecules (``ObservableSystem.neighbourhoods``, e.g. from
:func:`stabie_jax.localized_estimator.neighbourhoods_from_bonds`). The frame function returns
``[M, k − 1]`` lengths, one row per neighbourhood; the reference is the ``[k − 1]`` mean over
the reference frames and molecules (:func:`mean_neighbourhood_lengths`), which the localized
loss compares each neighbourhood's binned distribution against. No options.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from stabie_jax.observables import functions
from stabie_jax.observables.registry import (
    BuiltObservable,
    Observable,
    ObservableSystem,
    mean_absolute_error,
)

__all__ = ["OBSERVABLE", "mean_neighbourhood_lengths", "neighbourhood_lengths_fn"]


def neighbourhood_lengths_fn(neighbourhoods, displacement_fn=None):
    """``positions [N, 3] -> [M, k − 1]`` Å, the lengths of every neighbourhood."""
    atoms = jnp.asarray(neighbourhoods)
    return lambda r: jax.vmap(
        lambda a: functions.neighbourhood_bond_lengths(r, a, displacement_fn)
    )(atoms)


def mean_neighbourhood_lengths(positions, neighbourhoods, displacement_fn=None) -> np.ndarray:
    """``[k − 1]`` Å: the lengths averaged over frames ``positions [F, N, 3]`` and molecules."""
    per_frame = neighbourhood_lengths_fn(neighbourhoods, displacement_fn)
    lengths = np.asarray(jax.jit(jax.vmap(per_frame))(jnp.asarray(positions)))
    return lengths.reshape(-1, np.shape(neighbourhoods)[1] - 1).mean(axis=0)


def build(system: ObservableSystem, o: Mapping) -> BuiltObservable:
    del o
    if system.neighbourhoods is None:
        raise ValueError(
            "config.observable.kind = 'bond_lengths' needs identical molecules (one "
            "neighbourhood per molecule, centre first); this system's bond graph does not split "
            "into identical molecules: train on 'rdf' instead"
        )
    hood = np.asarray(system.neighbourhoods)
    reference = mean_neighbourhood_lengths(system.reference_positions, hood, system.displacement_fn)
    return BuiltObservable(
        name="bond_lengths",
        label="bond length (Å)",
        grid=np.arange(hood.shape[1] - 1),
        grid_label="bond of the neighbourhood",
        reference=reference,
        frame_fn=neighbourhood_lengths_fn(hood, system.displacement_fn),
        error_fn=lambda value, ref: mean_absolute_error(
            np.mean(np.reshape(value, (-1, np.size(ref))), axis=0), ref
        ),
        estimator="localized",
        neighbourhoods=hood,
    )


OBSERVABLE = Observable(
    "bond_lengths", "centre-to-atom distances of each molecule (localized estimator)", build
)
