"""State containers of the replica MD engine and per-replica pytree helpers.

* :class:`ReplicaState` - all replicas (leading axis ``R``), with the :class:`History` ring;
* :class:`Trajectory` - frames of one :meth:`Simulator.simulate` call (time-major);
* :class:`Simulator` - the functions returned by :func:`stabie_jax.md.make_simulator`;
* :func:`where_replicas`, :func:`replica_finite` - per-replica select and finiteness test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "History",
    "ReplicaState",
    "Simulator",
    "Trajectory",
    "replica_finite",
    "where_replicas",
]


class History(NamedTuple):
    """Ring buffer of saved states.

    Attributes:
      md: ``NVTNoseHooverState`` whose leaves are ``[R, H, ...]``.
      step: ``[R, H]`` int32, the replica step of each entry (``-1`` = empty).
      count: ``[R]`` int32, number of saves made so far (entry of save ``c`` is slot ``c % H``).
    """

    md: Any
    step: jax.Array
    count: jax.Array


class ReplicaState(NamedTuple):
    """Immutable state of all replicas (fields described in :mod:`stabie_jax.md.replicas`)."""

    md: Any
    neighbor: Any
    alive: jax.Array
    nonfinite: jax.Array
    step: jax.Array
    history: History

    @property
    def positions(self) -> jax.Array:
        """``[R, N, 3]`` Å (unwrapped)."""
        return self.md.position

    @property
    def velocities(self) -> jax.Array:
        """``[R, N, 3]`` Å per internal time unit."""
        return self.md.momentum / self.md.mass


class Trajectory(NamedTuple):
    """Frames recorded every ``sample_every`` steps of one ``simulate`` call (time-major).

    Attributes:
      positions: ``[F, R, N, 3]`` Å.
      velocities: ``[F, R, N, 3]`` Å per internal time unit (``units.fs_to_internal``).
      step: ``[F, R]`` int32, replica step of the frame.
      alive: ``[F, R]`` bool, replica alive at the frame (frozen replicas repeat their state).
      potential_energy: ``[F, R]`` eV, or ``None`` when not recorded.
    """

    positions: jax.Array
    velocities: jax.Array
    step: jax.Array
    alive: jax.Array
    potential_energy: jax.Array | None


class Simulator(NamedTuple):
    """Functions of one MD setup; see :func:`make_simulator`.

    Attributes:
      init: ``(params, key, positions [R,N,3], momenta=None, rescale_velocities=False)
        -> ReplicaState``.
      simulate: ``(params, state, n_steps, sample_every=None, record_energy=False)
        -> (ReplicaState, Trajectory | None)``.
      rewind: ``(state, mask [R], saves_back=0, revive=True) -> (ReplicaState, rewound [R])``.
      select: ``(mask [R], state_if_true, state_if_false) -> ReplicaState``.
      energy: ``(params, positions [R,N,3], neighbor=None) -> [R]`` eV.
      invariant: ``(params, state) -> [R]`` eV, the integrator's conserved energy (chain:
        JAX-MD's extended energy; authors': ``U + K + Q ζ² + 2·K0·ξ``; Langevin: ``U + K``,
        which is not conserved).
      dt: timestep, internal time. kT: eV. tau: thermostat time, internal time (chain:
        ``tau``; authors': ``ttime·dt``; Langevin: ``1/γ``).
      dof: thermostatted degrees of freedom per replica. masses: ``[N]`` amu.
      history_every, history_length: ring-buffer settings.
      integrator: ``"nose_hoover_chain"``, ``"authors_nose_hoover"`` or ``"langevin"``.
    """

    init: Callable
    simulate: Callable
    rewind: Callable
    select: Callable
    energy: Callable
    invariant: Callable
    dt: float
    kT: float
    tau: float
    dof: int
    masses: np.ndarray
    history_every: int
    history_length: int
    integrator: str = "nose_hoover_chain"

    def simulated_time(self, state: ReplicaState) -> jax.Array:
        """``[R]`` simulated time per replica, internal units (``units.internal_to_fs``)."""
        return state.step * self.dt


def where_replicas(mask, a, b):
    """Per-replica select over two pytrees with leaves ``[R, ...]`` (``mask`` ``[R]`` bool)."""

    def pick(x, y):
        m = jnp.reshape(mask, mask.shape + (1,) * (x.ndim - 1))
        return jnp.where(m, x, y)

    return jax.tree_util.tree_map(pick, a, b)


def replica_finite(md) -> jax.Array:
    """``[R]`` True where every floating leaf of the replica's state is finite."""
    finite = None
    for leaf in jax.tree_util.tree_leaves(md):
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            continue
        f = jnp.all(jnp.isfinite(leaf), axis=tuple(range(1, leaf.ndim)))
        finite = f if finite is None else finite & f
    return finite
