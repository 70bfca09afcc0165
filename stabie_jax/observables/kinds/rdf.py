"""``rdf``: the element-pair radial distribution functions of a periodic system, concatenated.

Options (``config.observable``): ``rdf_r_max_angstrom`` (6.0, at most half the smallest cell
height), ``rdf_n_bins`` (100). The pairs are every unordered pair of the elements present,
heaviest first (:func:`element_pairs`; water: O–O, O–H, H–H); the reference is the mean over
the reference frames, taken as they are (no reweighting to another temperature).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from stabie_jax.observables import functions
from stabie_jax.observables.errors import rdf_errors
from stabie_jax.observables.registry import BuiltObservable, Observable, ObservableSystem

__all__ = ["OBSERVABLE", "element_pairs", "rdf_name"]


def element_pairs(atomic_numbers) -> tuple[tuple[int, int], ...]:
    """Every unordered pair of the elements present, heaviest first (water: O–O, O–H, H–H)."""
    species = sorted({int(a) for a in np.asarray(atomic_numbers)}, reverse=True)
    return tuple(itertools.combinations_with_replacement(species, 2))


def rdf_name(pair) -> str:
    """Key of an element-pair RDF in results (``(8, 1) -> "rdf_8_1"``)."""
    return f"rdf_{int(pair[0])}_{int(pair[1])}"


def build(system: ObservableSystem, o: Mapping) -> BuiltObservable:
    if system.box is None:
        raise ValueError(
            "config.observable.kind = 'rdf' needs a periodic cell; a molecule in free space "
            "trains on 'h_of_r'"
        )
    r_max, n_bins = float(o.get("rdf_r_max_angstrom", 6.0)), int(o.get("rdf_n_bins", 100))
    z, box, pairs = system.atomic_numbers, system.box, element_pairs(system.atomic_numbers)

    def frame_fn(r):  # [N, 3] -> [P * n_bins]
        return jnp.concatenate([functions.rdf(r, z, p, box, r_max, n_bins) for p in pairs], axis=-1)

    reference = np.asarray(
        jnp.mean(jax.lax.map(frame_fn, jnp.asarray(system.reference_positions)), axis=0)
    )

    def error_fn(value, ref):
        names = [rdf_name(p) for p in pairs]
        split = lambda x: dict(zip(names, np.split(np.asarray(x), len(pairs)), strict=True))
        return rdf_errors(split(value), split(ref), r_max)

    return BuiltObservable(
        name="rdf",
        label="g(r), " + ", ".join(map(rdf_name, pairs)) + " in turn",
        grid=np.tile(functions.rdf_bins(r_max, n_bins)[0], len(pairs)),
        grid_label="r (Å)",
        reference=reference,
        frame_fn=frame_fn,
        error_fn=error_fn,
    )


OBSERVABLE = Observable("rdf", "element-pair radial distribution functions g(r)", build)
