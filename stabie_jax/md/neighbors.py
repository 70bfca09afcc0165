"""Neighbour lists rebuilt from scratch at every update, batched over replicas.

Lists are rebuilt from the current positions at every step (JAX-MD's ``dr_threshold=0`` mode, no
cell list since positions are unwrapped), so a list is a pure function of positions and rewinds
and re-runs are exact. Overflow is carried in each list and handled on the host: the call is
repeated from its input state with a larger capacity (:func:`retry_on_overflow`).

* :func:`neighbor_list_fn` - the JAX-MD ``partition.neighbor_list`` with those flags (used by the
  replica engine, :class:`stabie_jax.ase_calculator` and ``experiments/periodic.py``);
* :func:`replica_neighbors` - allocate/rebuild batched lists ``[R, ...]`` of a common capacity.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax_md import partition

__all__ = ["ReplicaNeighbors", "neighbor_list_fn", "replica_neighbors", "retry_on_overflow"]


def neighbor_list_fn(
    displacement_fn: Callable,
    box,
    list_cutoff: float,
    *,
    capacity_multiplier: float,
    format=partition.NeighborListFormat.Sparse,
) -> partition.NeighborListFns:
    """JAX-MD neighbour-list functions that rebuild exactly on every ``update``.

    Args:
      displacement_fn: JAX-MD displacement ``(Ra, Rb, **kwargs) -> [3]`` Å.
      box: box passed to ``partition.neighbor_list`` (unused for the list itself without a cell
        list; Å).
      list_cutoff: list cutoff, Å (model cutoff plus any skin).
      capacity_multiplier: capacity headroom at allocation.
      format: JAX-MD ``NeighborListFormat`` (``Sparse`` or ``OrderedSparse``).

    Returns:
      ``partition.NeighborListFns`` with ``dr_threshold=0`` (always rebuild: the list is a pure
      function of positions) and no cell list (any box, unwrapped positions).
    """
    return partition.neighbor_list(
        displacement_fn,
        box,
        list_cutoff,
        dr_threshold=0.0,  # always rebuild: the list is a pure function of positions
        capacity_multiplier=capacity_multiplier,
        disable_cell_list=True,  # positions are unwrapped
        format=format,
    )


class ReplicaNeighbors(NamedTuple):
    """Batched neighbour-list functions of one system, see :func:`replica_neighbors`.

    Attributes:
      allocate: ``(positions [R,N,3] Å, min_capacity=0) -> lists`` with a common capacity
        (host-side: reads the occupancy).
      rebuild: ``(lists, positions [R,N,3]) -> lists`` of the same capacity (traceable).
      rebuild_jit: ``jax.jit(rebuild)``.
    """

    allocate: Callable
    rebuild: Callable
    rebuild_jit: Callable


def replica_neighbors(
    space,
    n_atoms: int,
    list_cutoff: float,
    *,
    capacity_multiplier: float,
    neighbor_format=partition.NeighborListFormat.Sparse,
) -> ReplicaNeighbors:
    """Per-replica neighbour lists of ``n_atoms`` atoms within ``list_cutoff`` Å.

    Args:
      space: :class:`stabie_jax.md.Space` (its box, or ``1e4`` Å in free space, sizes the list).
      n_atoms: atoms per replica ``N``.
      list_cutoff: model cutoff plus skin, Å.
      capacity_multiplier: capacity headroom at (re)allocation over the largest occupancy.
      neighbor_format: ``Sparse`` (both directions) or ``OrderedSparse`` (each pair once).

    Returns:
      A :class:`ReplicaNeighbors`.
    """
    box = space.box if space.box is not None else 1.0e4
    neighbor_fn = neighbor_list_fn(
        space.displacement_fn,
        jnp.asarray(box, jnp.float32),
        list_cutoff,
        capacity_multiplier=capacity_multiplier,
        format=neighbor_format,
    )
    ordered = neighbor_format == partition.NeighborListFormat.OrderedSparse
    max_edges = n_atoms * (n_atoms - 1) // (2 if ordered else 1)
    list_cutoff_sq = list_cutoff**2
    pair_displacements = jax.vmap(jax.vmap(space.displacement_fn, (None, 0)), (0, None))

    @jax.jit
    def max_occupancy(positions):
        def count(r):
            d = pair_displacements(r, r)
            d2 = jnp.sum(d**2, axis=-1)
            inside = jnp.sum((d2 < list_cutoff_sq) & ~jnp.eye(n_atoms, dtype=bool))
            return inside // 2 if ordered else inside  # OrderedSparse keeps i < j only

        return jnp.max(jax.vmap(count)(positions))

    def allocate(positions, min_capacity: int = 0):
        """Batched neighbour lists for ``positions [R,N,3]`` with a common capacity."""
        occupancy = int(max_occupancy(positions))
        capacity = max(int(math.ceil(occupancy * capacity_multiplier)) + 1, int(min_capacity))
        capacity = min(capacity, max_edges)
        template = neighbor_fn.allocate(positions[0])
        template = dataclasses.replace(template, max_occupancy=capacity)
        return jax.jit(jax.vmap(lambda r: template.update(r)))(positions)

    def rebuild(neighbor, positions):
        return jax.vmap(lambda n, r: n.update(r))(neighbor, positions)

    return ReplicaNeighbors(allocate=allocate, rebuild=rebuild, rebuild_jit=jax.jit(rebuild))


def retry_on_overflow(run: Callable, place: Callable, allocate: Callable, max_reallocations: int):
    """Wrap ``run(params, state) -> (state, out)`` so that an overflowing call is repeated.

    Args:
      run: one (jitted) call on a :class:`stabie_jax.md.ReplicaState` with neighbour lists.
      place: ``(params, state) -> (params, state)`` device placement applied after reallocation.
      allocate: :attr:`ReplicaNeighbors.allocate`.
      max_reallocations: capacity increases (x1.5 each) tried before giving up.

    Returns:
      ``(params, state) -> (new_state, out)``; raises ``RuntimeError`` when the list still
      overflows after ``max_reallocations``.
    """

    def run_reallocating(params, state):
        for _ in range(max_reallocations + 1):
            new_state, out = run(params, state)
            overflow = np.asarray(new_state.neighbor.did_buffer_overflow)
            if not overflow.any():
                return new_state, out
            capacity = state.neighbor.idx.shape[-1]
            params, state = place(
                params,
                state._replace(
                    neighbor=allocate(state.md.position, min_capacity=int(1.5 * capacity) + 1)
                ),
            )
        raise RuntimeError(
            f"neighbour list still overflows after {max_reallocations} reallocations "
            f"(capacity {state.neighbor.idx.shape[-1]}); the system may have collapsed"
        )

    return run_reallocating
