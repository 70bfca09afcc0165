"""Edge lists ("graphs") that every model consumes, built from positions and a space.

All models in :mod:`stabie_jax.models` are Flax modules with the signature::

    module.apply({"params": params}, atomic_numbers, graph) -> per_atom_energy  # [n_atoms], eV

where ``graph`` is a :class:`Graph`. The graph carries edge *vectors* already computed with the
space's displacement function (free space or periodic minimum image), so forces follow from
``jax.grad`` with respect to positions through :func:`build_graph`.

Conventions (the same as JAX-MD's ``partition.Sparse`` neighbour format):

* an edge ``e`` connects ``senders[e] -> receivers[e]``; messages are aggregated at receivers
  with ``jax.ops.segment_sum(..., num_segments=n_atoms)``;
* ``edge_vectors[e] = R[receivers[e]] - R[senders[e]]`` (minimum image under PBC), Å;
* padded edges have ``senders == receivers == n_atoms`` (out of range, so segment sums drop
  them) and ``edge_mask == False``; their vectors are a finite dummy of length
  :data:`PADDING_DISTANCE` so that norms and their gradients stay finite.

Two sources of edges:

* :func:`dense_edges` - all ordered pairs ``i != j``; fastest for molecules of a few tens of
  atoms, no neighbour list, no overflow. :func:`dense_pairs` - each unordered pair once, for
  modules that declare ``undirected_edges = True``.
* :func:`edges_from_neighbor_list` - a JAX-MD ``partition.Sparse`` neighbour list (bulk, PBC).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Graph",
    "PADDING_DISTANCE",
    "build_graph",
    "dense_edges",
    "dense_pairs",
    "edges_from_neighbor_list",
]

PADDING_DISTANCE = 1.0e3
"""Length (Å) of the dummy vector given to padded edges; far beyond any cutoff."""


class Graph(NamedTuple):
    """Directed edge list with vectors.

    Attributes:
      edge_vectors: ``[n_edges, 3]`` Å, ``R[receivers] - R[senders]`` (minimum image).
      senders: ``[n_edges]`` int32, padding value ``n_atoms``.
      receivers: ``[n_edges]`` int32, padding value ``n_atoms``.
      edge_mask: ``[n_edges]`` bool, False on padding.
    """

    edge_vectors: jax.Array
    senders: jax.Array
    receivers: jax.Array
    edge_mask: jax.Array

    @property
    def edge_lengths(self) -> jax.Array:
        """``[n_edges]`` Å; finite (``PADDING_DISTANCE``) on padding."""
        return jnp.sqrt(jnp.sum(self.edge_vectors**2, axis=-1))


def dense_edges(n_atoms: int) -> tuple[np.ndarray, np.ndarray]:
    """All ordered pairs ``(j -> i)`` with ``i != j`` as static numpy index arrays.

    Returns:
      ``(senders, receivers)``, each ``[n_atoms * (n_atoms - 1)]`` int32.
    """
    receivers, senders = np.nonzero(~np.eye(n_atoms, dtype=bool))
    return senders.astype(np.int32), receivers.astype(np.int32)


def dense_pairs(n_atoms: int) -> tuple[np.ndarray, np.ndarray]:
    """Every unordered pair once, ``senders[e] = i < receivers[e] = j``, as static index arrays.

    The undirected edge list for modules with ``undirected_edges = True`` (SchNet), which send
    messages both ways along each edge.

    Returns:
      ``(senders, receivers)``, each ``[n_atoms * (n_atoms - 1) / 2]`` int32.
    """
    senders, receivers = np.triu_indices(n_atoms, k=1)
    return senders.astype(np.int32), receivers.astype(np.int32)


def edges_from_neighbor_list(neighbor) -> tuple[jax.Array, jax.Array]:
    """``(senders, receivers)`` from a JAX-MD ``partition.Sparse`` neighbour list.

    JAX-MD stores ``idx[0]`` = receiver (centre atom) and ``idx[1]`` = sender, padded with
    ``n_atoms``; this keeps that padding.
    """
    return neighbor.idx[1], neighbor.idx[0]


def build_graph(
    displacement_fn: Callable,
    positions: jax.Array,
    senders: jax.Array,
    receivers: jax.Array,
    **displacement_kwargs,
) -> Graph:
    """Edge vectors for an edge list, safe for padded edges.

    Args:
      displacement_fn: JAX-MD displacement ``(Ra, Rb, **kw) -> Ra - Rb`` (minimum image).
      positions: ``[n_atoms, 3]`` Å.
      senders, receivers: ``[n_edges]`` int, padding value ``n_atoms``.
      **displacement_kwargs: forwarded to ``displacement_fn`` (e.g. ``box=`` for NPT).

    Returns:
      A :class:`Graph`.
    """
    n_atoms = positions.shape[0]
    senders = jnp.asarray(senders, dtype=jnp.int32)
    receivers = jnp.asarray(receivers, dtype=jnp.int32)
    edge_mask = (senders < n_atoms) & (receivers < n_atoms)
    r_send = jnp.take(positions, senders, axis=0, mode="clip")
    r_recv = jnp.take(positions, receivers, axis=0, mode="clip")
    vectors = jax.vmap(lambda a, b: displacement_fn(a, b, **displacement_kwargs))(r_recv, r_send)
    dummy = jnp.zeros_like(vectors).at[:, 0].set(PADDING_DISTANCE)
    vectors = jnp.where(edge_mask[:, None], vectors, dummy)
    return Graph(vectors, senders, receivers, edge_mask)
