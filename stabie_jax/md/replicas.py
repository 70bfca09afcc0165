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
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax_md import partition, simulate, space

from stabie_jax import units
from stabie_jax.md import integrators, thermostat

INTEGRATORS = ("nose_hoover_chain", "authors_nose_hoover", "langevin")

# ---------------------------------------------------------------------------------------------
# State containers


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
    """Immutable state of all replicas (see the module docstring)."""

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


class Space(NamedTuple):
    """Displacement/shift pair and, for periodic systems, the box (Å)."""

    displacement_fn: Callable
    shift_fn: Callable
    box: Any


def free_space() -> Space:
    """Free (non-periodic) space for molecules."""
    displacement_fn, shift_fn = space.free()
    return Space(displacement_fn, shift_fn, None)


def periodic_space(box) -> Space:
    """Orthorhombic periodic space with minimum-image displacements and unwrapped positions.

    Args:
      box: scalar or ``[3]`` side lengths, Å.
    """
    box = np.asarray(box, dtype=np.float64)
    if box.ndim == 2:
        if not np.allclose(box, np.diag(np.diag(box))):
            raise ValueError(f"only orthorhombic cells are supported, got cell {box.tolist()}")
        box = np.diag(box)
    if np.any(box <= 0):
        raise ValueError(f"box side lengths must be positive, got {box}")
    displacement_fn, shift_fn = space.periodic(jnp.asarray(box, jnp.float32), wrapped=False)
    return Space(displacement_fn, shift_fn, box)


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


def replica_mesh(n_replicas: int, devices=None) -> jax.sharding.Mesh | None:
    """A 1-D ``("replica",)`` mesh for ``make_simulator(mesh=...)``, or None.

    Args:
      n_replicas: number of replicas the simulator will run.
      devices: devices to split them over (default ``jax.devices()``).

    Returns:
      A mesh over all ``devices`` when there are several and they split ``n_replicas``
      evenly; None (everything on one device) otherwise.
    """
    devices = np.asarray(jax.devices() if devices is None else devices)
    if devices.size < 2 or n_replicas % devices.size:
        return None
    return jax.sharding.Mesh(devices.reshape(-1), ("replica",))


# ---------------------------------------------------------------------------------------------
# Small pytree helpers


def _where_replicas(mask, a, b):
    """Per-replica select over two pytrees with leaves ``[R, ...]``."""

    def pick(x, y):
        m = jnp.reshape(mask, mask.shape + (1,) * (x.ndim - 1))
        return jnp.where(m, x, y)

    return jax.tree_util.tree_map(pick, a, b)


def _replica_finite(md) -> jax.Array:
    """``[R]`` True where every floating leaf of the replica's state is finite."""
    finite = None
    for leaf in jax.tree_util.tree_leaves(md):
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            continue
        f = jnp.all(jnp.isfinite(leaf), axis=tuple(range(1, leaf.ndim)))
        finite = f if finite is None else finite & f
    return finite


def _set_dof(md, dof: int, kT: float):
    """Thermostat the requested ``dof`` (JAX-MD counts ``3N``): first-link mass ``dof·kT·tau²``."""
    chain = md.chain
    q = kT * chain.tau[..., None] ** 2 * jnp.ones_like(chain.mass)
    q = q.at[..., 0].multiply(dof)
    return md.set(chain=dataclasses.replace(chain, mass=q, degrees_of_freedom=dof))


# ---------------------------------------------------------------------------------------------
# Factory


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
    n_atoms = masses_np.shape[0]
    if history_every < 1 or history_length < 1:
        raise ValueError("history_every and history_length must be >= 1")
    if integrator not in INTEGRATORS:
        raise ValueError(f"integrator must be one of {INTEGRATORS}, got {integrator!r}")
    if integrator == "nose_hoover_chain" and chain_length < 2:
        raise ValueError("JAX-MD's Nose-Hoover chain needs chain_length >= 2")
    use_nl = cutoff is not None
    if donate_state and use_nl:
        raise ValueError(
            "donate_state=True is only supported without neighbour lists (an overflowing call "
            "is re-run from its input state)"
        )
    tau = thermostat.tau_from_ttime(20, dt) if tau is None else tau
    if remove_com_dof is None:
        remove_com_dof = integrator != "authors_nose_hoover"
    dof = thermostat.degrees_of_freedom(n_atoms, remove_com_dof)
    masses_j = jnp.asarray(masses_np, dtype=dtype)
    H = int(history_length)

    def md_energy(position, params, neighbor=None):
        return energy_fn(params, position, neighbor)

    authors_q, authors_k0 = None, None
    if integrator == "nose_hoover_chain":
        nvt_init, nvt_apply = simulate.nvt_nose_hoover(
            md_energy,
            space.shift_fn,
            dt,
            kT,
            chain_length=chain_length,
            chain_steps=chain_steps,
            sy_steps=sy_steps,
            tau=tau,
        )
    elif integrator == "authors_nose_hoover":
        tau = ttime_steps * dt
        nvt_init, nvt_apply = integrators.authors_nose_hoover(
            md_energy, space.shift_fn, dt, kT, ttime_steps=ttime_steps, dof=dof
        )
        authors_q, authors_k0 = integrators.authors_thermostat_constants(dof, kT, ttime_steps, dt)
    else:
        gamma = units.per_ps_to_internal(0.1) if langevin_gamma is None else langevin_gamma
        if not gamma > 0:
            raise ValueError(f"langevin_gamma must be > 0, got {gamma}")
        tau = 1.0 / gamma
        dof = 3 * n_atoms  # the per-atom noise thermalises the centre of mass too
        nvt_init, nvt_apply = simulate.nvt_langevin(md_energy, space.shift_fn, dt, kT, gamma=gamma)

    neighbor_fn = None
    if use_nl:
        box = space.box if space.box is not None else 1.0e4
        neighbor_fn = partition.neighbor_list(
            space.displacement_fn,
            jnp.asarray(box, jnp.float32),
            cutoff + skin,
            dr_threshold=0.0,  # always rebuild: the list is a pure function of positions
            capacity_multiplier=capacity_multiplier,
            disable_cell_list=True,  # positions are unwrapped
            format=neighbor_format,
        )
        ordered = neighbor_format == partition.NeighborListFormat.OrderedSparse
        max_edges = n_atoms * (n_atoms - 1) // (2 if ordered else 1)
        list_cutoff_sq = (cutoff + skin) ** 2
        pair_displacements = jax.vmap(jax.vmap(space.displacement_fn, (None, 0)), (0, None))

        @jax.jit
        def _max_occupancy(positions):
            def count(r):
                d = pair_displacements(r, r)
                d2 = jnp.sum(d**2, axis=-1)
                inside = jnp.sum((d2 < list_cutoff_sq) & ~jnp.eye(n_atoms, dtype=bool))
                return inside // 2 if ordered else inside  # OrderedSparse keeps i < j only

            return jnp.max(jax.vmap(count)(positions))

    def _allocate(positions, min_capacity: int = 0):
        """Batched neighbour lists for ``positions [R,N,3]`` with a common capacity."""
        occupancy = int(_max_occupancy(positions))
        capacity = max(int(math.ceil(occupancy * capacity_multiplier)) + 1, int(min_capacity))
        capacity = min(capacity, max_edges)
        template = neighbor_fn.allocate(positions[0])
        template = dataclasses.replace(template, max_occupancy=capacity)
        return jax.jit(jax.vmap(lambda r: template.update(r)))(positions)

    def _rebuild(neighbor, positions):
        return jax.vmap(lambda n, r: n.update(r))(neighbor, positions)

    rebuild_jit = jax.jit(_rebuild)

    def _map_replicas(fn, *args):
        if replica_batch_size is None:
            return jax.vmap(fn)(*args)
        return lax.map(lambda a: fn(*a), args, batch_size=replica_batch_size)

    # -- init -----------------------------------------------------------------------------------

    @jax.jit
    def _init_md(params, keys, positions, momenta, neighbor):
        def one(k, r, p, nbr):
            return nvt_init(k, r, mass=masses_j, momenta=p, params=params, neighbor=nbr)

        md = jax.vmap(one)(keys, positions, momenta, neighbor)
        return _set_dof(md, dof, kT) if integrator == "nose_hoover_chain" else md

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
        neighbor = _allocate(positions) if use_nl else None
        if integrator == "langevin":
            base = jax.random.PRNGKey(0) if key is None else key
            keys = jax.random.split(jax.random.fold_in(base, 1), n_rep)
        else:
            keys = jnp.broadcast_to(jax.random.PRNGKey(0), (n_rep, 2))
        md = _init_md(params, keys, positions, momenta, neighbor)

        def ring(x):
            buf = jnp.zeros((x.shape[0], H) + x.shape[1:], x.dtype)
            return buf.at[:, 0].set(x)

        history = History(
            md=jax.tree_util.tree_map(ring, md),
            step=jnp.full((n_rep, H), -1, jnp.int32).at[:, 0].set(0),
            count=jnp.ones((n_rep,), jnp.int32),
        )
        return ReplicaState(
            md=md,
            neighbor=neighbor,
            alive=jnp.ones((n_rep,), bool),
            nonfinite=jnp.zeros((n_rep,), bool),
            step=jnp.zeros((n_rep,), jnp.int32),
            history=history,
        )

    # -- one step -------------------------------------------------------------------------------

    def _step(params, s: ReplicaState) -> ReplicaState:
        neighbor = _rebuild(s.neighbor, s.md.position) if use_nl else None
        new_md = _map_replicas(
            lambda st, nb: nvt_apply(st, params=params, neighbor=nb), s.md, neighbor
        )
        finite = _replica_finite(new_md)
        move = s.alive & finite
        md = _where_replicas(move, new_md, s.md)
        if use_nl:
            neighbor = _where_replicas(s.alive, neighbor, s.neighbor)
        step = s.step + move.astype(jnp.int32)

        hist = s.history
        save = move & (step % history_every == 0)
        rows = jnp.arange(step.shape[0])
        slot = hist.count % H

        def put(buf, x):
            cur = buf[rows, slot]
            m = jnp.reshape(save, save.shape + (1,) * (x.ndim - 1))
            return buf.at[rows, slot].set(jnp.where(m, x, cur))

        hist = History(
            md=jax.tree_util.tree_map(put, hist.md, md),
            step=put(hist.step, step),
            count=hist.count + save.astype(jnp.int32),
        )
        return ReplicaState(
            md=md,
            neighbor=neighbor,
            alive=s.alive & finite,
            nonfinite=s.nonfinite | (s.alive & ~finite),
            step=step,
            history=hist,
        )

    def batched_energy(params, positions, neighbor=None):
        return _map_replicas(lambda r, nb: energy_fn(params, r, nb), positions, neighbor)

    def _advance(params, state, n_steps, sample_every, record_energy):
        every = sample_every or n_steps
        n_frames = n_steps // every

        def inner(s, _):
            return _step(params, s), None

        def outer(s, _):
            s, _ = lax.scan(inner, s, None, length=every)
            if not sample_every:
                return s, None
            energy = batched_energy(params, s.md.position, s.neighbor) if record_energy else None
            frame = Trajectory(
                positions=s.md.position,
                velocities=s.md.momentum / s.md.mass,
                step=s.step,
                alive=s.alive,
                potential_energy=energy,
            )
            return s, frame

        return lax.scan(outer, state, None, length=n_frames)

    if mesh is not None:
        replica_spec = jax.sharding.PartitionSpec(tuple(mesh.axis_names))
        frame_spec = jax.sharding.PartitionSpec(None, tuple(mesh.axis_names))
        replicated = jax.sharding.PartitionSpec()

        def _advance_on_mesh(params, state, n_steps, sample_every, record_energy):
            per_device = jax.shard_map(
                lambda p, s: _advance(p, s, n_steps, sample_every, record_energy),
                mesh=mesh,
                in_specs=(replicated, replica_spec),
                out_specs=(replica_spec, frame_spec),
                check_vma=False,
            )
            return per_device(params, state)

        advance = _advance_on_mesh
    else:
        advance = _advance
    advance_jit = jax.jit(
        advance, static_argnums=(2, 3, 4), donate_argnums=(1,) if donate_state else ()
    )

    def _on_mesh(params, state: ReplicaState):
        """Params replicated and replicas split over the mesh, so every call of the jitted
        scan sees the same input shardings (a different placement would recompile it)."""
        if mesh is None:
            return params, state
        if state.step.shape[0] % mesh.devices.size:
            raise ValueError(
                f"{state.step.shape[0]} replicas cannot be split evenly over the "
                f"{mesh.devices.size} devices of the simulator's mesh; choose a multiple of "
                f"{mesh.devices.size} replicas or build the simulator with mesh=None"
            )
        params = jax.device_put(params, jax.sharding.NamedSharding(mesh, replicated))
        state = jax.device_put(state, jax.sharding.NamedSharding(mesh, replica_spec))
        return params, state

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
        params, state = _on_mesh(params, state)
        if not use_nl:
            return advance_jit(params, state, n_steps, sample_every, bool(record_energy))
        for _ in range(max_reallocations + 1):
            new_state, traj = advance_jit(params, state, n_steps, sample_every, bool(record_energy))
            overflow = np.asarray(new_state.neighbor.did_buffer_overflow)
            if not overflow.any():
                return new_state, traj
            capacity = state.neighbor.idx.shape[-1]
            params, state = _on_mesh(
                params,
                state._replace(
                    neighbor=_allocate(state.md.position, min_capacity=int(1.5 * capacity) + 1)
                ),
            )
        raise RuntimeError(
            f"neighbour list still overflows after {max_reallocations} reallocations "
            f"(capacity {state.neighbor.idx.shape[-1]}); the system may have collapsed"
        )

    # -- rewinds, selection, invariants ----------------------------------------------------------

    @jax.jit
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
        hist = state.history
        n_rep = state.step.shape[0]
        back = jnp.broadcast_to(jnp.asarray(saves_back, jnp.int32), (n_rep,))
        available = jnp.minimum(hist.count, H)
        ok = jnp.asarray(mask, bool) & (back >= 0) & (back < available)
        rows = jnp.arange(n_rep)
        slot = (hist.count - 1 - back) % H
        restored = jax.tree_util.tree_map(lambda buf: buf[rows, slot], hist.md)
        if integrator == "langevin":
            # Fresh noise after a rewind: the random key moves on instead of being restored.
            restored = restored.set(rng=state.md.rng)
        md = _where_replicas(ok, restored, state.md)
        neighbor = state.neighbor
        if use_nl:
            neighbor = _where_replicas(ok, _rebuild(neighbor, md.position), neighbor)
        alive = jnp.where(ok & revive, True, state.alive)
        nonfinite = jnp.where(ok & revive, False, state.nonfinite)
        new = ReplicaState(
            md=md,
            neighbor=neighbor,
            alive=alive,
            nonfinite=nonfinite,
            step=jnp.where(ok, hist.step[rows, slot], state.step),
            history=History(hist.md, hist.step, jnp.where(ok, hist.count - back, hist.count)),
        )
        return new, ok

    def select(mask, state_true: ReplicaState, state_false: ReplicaState) -> ReplicaState:
        """Per replica, ``state_true`` where ``mask`` else ``state_false`` (neighbour lists are
        rebuilt with ``state_true``'s capacity, so states of different capacities combine)."""
        mask = jnp.asarray(mask, bool)
        fields = {
            name: _where_replicas(mask, getattr(state_true, name), getattr(state_false, name))
            for name in ("md", "alive", "nonfinite", "step", "history")
        }
        neighbor = None
        if use_nl:
            neighbor = rebuild_jit(state_true.neighbor, fields["md"].position)
        return ReplicaState(neighbor=neighbor, **fields)

    @jax.jit
    def invariant(params, state: ReplicaState):
        """Conserved energy of the dynamics, ``[R]`` eV (Langevin: ``U + K``, not conserved)."""
        md = state.md
        pe = batched_energy(params, md.position, state.neighbor)
        ke = thermostat.kinetic_energy(md.momentum, masses_j)
        if integrator == "langevin":
            return pe + ke
        if integrator == "authors_nose_hoover":
            return integrators.authors_nose_hoover_invariant(
                pe, ke, md.zeta, md.xi, authors_q, authors_k0
            )
        c = md.chain
        e = pe + ke + c.momentum[:, 0] ** 2 / (2 * c.mass[:, 0]) + dof * kT * c.position[:, 0]
        e = e + jnp.sum(c.momentum[:, 1:] ** 2 / (2 * c.mass[:, 1:]) + kT * c.position[:, 1:], -1)
        return e

    return Simulator(
        init=init,
        simulate=simulate_fn,
        rewind=rewind,
        select=select,
        energy=batched_energy,
        invariant=invariant,
        dt=dt,
        kT=kT,
        tau=tau,
        dof=dof,
        masses=masses_np,
        history_every=int(history_every),
        history_length=H,
        integrator=integrator,
    )
