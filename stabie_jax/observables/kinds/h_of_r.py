"""``h_of_r``: the paper's distribution of all interatomic distances of a molecule.

Options (``config.observable``): ``r_max_angstrom`` (10.0), ``n_bins`` (500),
``sigma_angstrom`` (0.01, the Gaussian smearing of the simulated h(r)). The reference is the
histogram of the reference frames on the same grid, Boltzmann-reweighted from
``reference_temperature_kelvin`` when the simulation runs at another temperature
(:func:`stabie_jax.observables.h_of_r_reference_at`). Free space only: the distances have no
periodic images (a periodic system trains on ``rdf``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from stabie_jax.observables import functions
from stabie_jax.observables.errors import h_of_r_errors
from stabie_jax.observables.references import h_of_r_reference_at
from stabie_jax.observables.registry import BuiltObservable, Observable, ObservableSystem

__all__ = ["OBSERVABLE", "frame_function", "options"]


def options(o: Mapping) -> dict:
    """``{"r_max": Å, "n_bins": int, "sigma": Å}`` from the config's ``observable`` section."""
    return dict(
        r_max=float(o.get("r_max_angstrom", 10.0)),
        n_bins=int(o.get("n_bins", 500)),
        sigma=float(o.get("sigma_angstrom", functions.H_OF_R_SIGMA)),
    )


@functools.cache
def frame_function(r_max: float, n_bins: int, sigma: float):
    """``positions [..., N, 3] -> [..., n_bins]``; equal settings give the same function object
    (so evaluations of several models reuse one compiled accumulator)."""
    return functools.partial(functions.h_of_r, r_max=r_max, n_bins=n_bins, sigma=sigma)


def build(system: ObservableSystem, o: Mapping) -> BuiltObservable:
    if system.box is not None:
        raise ValueError(
            "config.observable.kind = 'h_of_r' is a free-space observable (no periodic "
            "images); a periodic system trains on 'rdf' or 'bond_lengths'"
        )
    kw = options(o)
    reference = h_of_r_reference_at(
        system.reference_positions,
        system.reference_energies,
        system.temperature_kelvin,
        system.reference_temperature_kelvin,
        r_max=kw["r_max"],
        n_bins=kw["n_bins"],
    )
    return BuiltObservable(
        name="h_of_r",
        label="h(r)",
        grid=functions.h_of_r_centers(kw["r_max"], kw["n_bins"]),
        grid_label="r (Å)",
        reference=reference,
        frame_fn=frame_function(kw["r_max"], kw["n_bins"], kw["sigma"]),
        error_fn=h_of_r_errors,
    )


OBSERVABLE = Observable("h_of_r", "distribution of all interatomic distances, h(r)", build)
