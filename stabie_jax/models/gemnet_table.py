"""Per-atom neighbour tables with static capacity: GemNet-T's triplets built inside ``jit``.

GemNet-T passes messages along *triplets*: pairs of distinct directed edges ``b -> a`` and
``c -> a`` that end on the same atom ``a`` (the angle ``angle(c, a, b)`` enters the basis).
Together with the swap ``c -> a  <->  a -> c`` this realises two-hop paths ``b -> a -> c``.

The edge list of a :class:`~stabie_jax.models.graph.Graph` (a JAX-MD ``Sparse`` neighbour list
or all pairs) is re-indexed into a dense per-atom table of fixed width ``capacity``:

* slot ``(a, k)``, flattened to ``a * capacity + k``, holds the ``k``-th edge ``s -> a`` that
  ends on atom ``a`` **and is shorter than the cutoff** (edges in the skin of a neighbour list
  are left out; they would contribute exactly zero through the envelope anyway);
* the triplets of atom ``a`` are all pairs ``(k, k')`` with ``k != k'`` of filled slots, so the
  triplet tensors are ``[n_atoms, capacity, capacity, ...]`` with a mask: no variable-length
  index lists, nothing data-dependent in any shape;
* ``swap[slot]`` is the slot of the reverse edge ``a -> s``.

Nothing is dropped silently: if an atom has more than ``capacity`` neighbours inside the
cutoff, ``overflow`` is set; if an edge's reverse is missing from the graph (an asymmetric
list, e.g. JAX-MD's ``OrderedSparse``), ``missing_reverse`` is set. GemNet-T returns NaN energies
and forces when either flag is set and :func:`check_table_status` raises on the host with the
fix; in MD, :func:`make_replica_overflow_check` tells a table overflow from a physical blow-up
when a replica turns non-finite.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stabie_jax.models.graph import PADDING_DISTANCE, Graph

__all__ = [
    "NeighborTable",
    "TableStatus",
    "build_neighbor_table",
    "check_table_status",
    "make_frames_overflow_check",
    "make_replica_overflow_check",
    "max_neighbors_in_frames",
    "overflow_message",
    "suggested_capacity",
    "table_status",
]


class NeighborTable(NamedTuple):
    """Dense per-atom table of the edges inside the cutoff.

    ``n_slots = n_atoms * capacity``; empty slots have ``slot_mask == False``.

    Attributes:
      slot_edge: ``[n_slots]`` int32, index into the graph's edges (``n_edges`` when empty).
      slot_mask: ``[n_slots]`` bool.
      senders: ``[n_slots]`` int32, source atom of the slot's edge (``n_atoms`` when empty).
      vectors: ``[n_slots, 3]`` Å, ``R[a] - R[s]``; a dummy of length ``PADDING_DISTANCE``
        when empty.
      swap: ``[n_slots]`` int32, slot of the reverse edge, ``n_slots`` when there is none.
      overflow: scalar bool, some atom has more than ``capacity`` neighbours in the cutoff.
      missing_reverse: scalar bool, some edge inside the cutoff has no reverse edge.
      max_neighbors: scalar int32, largest number of neighbours inside the cutoff of any atom.
    """

    slot_edge: jax.Array
    slot_mask: jax.Array
    senders: jax.Array
    vectors: jax.Array
    swap: jax.Array
    overflow: jax.Array
    missing_reverse: jax.Array
    max_neighbors: jax.Array


class TableStatus(NamedTuple):
    """The host-checkable part of a :class:`NeighborTable` (see :func:`check_table_status`)."""

    overflow: jax.Array
    missing_reverse: jax.Array
    max_neighbors: jax.Array


def build_neighbor_table(graph: Graph, n_atoms: int, cutoff: float, capacity: int) -> NeighborTable:
    """Re-index a graph's edges inside ``cutoff`` into a ``[n_atoms, capacity]`` table.

    Jit-compatible; all shapes depend only on ``n_atoms``, ``capacity`` and ``n_edges``.

    Args:
      graph: edges ``senders -> receivers`` with vectors (Å), padded with index ``n_atoms``.
      n_atoms: number of atoms (static).
      cutoff: Å; edges of length ``>= cutoff`` are left out.
      capacity: maximum number of neighbours per atom inside the cutoff (static).

    Returns:
      A :class:`NeighborTable`.
    """
    if n_atoms + 1 > 46340:
        raise ValueError(f"build_neighbor_table: n_atoms={n_atoms} too large for int32 pair keys")
    n_edges = graph.senders.shape[0]
    n_slots = n_atoms * capacity
    edge_ids = jnp.arange(n_edges, dtype=jnp.int32)
    lengths = jax.lax.stop_gradient(graph.edge_lengths)
    real = graph.edge_mask
    inside = real & (lengths < cutoff)
    send = jnp.where(real, graph.senders, n_atoms).astype(jnp.int32)
    recv = jnp.where(real, graph.receivers, n_atoms).astype(jnp.int32)
    # With all-pairs edges the indices are compile-time constants; without the barrier XLA
    # constant-folds the sorts below, which takes minutes for a few hundred atoms.
    send, recv = jax.lax.optimization_barrier((send, recv))

    # Rank of each inside-cutoff edge among the edges ending on the same atom.
    recv_key = jnp.where(inside, recv, n_atoms)
    order = jnp.argsort(recv_key, stable=True)
    sorted_key = recv_key[order]
    first = jnp.searchsorted(sorted_key, sorted_key, side="left").astype(jnp.int32)
    rank = jnp.zeros(n_edges, jnp.int32).at[order].set(edge_ids - first)
    in_table = inside & (rank < capacity)
    slot_of_edge = jnp.where(in_table, recv * capacity + rank, n_slots)
    slot_edge = jnp.full(n_slots, n_edges, jnp.int32).at[slot_of_edge].set(edge_ids, mode="drop")
    slot_mask = slot_edge < n_edges

    # Reverse edge a -> s of every edge s -> a by a sorted search over pair keys.
    pair_key = send * (n_atoms + 1) + recv
    pair_order = jnp.argsort(pair_key)
    sorted_pairs = pair_key[pair_order]
    reverse_key = recv * (n_atoms + 1) + send
    pos = jnp.clip(jnp.searchsorted(sorted_pairs, reverse_key), 0, n_edges - 1)
    has_reverse = real & (sorted_pairs[pos] == reverse_key)
    reverse_edge = pair_order[pos]
    # A reverse edge that exists but sits exactly at the cutoff after rounding has no slot;
    # its message is zero there (envelope), so pointing at the zero row is exact.
    edge_swap = jnp.where(has_reverse, slot_of_edge[reverse_edge], n_slots)
    gather_edge = jnp.minimum(slot_edge, n_edges - 1)
    swap = jnp.where(slot_mask, edge_swap[gather_edge], n_slots)

    dummy = jnp.zeros((n_slots, 3), graph.edge_vectors.dtype).at[:, 0].set(PADDING_DISTANCE)
    vectors = jnp.where(slot_mask[:, None], graph.edge_vectors[gather_edge], dummy)
    senders = jnp.where(slot_mask, send[gather_edge], n_atoms)
    counts = jax.ops.segment_sum(inside.astype(jnp.int32), recv, num_segments=n_atoms + 1)
    return NeighborTable(
        slot_edge=slot_edge,
        slot_mask=slot_mask,
        senders=senders,
        vectors=vectors,
        swap=swap,
        overflow=jnp.any(inside & (rank >= capacity)),
        missing_reverse=jnp.any(inside & ~has_reverse),
        max_neighbors=jnp.max(counts[:n_atoms]),
    )


def table_status(graph: Graph, n_atoms: int, cutoff: float, capacity: int) -> TableStatus:
    """The flags of :func:`build_neighbor_table` only (jit-compatible)."""
    table = build_neighbor_table(graph, n_atoms, cutoff, capacity)
    return TableStatus(table.overflow, table.missing_reverse, table.max_neighbors)


def suggested_capacity(neighbors: int) -> int:
    """A ``neighbor_capacity`` with 25 % headroom over ``neighbors`` per atom."""
    return int(math.ceil(1.25 * int(neighbors)))


def overflow_message(
    neighbors: int,
    capacity: int,
    cutoff: float | None = None,
    *,
    where: str = "",
    detail: str = "",
    fix: str = "GemNetT(..., neighbor_capacity={n})",
    size_for: int | None = None,
) -> str:
    """The one wording of a GemNet-T table overflow: what was seen and the value to set.

    Args:
      neighbors: most neighbours of one atom inside the cutoff.
      capacity: the module's ``neighbor_capacity``.
      cutoff: Å, named in the message when given.
      where: appended to "overflow" (e.g. ``" in MD"``).
      detail: appended after the cutoff (e.g. how far one MD step can reach).
      fix: how to set the capacity; ``{n}`` becomes :func:`suggested_capacity` of
        ``size_for`` (default: ``neighbors``).
    """
    inside = "the cutoff" if cutoff is None else f"the {cutoff:g} Å cutoff"
    n = suggested_capacity(neighbors if size_for is None else size_for)
    return (
        f"GemNet-T neighbour table overflow{where}: an atom has {int(neighbors)} neighbours "
        f"inside {inside}{detail} but neighbor_capacity={int(capacity)}. Set "
        f"{fix.format(n=n)}; the parameters are unchanged."
    )


def check_table_status(status: TableStatus, capacity: int) -> None:
    """Raise on the host if a neighbour table was invalid (energies were NaN).

    Works on a single status or a batch (``vmap``) of them.

    Raises:
      ValueError: naming the problem and the fix.
    """
    max_neighbors = int(jnp.max(status.max_neighbors))
    if bool(jnp.any(status.overflow)):
        raise ValueError(overflow_message(max_neighbors, capacity))
    if bool(jnp.any(status.missing_reverse)):
        raise ValueError(
            "GemNet-T needs every edge in both directions: use partition.Sparse (not "
            "OrderedSparse) neighbour lists or all-pairs edges."
        )


def max_neighbors_in_frames(positions, displacement_fn, cutoff: float, chunk: int = 16) -> int:
    """Most neighbours within ``cutoff`` (Å) of any atom in any frame (host, all pairs).

    Args:
      positions: ``[F, N, 3]`` Å.
      displacement_fn: JAX-MD displacement (minimum image for periodic boxes).
      cutoff: Å.
      chunk: frames per jitted call.

    Returns:
      ``max_{frame, atom} #{j != i : |r_ij| < cutoff}``; compare with ``neighbor_capacity``
      before training or simulating (an overflowing table makes the energies NaN).
    """
    positions = jnp.asarray(positions)
    pair = jax.vmap(jax.vmap(displacement_fn, (None, 0)), (0, None))

    @jax.jit
    def most(frames):
        def one(r):
            d = jnp.linalg.norm(pair(r, r), axis=-1)
            inside = (d < cutoff) & ~jnp.eye(r.shape[0], dtype=bool)
            return jnp.max(jnp.sum(inside, axis=1))

        return jnp.max(jax.vmap(one)(frames))

    best = 0
    for start in range(0, positions.shape[0], chunk):
        best = max(best, int(most(positions[start : start + chunk])))
    return best


def make_frames_overflow_check(displacement_fn, cutoff: float, capacity: int, *, fix: str = ""):
    """Host check of fixed frames (training data) against the table size, before any compute.

    Pretraining evaluates the model only at the data's positions, so counting their neighbours
    decides exactly whether the table overflows (it would give NaN losses otherwise).

    Args:
      displacement_fn: JAX-MD displacement of the system (minimum image when periodic).
      cutoff: model cutoff, Å.
      capacity: the module's ``neighbor_capacity``.
      fix: how to set the capacity (``{n}`` is the value); default ``GemNetT(...)``.

    Returns:
      ``check(positions [F, N, 3] Å) -> None``, raising ``ValueError`` on an overflow.
    """

    def check(positions) -> None:
        most = max_neighbors_in_frames(np.asarray(positions), displacement_fn, cutoff)
        if most > capacity:
            kwargs = {"fix": fix} if fix else {}
            raise ValueError(
                overflow_message(most, capacity, cutoff, where=" in the training frames", **kwargs)
            )

    return check


def make_replica_overflow_check(
    displacement_fn, cutoff: float, capacity: int, dt: float, masses, *, safety: float = 1.5
):
    """Host check for replicas frozen as non-finite: was it a neighbour-table overflow?

    A replica whose step gave NaN (GemNet-T returns NaN energies and forces when an atom has
    more than ``capacity`` neighbours inside the cutoff) is frozen at its last finite state
    ``x_k`` (:mod:`stabie_jax.md.stepping`). The failing step moved every atom by at most
    ``s = |v|·dt + |F|/(2m)·dt²`` (velocity Verlet, thermostat scaling within ``safety``), so
    every pair distance changed by at most ``2s``: if no atom of ``x_k`` has more than
    ``capacity`` neighbours within ``cutoff + 2·safety·max s``, the table cannot have
    overflowed and the NaN came from the physics (an unstable replica, kept as such). Otherwise
    the check raises.

    Args:
      displacement_fn: JAX-MD displacement of the system (minimum image when periodic).
      cutoff: model cutoff, Å.
      capacity: the module's ``neighbor_capacity``.
      dt: timestep, internal time units.
      masses: ``[N]`` amu (:attr:`stabie_jax.md.Simulator.masses`).
      safety: factor on the one-step displacement bound.

    Returns:
      ``check(state, newly [R] bool) -> None`` for
      :func:`stabie_jax.md.with_nonfinite_check`; ``state`` is a
      :class:`~stabie_jax.md.ReplicaState` whose ``md`` has ``position``, ``momentum`` and
      ``force`` (``[R, N, 3]``).

    Raises:
      ValueError: (from ``check``) naming ``neighbor_capacity`` and the value to set.
    """

    mass = np.asarray(masses, np.float64)[:, None]

    def check(state, newly) -> None:
        rows = np.flatnonzero(np.asarray(newly))
        if rows.size == 0:
            return
        md = state.md
        positions = np.asarray(md.position)[rows]
        speed = np.linalg.norm(np.asarray(md.momentum, np.float64)[rows] / mass, axis=-1)
        accel = np.linalg.norm(np.asarray(md.force, np.float64)[rows] / mass, axis=-1)
        # NaN forces in the frozen state (a replica that was non-finite from the start): the
        # table overflowed at these very positions, so no step needs to be allowed for.
        accel = np.where(np.isfinite(accel), accel, 0.0)
        step = float(np.max(speed * dt + 0.5 * accel * dt**2))
        reach = cutoff + 2.0 * safety * step
        most = max_neighbors_in_frames(positions, displacement_fn, reach)
        if most > capacity:
            at_cutoff = max_neighbors_in_frames(positions, displacement_fn, cutoff)
            # sized for what one step can reach, not only for the last finite state
            message = overflow_message(
                at_cutoff,
                capacity,
                cutoff,
                where=f" in MD (replica(s) {rows.tolist()} turned non-finite)",
                detail=(
                    f" in their last finite state ({most} within the {reach:.3g} Å one step "
                    "can reach)"
                ),
                size_for=most,
                fix=(
                    "--config.model.hparams.neighbor_capacity={n} "
                    "(GemNetT(..., neighbor_capacity={n}))"
                ),
            )
            raise ValueError(message)

    return check
