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

from stabie_jax.models.graph import build_graph, dense_edges, edges_from_neighbor_list


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
        functions require ``neighbor=`` a JAX-MD ``partition.Sparse`` neighbour list.

    Returns:
      A :class:`Potential`. ``params`` is the Flax ``params`` collection (not wrapped in a
      ``{"params": ...}`` dict).
    """
    atomic_numbers = jnp.asarray(np.asarray(atomic_numbers), dtype=jnp.int32)
    n_atoms = int(atomic_numbers.shape[0])
    static_edges = None if use_neighbor_list else dense_edges(n_atoms)

    def per_atom_energy_fn(params, positions, neighbor=None, **displacement_kwargs):
        if positions.shape != (n_atoms, 3):
            raise ValueError(
                f"positions must have shape ({n_atoms}, 3) for this potential, got "
                f"{positions.shape}"
            )
        if use_neighbor_list:
            if neighbor is None:
                raise ValueError("this potential uses a neighbour list: pass neighbor=...")
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
