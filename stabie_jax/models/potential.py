"""Turn any per-atom-energy Flax module into the pure functions the rest of the code uses.

JAX-MD, the Boltzmann estimator, pretraining and the ASE calculator only ever see a
:class:`Potential`: three pure functions of ``(params, positions, neighbor=None)``.

Examples:
  >>> from jax_md import space
  >>> pot = make_potential(module, atomic_numbers, space.free()[0])   # doctest: +SKIP
  >>> energy_ev = pot.energy_fn(params, positions)                    # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax_md import partition

from stabie_jax.models.graph import build_graph, dense_edges, dense_pairs, edges_from_neighbor_list

__all__ = [
    "Potential",
    "atomwise_scale_shift",
    "make_potential",
    "nan_unless",
    "neighbor_format",
    "parameter_count",
    "species_index",
]


class Potential(NamedTuple):
    """Pure functions of a model.

    Attributes:
      energy_fn: ``(params, positions [N,3] Å, neighbor=None) -> scalar`` total energy, eV.
      per_atom_energy_fn: same arguments ``-> [N]`` per-atom energies, eV (sum = energy).
      force_fn: same arguments ``-> [N,3]`` forces ``-dE/dR``, eV/Å.
    """

    energy_fn: Callable
    per_atom_energy_fn: Callable
    force_fn: Callable


def neighbor_format(module) -> partition.NeighborListFormat:
    """The JAX-MD neighbour-list format ``module``'s potential needs (``use_neighbor_list=True``):
    ``OrderedSparse`` (each pair once) for a module with ``undirected_edges = True``, else
    ``Sparse`` (both directions)."""
    if getattr(module, "undirected_edges", False):
        return partition.NeighborListFormat.OrderedSparse
    return partition.NeighborListFormat.Sparse


def make_potential(
    module,
    atomic_numbers,
    displacement_fn: Callable,
    *,
    use_neighbor_list: bool = False,
) -> Potential:
    """Wrap ``module`` (``apply(variables, atomic_numbers, graph) -> [N]`` eV) into pure functions.

    Args:
      module: a Flax module returning per-atom energies in eV.
      atomic_numbers: ``[N]`` ints, fixed for this potential.
      displacement_fn: JAX-MD displacement function of the space (free or periodic).
      use_neighbor_list: if False, all ordered pairs are edges (molecules); if True, the
        functions require ``neighbor=`` a JAX-MD ``partition.Sparse`` neighbour list. A module
        with ``undirected_edges = True`` gets each pair once instead (:func:`dense_pairs`, or an
        ``OrderedSparse`` neighbour list).

    Returns:
      A :class:`Potential`. ``params`` is the Flax ``params`` collection (not wrapped in a
      ``{"params": ...}`` dict).
    """
    atomic_numbers = jnp.asarray(np.asarray(atomic_numbers), dtype=jnp.int32)
    n_atoms = int(atomic_numbers.shape[0])
    undirected = bool(getattr(module, "undirected_edges", False))
    pairs = dense_pairs if undirected else dense_edges
    static_edges = None if use_neighbor_list else pairs(n_atoms)

    def per_atom_energy_fn(params, positions, neighbor=None, **displacement_kwargs):
        if positions.shape != (n_atoms, 3):
            raise ValueError(
                f"positions must have shape ({n_atoms}, 3) for this potential, got "
                f"{positions.shape}"
            )
        if use_neighbor_list:
            if neighbor is None:
                raise ValueError("this potential uses a neighbour list: pass neighbor=...")
            expected = partition.OrderedSparse if undirected else partition.Sparse
            # Index-only stand-ins (losses.NeighborIndices) carry no format and are trusted.
            given = getattr(neighbor, "format", None)
            if given is not None and given is not expected:
                raise ValueError(
                    f"this {type(module).__name__} needs a neighbour list in format "
                    f"{expected.name} (undirected_edges={undirected}), got {given.name};"
                    f" build it with partition.neighbor_list(..., format=partition.{expected.name})"
                )
            senders, receivers = edges_from_neighbor_list(neighbor)
        else:
            senders, receivers = static_edges
        graph = build_graph(displacement_fn, positions, senders, receivers, **displacement_kwargs)
        return module.apply({"params": params}, atomic_numbers, graph)

    def energy_fn(params, positions, neighbor=None, **displacement_kwargs):
        return jnp.sum(per_atom_energy_fn(params, positions, neighbor, **displacement_kwargs))

    def force_fn(params, positions, neighbor=None, **displacement_kwargs):
        return -jax.grad(energy_fn, argnums=1)(params, positions, neighbor, **displacement_kwargs)

    return Potential(energy_fn, per_atom_energy_fn, force_fn)


def parameter_count(params) -> int:
    """Number of scalar entries in a params pytree (trainable parameters of a model)."""
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))


def species_index(atomic_numbers, species) -> jax.Array:
    """Position of each atom's element in ``species``; ``len(species)`` for unknown elements.

    When ``atomic_numbers`` is concrete (not traced), an element missing from ``species`` raises;
    under tracing it maps to ``len(species)``, which callers turn into NaN energies so that the
    error cannot pass silently.

    Args:
      atomic_numbers: ``[N]`` ints.
      species: sequence of distinct atomic numbers, e.g. ``(1, 6, 7, 8)``.

    Returns:
      ``[N]`` int32 indices.

    Raises:
      ValueError: a concrete atomic number is not in ``species``.
    """
    table = np.asarray(species, dtype=np.int32)
    if table.ndim != 1 or len(set(table.tolist())) != table.size:
        raise ValueError(f"species must be a sequence of distinct atomic numbers, got {species}")
    if not isinstance(atomic_numbers, jax.core.Tracer):
        z = np.asarray(atomic_numbers)
        unknown = sorted(set(z.tolist()) - set(table.tolist()))
        if unknown:
            raise ValueError(
                f"atomic numbers {unknown} are not among the model's species {tuple(table)}; "
                "build the model with species=... listing every element of the system"
            )
    z = jnp.asarray(atomic_numbers, dtype=jnp.int32)
    matches = z[:, None] == jnp.asarray(table)[None, :]
    return jnp.where(jnp.any(matches, axis=1), jnp.argmax(matches, axis=1), table.size)


def atomwise_scale_shift(
    per_atom: jax.Array, atomic_numbers, species, energy_scale, energy_shift
) -> jax.Array:
    """Affine map ``e_i = scale[s_i] * u_i + shift[s_i]`` from model output to energies (eV).

    ``energy_scale`` and ``energy_shift`` are each a float (the same for every atom) or a
    sequence aligned with ``species`` (per element). They are constants, not parameters: the
    models take them as module fields, so optimisers never change them. Atoms of an element
    outside ``species`` get NaN (see :func:`species_index`).

    Args:
      per_atom: ``[N]`` normalised per-atom outputs ``u_i``.
      atomic_numbers: ``[N]`` ints.
      species: atomic numbers the tables refer to; may be None when both are floats.
      energy_scale: eV per output unit, float or ``[len(species)]``.
      energy_shift: eV, float or ``[len(species)]``.

    Returns:
      ``[N]`` per-atom energies in eV, dtype of ``per_atom``.
    """
    per_species = [np.ndim(v) > 0 for v in (energy_scale, energy_shift)]
    if not any(per_species):
        if float(energy_scale) == 1.0 and float(energy_shift) == 0.0:
            return per_atom
        return float(energy_scale) * per_atom + float(energy_shift)
    if species is None:
        raise ValueError("per-species energy_scale/energy_shift need the model's species=...")
    index = species_index(atomic_numbers, species)
    known = index < len(species)
    values = []
    for value in (energy_scale, energy_shift):
        if np.ndim(value) == 0:
            values.append(jnp.asarray(float(value), per_atom.dtype))
            continue
        table = np.asarray(value, dtype=np.float64)
        if table.shape != (len(species),):
            raise ValueError(
                f"per-species energy scale/shift has shape {table.shape}, expected "
                f"({len(species)},) to match species={tuple(species)}"
            )
        table = np.append(table, 0.0)
        values.append(jnp.asarray(table, per_atom.dtype)[index])
    return nan_unless(values[0] * per_atom + values[1], known)


def nan_unless(x: jax.Array, valid: jax.Array) -> jax.Array:
    """``x`` where ``valid``, NaN elsewhere (computed as 0/0 so no NaN constant is ever built,
    which keeps ``jax_debug_nans`` quiet on valid input)."""
    one = valid.astype(x.dtype)
    return x * (one / one)
