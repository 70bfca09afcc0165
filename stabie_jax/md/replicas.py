"""Replicas of NVT dynamics advanced side by side, with freezing and rewinds.

A *replica* is one independent MD trajectory of the same system. All replicas share the model
parameters and live on a leading batch axis ``R``; one step is ``jax.vmap`` of one integrator's
step, chosen with ``make_simulator(integrator=...)``:

* ``"nose_hoover_chain"`` (default): JAX-MD's ``simulate.nvt_nose_hoover`` (a chain);
* ``"authors_nose_hoover"``: the authors' single Nosé–Hoover thermostat (MDsim
  ``mdsim/md/integrator.py``), :func:`stabie_jax.md.integrators.authors_nose_hoover`;
* ``"langevin"``: JAX-MD's ``simulate.nvt_langevin`` (BAOAB), one random key per replica.

The whole batch is an immutable :class:`ReplicaState`:

* ``md``: the batched integrator state (positions, momenta, forces, masses and the thermostat:
  ``chain``, ``zeta``/``xi`` or ``rng``);
* ``neighbor``: batched JAX-MD ``Sparse`` neighbour lists (one per replica) or ``None`` for dense
  all-pairs edges;
* ``alive``: ``[R]`` bool; a replica with ``alive=False`` is *frozen*: its state is carried over
  bit for bit, its step counter does not advance;
* ``nonfinite``: ``[R]`` bool, set when a step produced NaN/inf; such a replica is frozen at its
  last finite state (the non-finite result is discarded with ``jnp.where`` on the whole state, so
  it never reaches the stored state, the trajectory or another replica);
* ``step``: ``[R]`` int32, steps simulated by each replica (simulated time = ``step · dt``);
* ``history``: a ring buffer of past states saved every ``history_every`` steps of each replica,
  so that rewinding by ``k`` saves is an index (:func:`rewind`).

Neighbour lists are rebuilt from the current positions at every step (JAX-MD's
``dr_threshold=0`` mode, with the model cutoff plus a ``skin`` as list cutoff). Under ``vmap`` a
conditional rebuild costs the same (``lax.cond`` with a batched predicate runs both branches), and
this way the list is a pure function of positions, so rewinds and re-runs are exact. Overflow is
carried in each list and checked on the host after each :meth:`Simulator.simulate` call; the call
is then repeated from its input state with a larger capacity (nothing is silently dropped).

Positions are never wrapped into the box (``space.periodic(box, wrapped=False)``): the
displacement is minimum image, and unwrapped positions are what MSD/diffusivity need.

Examples:
  >>> sim = make_simulator(energy_fn, masses, dt=dt, kT=kT, space=free_space(),
  ...                      history_every=100)                              # doctest: +SKIP
  >>> state = sim.init(params, key, positions)            # positions [R, N, 3]  # doctest: +SKIP
  >>> state, traj = sim.simulate(params, state, 1000, 100)                 # doctest: +SKIP
  >>> state, ok = sim.rewind(state, ~stable, saves_back=1)                 # doctest: +SKIP

The pieces live in small modules: :mod:`stabie_jax.md.state` (containers),
:mod:`stabie_jax.md.spaces`, :mod:`stabie_jax.md.dynamics` (the integrator choice),
:mod:`stabie_jax.md.neighbors` (lists and their overflow retry), :mod:`stabie_jax.md.history`
(the ring), :mod:`stabie_jax.md.layout` (mesh sharding and ``lax.map`` chunks) and
:mod:`stabie_jax.md.stepping` (the step and its scan); this module assembles them.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax_md import partition

from stabie_jax.md import thermostat
from stabie_jax.md.dynamics import INTEGRATORS, Dynamics, make_dynamics
from stabie_jax.md.history import init_history, read_history, truncate_history
from stabie_jax.md.layout import ReplicaLayout, replica_layout, replica_mesh
from stabie_jax.md.neighbors import ReplicaNeighbors, replica_neighbors, retry_on_overflow
from stabie_jax.md.spaces import Space, free_space, periodic_space
from stabie_jax.md.state import History, ReplicaState, Simulator, Trajectory, where_replicas
from stabie_jax.md.stepping import make_advance, make_energy, make_step

__all__ = [
    "INTEGRATORS",
    "History",
    "ReplicaState",
    "Simulator",
    "Space",
    "Trajectory",
    "free_space",
    "make_simulator",
    "periodic_space",
    "replica_mesh",
]

# Private helpers that lived here before the split: kept importable under their old names.
from stabie_jax.md.dynamics import _set_dof  # noqa: E402, F401, I001
from stabie_jax.md.state import replica_finite as _replica_finite  # noqa: E402, F401
from stabie_jax.md.state import where_replicas as _where_replicas  # noqa: E402, F401


def make_simulator(
    energy_fn: Callable,
    masses,
    *,
    dt: float,
    kT: float,
    space: Space,
    tau: float | None = None,
    chain_length: int = 3,
    chain_steps: int = 2,
    sy_steps: int = 3,
    remove_com_dof: bool | None = None,
    cutoff: float | None = None,
    skin: float = 0.3,
    capacity_multiplier: float = 1.25,
    history_every: int = 1,
    history_length: int = 2,
    dtype=jnp.float32,
    donate_state: bool = False,
    max_reallocations: int = 5,
    replica_batch_size: int | None = None,
    neighbor_format=partition.NeighborListFormat.Sparse,
    mesh: jax.sharding.Mesh | None = None,
    integrator: str = "nose_hoover_chain",
    ttime_steps: float = 20,
    langevin_gamma: float | None = None,
) -> Simulator:
    """Build the replica MD functions for one system.

    Args:
      energy_fn: ``(params, positions [N,3] Å, neighbor=None) -> eV`` (e.g.
        ``Potential.energy_fn``); with ``cutoff`` set it receives a JAX-MD ``Sparse`` list.
      masses: ``[N]`` amu (:func:`thermostat.masses_from_atomic_numbers`).
      dt: timestep, internal time units (``units.fs_to_internal(0.5)``).
      kT: target thermal energy, eV (``units.kT(500.0)``).
      space: :func:`free_space` or :func:`periodic_space`.
      tau: Nosé–Hoover time, internal units; default ``20·dt``, the authors' ``ttime = 20``
        (see :mod:`stabie_jax.md.thermostat`).
      chain_length, chain_steps, sy_steps: JAX-MD chain settings (chain_length >= 2; the
        authors' single thermostat corresponds to the first link, same mass).
      remove_com_dof: thermostat ``3N − 3`` degrees of freedom (True) or ``3N`` (False).
        Default (None): ``3N − 3`` for the chain, ``3N`` for ``"authors_nose_hoover"`` (the
        authors' integrator counts every Cartesian degree of freedom).
      cutoff: if given, use per-replica neighbour lists with this model cutoff (Å) plus
        ``skin``; if None, the energy function gets ``neighbor=None`` (dense all-pairs).
      skin: extra list cutoff (Å) covering one step of motion of two atoms.
      capacity_multiplier: neighbour capacity headroom at (re)allocation.
      history_every: save a state into the ring every this many replica steps (``t``).
      history_length: ring length ``H`` (number of saved states kept per replica).
      dtype: float32 (default) or float64 (requires ``jax.enable_x64``).
      donate_state: donate the input state's buffers to ``simulate`` (dense mode only; the
        input state must not be used afterwards).
      max_reallocations: neighbour-list capacity increases tried per ``simulate`` call.
      replica_batch_size: None vectorises the step over all replicas (``jax.vmap``, best on
        accelerators); an integer ``b`` runs ``jax.lax.map`` over chunks of ``b`` vectorised
        replicas (bounded memory for very many replicas; on the 2-core CPU it was slower
        than ``vmap`` for SchNet, see ``benchmarks/results/md_throughput_cpu.md``). Same
        results up to float round-off.
      neighbor_format: JAX-MD format of the neighbour lists: ``Sparse`` (both directions,
        every model) or ``OrderedSparse`` (each pair once, for a SchNet with
        ``undirected_edges=True``: half the edges).
      mesh: optional device mesh; ``simulate`` then splits the replicas evenly over all of its
        devices with ``jax.shard_map`` (replicas never communicate, so each device runs its
        share of the step scan on its own; parameters are replicated). The replica count must
        be a multiple of the mesh size. On a multi-core CPU, fake one device per core
        (``--xla_force_host_platform_device_count``) and combine with a small
        ``replica_batch_size``: each core then steps cache-sized chunks of its replicas
        (``benchmarks/compare.py``, ``benchmarks/RESULTS.md``).
      integrator: ``"nose_hoover_chain"`` (JAX-MD's chain with ``tau`` and the chain settings),
        ``"authors_nose_hoover"`` (the authors' single thermostat, ``Q = dof·kT·(ttime·dt)²``,
        ``tau``/chain settings unused) or ``"langevin"`` (JAX-MD's BAOAB with friction
        ``langevin_gamma``; its noise also thermalises the centre of mass, so ``dof = 3N``
        whatever ``remove_com_dof``). See :mod:`stabie_jax.md.thermostat` for ``tau`` vs
        ``ttime``.
      ttime_steps: the authors' ``ttime`` in steps (``"authors_nose_hoover"`` only).
      langevin_gamma: Langevin friction, internal inverse time (default 0.1/ps, the authors';
        ``units.per_ps_to_internal``).

    Returns:
      A :class:`Simulator`.
    """
    dtype, masses_np = _checked_arguments(
        dtype, masses, history_every, history_length, integrator, chain_length, cutoff, donate_state
    )
    n_atoms = masses_np.shape[0]
    dynamics = make_dynamics(
        energy_fn,
        space.shift_fn,
        n_atoms,
        dt=dt,
        kT=kT,
        tau=tau,
        remove_com_dof=remove_com_dof,
        integrator=integrator,
        chain_length=chain_length,
        chain_steps=chain_steps,
        sy_steps=sy_steps,
        ttime_steps=ttime_steps,
        langevin_gamma=langevin_gamma,
    )
    neighbors = _neighbors(space, n_atoms, cutoff, skin, capacity_multiplier, neighbor_format)
    return _assemble(
        energy_fn,
        dynamics,
        neighbors,
        replica_layout(mesh, replica_batch_size),
        masses_np,
        dtype=dtype,
        dt=dt,
        kT=kT,
        history_every=int(history_every),
        history_length=int(history_length),
        donate_state=donate_state,
        max_reallocations=max_reallocations,
        integrator=integrator,
    )


def _neighbors(space, n_atoms, cutoff, skin, capacity_multiplier, neighbor_format):
    """:func:`replica_neighbors` with list cutoff ``cutoff + skin`` Å, or None without a cutoff."""
    if cutoff is None:
        return None
    return replica_neighbors(
        space,
        n_atoms,
        cutoff + skin,
        capacity_multiplier=capacity_multiplier,
        neighbor_format=neighbor_format,
    )


def _assemble(
    energy_fn: Callable,
    dynamics: Dynamics,
    neighbors: ReplicaNeighbors | None,
    layout: ReplicaLayout,
    masses_np: np.ndarray,
    *,
    dtype,
    dt: float,
    kT: float,
    history_every: int,
    history_length: int,
    donate_state: bool,
    max_reallocations: int,
    integrator: str,
) -> Simulator:
    """The :class:`Simulator` of :func:`make_simulator` from its parts."""
    masses_j = jnp.asarray(masses_np, dtype=dtype)
    energy = make_energy(energy_fn, layout.map_replicas)
    rebuild = None if neighbors is None else neighbors.rebuild
    step = make_step(dynamics.apply, layout.map_replicas, rebuild, history_every)
    advance = jax.jit(
        layout.shard(make_advance(step, energy)),
        static_argnums=(2, 3, 4),
        donate_argnums=(1,) if donate_state else (),
    )
    return Simulator(
        init=_make_init(dynamics, neighbors, masses_j, kT, dtype, history_length),
        simulate=_make_simulate(advance, layout.place, neighbors, max_reallocations),
        rewind=_make_rewind(dynamics, neighbors),
        select=_make_select(neighbors),
        energy=energy,
        invariant=_make_invariant(dynamics, energy, masses_j),
        dt=dt,
        kT=kT,
        tau=dynamics.tau,
        dof=dynamics.dof,
        masses=masses_np,
        history_every=history_every,
        history_length=history_length,
        integrator=integrator,
    )


def _checked_arguments(
    dtype, masses, history_every, history_length, integrator, chain_length, cutoff, donate_state
):
    """``(dtype, masses [N] float64 amu)`` of :func:`make_simulator`, or ``ValueError``."""
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float64 and not jax.config.read("jax_enable_x64"):
        raise ValueError(
            "make_simulator(dtype=float64) needs 64-bit JAX: run inside `with "
            "jax.enable_x64(True):` or set jax_enable_x64 once in the entry point."
        )
    if dtype not in (jnp.float32, jnp.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    masses_np = np.asarray(masses, dtype=np.float64)
    if masses_np.ndim != 1 or np.any(masses_np <= 0):
        raise ValueError(f"masses must be a positive [N] array in amu, got {masses_np}")
    if history_every < 1 or history_length < 1:
        raise ValueError("history_every and history_length must be >= 1")
    if integrator not in INTEGRATORS:
        raise ValueError(f"integrator must be one of {INTEGRATORS}, got {integrator!r}")
    if integrator == "nose_hoover_chain" and chain_length < 2:
        raise ValueError("JAX-MD's Nose-Hoover chain needs chain_length >= 2")
    if donate_state and cutoff is not None:
        raise ValueError(
            "donate_state=True is only supported without neighbour lists (an overflowing call "
            "is re-run from its input state)"
        )
    return dtype, masses_np


def _make_init(
    dynamics: Dynamics,
    neighbors: ReplicaNeighbors | None,
    masses_j,
    kT: float,
    dtype,
    history_length: int,
) -> Callable:
    """``Simulator.init`` (see :func:`make_simulator`)."""
    n_atoms, dof = masses_j.shape[0], dynamics.dof

    @jax.jit
    def init_md(params, keys, positions, momenta, neighbor):
        def one(k, r, p, nbr):
            return dynamics.init(k, r, mass=masses_j, momenta=p, params=params, neighbor=nbr)

        return dynamics.post_init(jax.vmap(one)(keys, positions, momenta, neighbor))

    def init(params, key, positions, momenta=None, rescale_velocities: bool = False):
        """Start all replicas.

        Args:
          params: model parameters.
          key: PRNG key for the Maxwell–Boltzmann momenta (unused if ``momenta`` given) and,
            for Langevin, the per-replica noise keys (``PRNGKey(0)`` when None).
          positions: ``[R, N, 3]`` Å.
          momenta: optional ``[R, N, 3]`` amu·Å/internal time.
          rescale_velocities: rescale sampled momenta to kinetic energy exactly ``dof·kT/2``.

        Returns:
          A :class:`ReplicaState`, all alive, step 0, the initial state saved in the ring.
        """
        positions = jnp.asarray(positions, dtype=dtype)
        if positions.ndim != 3 or positions.shape[1:] != (n_atoms, 3):
            raise ValueError(f"positions must be [n_replicas, {n_atoms}, 3], got {positions.shape}")
        n_rep = positions.shape[0]
        if momenta is None:
            momenta = thermostat.maxwell_boltzmann_momenta(
                key, masses_j, kT, (n_rep,), dof=dof, rescale=rescale_velocities, dtype=dtype
            )
        momenta = jnp.asarray(momenta, dtype=dtype)
        if momenta.shape != positions.shape:
            raise ValueError(f"momenta shape {momenta.shape} != positions {positions.shape}")
        neighbor = neighbors.allocate(positions) if neighbors is not None else None
        md = init_md(params, dynamics.replica_keys(key, n_rep), positions, momenta, neighbor)
        return ReplicaState(
            md=md,
            neighbor=neighbor,
            alive=jnp.ones((n_rep,), bool),
            nonfinite=jnp.zeros((n_rep,), bool),
            step=jnp.zeros((n_rep,), jnp.int32),
            history=init_history(md, history_length),
        )

    return init


def _make_simulate(
    advance: Callable, place: Callable, neighbors: ReplicaNeighbors | None, max_reallocations: int
) -> Callable:
    """``Simulator.simulate`` around the jitted ``advance`` (see :func:`make_simulator`)."""

    def simulate_fn(params, state, n_steps, sample_every=None, record_energy=False):
        """Advance every alive replica ``n_steps`` steps.

        Args:
          params: model parameters.
          state: :class:`ReplicaState`.
          n_steps: number of steps (static; one compilation per distinct value).
          sample_every: record a frame after every this many steps (must divide ``n_steps``);
            None records nothing.
          record_energy: also record the potential energy per frame and replica.

        Returns:
          ``(new_state, trajectory)``; ``trajectory`` is a :class:`Trajectory` with
          ``F = n_steps // sample_every`` frames, or None.

        Raises:
          ValueError: bad ``n_steps``/``sample_every``.
          RuntimeError: the neighbour list still overflows after ``max_reallocations``.
        """
        n_steps = int(n_steps)
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        if sample_every is not None:
            sample_every = int(sample_every)
            if sample_every < 1 or n_steps % sample_every:
                raise ValueError(
                    f"sample_every={sample_every} must be >= 1 and divide n_steps={n_steps}"
                )
        record_energy = bool(record_energy)

        def run(params, state):
            return advance(params, state, n_steps, sample_every, record_energy)

        params, state = place(params, state)
        if neighbors is None:
            return run(params, state)
        return retry_on_overflow(run, place, neighbors.allocate, max_reallocations)(params, state)

    return simulate_fn


def _make_rewind(dynamics: Dynamics, neighbors: ReplicaNeighbors | None) -> Callable:
    """``Simulator.rewind`` (jitted; see :func:`make_simulator`)."""

    def rewind(state: ReplicaState, mask, saves_back=0, revive=True):
        """Restore replicas from their ring buffer.

        ``saves_back = 0`` restores the most recent saved state, ``k`` the one ``k`` saves
        (``k·history_every`` replica steps) earlier. Entries newer than the restored one are
        discarded, so a later rewind counts from the restored state.

        Args:
          state: :class:`ReplicaState`.
          mask: ``[R]`` bool, replicas to rewind.
          saves_back: int or ``[R]`` ints.
          revive: mark rewound replicas alive (and clear ``nonfinite``).

        Returns:
          ``(new_state, rewound)``; ``rewound[r]`` is False where ``mask[r]`` was set but the
          ring does not hold that many saves (the replica is left unchanged).
        """
        back, valid, restored, restored_step = read_history(state.history, saves_back)
        ok = jnp.asarray(mask, bool) & valid
        md = where_replicas(ok, dynamics.on_rewind(restored, state.md), state.md)
        neighbor = state.neighbor
        if neighbors is not None:
            neighbor = where_replicas(ok, neighbors.rebuild(neighbor, md.position), neighbor)
        new = ReplicaState(
            md=md,
            neighbor=neighbor,
            alive=jnp.where(ok & revive, True, state.alive),
            nonfinite=jnp.where(ok & revive, False, state.nonfinite),
            step=jnp.where(ok, restored_step, state.step),
            history=truncate_history(state.history, ok, back),
        )
        return new, ok

    return jax.jit(rewind)


def _make_select(neighbors: ReplicaNeighbors | None) -> Callable:
    """``Simulator.select`` (see :func:`make_simulator`)."""

    def select(mask, state_true: ReplicaState, state_false: ReplicaState) -> ReplicaState:
        """Per replica, ``state_true`` where ``mask`` else ``state_false`` (neighbour lists are
        rebuilt with ``state_true``'s capacity, so states of different capacities combine)."""
        mask = jnp.asarray(mask, bool)
        fields = {
            name: where_replicas(mask, getattr(state_true, name), getattr(state_false, name))
            for name in ("md", "alive", "nonfinite", "step", "history")
        }
        neighbor = None
        if neighbors is not None:
            neighbor = neighbors.rebuild_jit(state_true.neighbor, fields["md"].position)
        return ReplicaState(neighbor=neighbor, **fields)

    return select


def _make_invariant(dynamics: Dynamics, energy: Callable, masses_j) -> Callable:
    """``Simulator.invariant`` (jitted; see :func:`make_simulator`)."""

    @jax.jit
    def invariant(params, state: ReplicaState):
        """Conserved energy of the dynamics, ``[R]`` eV (Langevin: ``U + K``, not conserved)."""
        md = state.md
        pe = energy(params, md.position, state.neighbor)
        ke = thermostat.kinetic_energy(md.momentum, masses_j)
        return dynamics.invariant(pe, ke, md)

    return invariant
