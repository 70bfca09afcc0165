"""One step of all replicas and the scan that records frames.

* :func:`make_step` - ``(params, ReplicaState) -> ReplicaState``: rebuild the neighbour lists,
  step every replica, freeze replicas that are not alive or became non-finite, save into the
  history ring;
* :func:`make_energy` - the potential energy of every replica;
* :func:`make_advance` - ``n_steps`` steps as a scan of scans, one frame every
  ``sample_every`` steps.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from jax import lax

from stabie_jax.md.history import push_history
from stabie_jax.md.state import ReplicaState, Trajectory, replica_finite, where_replicas

__all__ = ["make_advance", "make_energy", "make_step"]


def make_step(
    apply_fn: Callable, map_replicas: Callable, rebuild: Callable | None, history_every: int
) -> Callable:
    """One step of every replica.

    Args:
      apply_fn: single-replica JAX-MD ``apply_fn(state, params=, neighbor=)``.
      map_replicas: ``(fn, *args)`` over the replica axis (:class:`ReplicaLayout`).
      rebuild: ``(lists, positions [R,N,3]) -> lists``, or None for dense all-pairs edges.
      history_every: save into the ring every this many replica steps.

    Returns:
      ``step(params, state: ReplicaState) -> ReplicaState``; frozen replicas are carried over
      bit for bit, a non-finite result is discarded and the replica frozen.
    """

    def step(params, s: ReplicaState) -> ReplicaState:
        neighbor = rebuild(s.neighbor, s.md.position) if rebuild is not None else None
        new_md = map_replicas(
            lambda st, nb: apply_fn(st, params=params, neighbor=nb), s.md, neighbor
        )
        finite = replica_finite(new_md)
        move = s.alive & finite
        md = where_replicas(move, new_md, s.md)
        if rebuild is not None:
            neighbor = where_replicas(s.alive, neighbor, s.neighbor)
        step = s.step + move.astype(jnp.int32)
        save = move & (step % history_every == 0)
        return ReplicaState(
            md=md,
            neighbor=neighbor,
            alive=s.alive & finite,
            nonfinite=s.nonfinite | (s.alive & ~finite),
            step=step,
            history=push_history(s.history, md, step, save),
        )

    return step


def make_energy(energy_fn: Callable, map_replicas: Callable) -> Callable:
    """``energy(params, positions [R,N,3] Å, neighbor=None) -> [R]`` eV."""

    def batched_energy(params, positions, neighbor=None):
        return map_replicas(lambda r, nb: energy_fn(params, r, nb), positions, neighbor)

    return batched_energy


def make_advance(step: Callable, energy: Callable) -> Callable:
    """``n_steps`` steps of :func:`make_step` recording a :class:`Trajectory`.

    Returns:
      ``advance(params, state, n_steps, sample_every, record_energy) -> (state, frames)``
      (the last three static); ``frames`` is a :class:`Trajectory` of
      ``F = n_steps // sample_every`` frames ``[F, R, ...]``, or None when ``sample_every`` is
      None.
    """

    def advance(params, state, n_steps, sample_every, record_energy):
        every = sample_every or n_steps
        n_frames = n_steps // every

        def inner(s, _):
            return step(params, s), None

        def outer(s, _):
            s, _ = lax.scan(inner, s, None, length=every)
            if not sample_every:
                return s, None
            potential = energy(params, s.md.position, s.neighbor) if record_energy else None
            frame = Trajectory(
                positions=s.md.position,
                velocities=s.md.momentum / s.md.mass,
                step=s.step,
                alive=s.alive,
                potential_energy=potential,
            )
            return s, frame

        return lax.scan(outer, state, None, length=n_frames)

    return advance
