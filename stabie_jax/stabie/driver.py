"""The StABlE loop: :func:`run_stabie` alternates simulation and learning epochs as the unstable
fraction crosses ``f_max`` and ``f_min``, resumable (checkpoints, metrics log, progress), with
the replicas sharded over the devices (:func:`shard_replicas`)."""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from stabie_jax import run_loop, units
from stabie_jax.md import ReplicaState
from stabie_jax.stabie.epochs import (
    _budget_left,
    init_state,
    make_learning_epoch,
    make_simulation_epoch,
)
from stabie_jax.stabie.state import (
    LEARNING,
    PHASE_NAMES,
    SIMULATION,
    StabieProblem,
    StabieSettings,
    StabieState,
    TrainState,
)

__all__ = [
    "init_from_frames",
    "run_stabie",
    "shard_replicas",
    "shard_state",
]


def init_from_frames(
    problem: StabieProblem,
    settings: StabieSettings,
    params,
    frames,
    *,
    n_replicas: int,
    key,
    rescale_velocities: bool = True,
) -> tuple[StabieState, np.ndarray]:
    """R replicas started from random ``frames [F, N, 3]`` (Å; drawn without replacement, as
    the authors do). Returns the initial :class:`StabieState` and the ``[R]`` frame indices."""
    n_frames = len(frames)
    if n_replicas > n_frames:
        raise ValueError(
            f"n_replicas={n_replicas} exceeds the {n_frames} training frames used as initial "
            "conditions"
        )
    k_ic, k_state = jax.random.split(key)
    ic = np.asarray(jax.random.choice(k_ic, n_frames, (n_replicas,), replace=False))
    state = init_state(
        problem,
        settings,
        params,
        jnp.asarray(np.asarray(frames)[ic], jnp.float32),
        k_state,
        rescale_velocities=rescale_velocities,
    )
    return state, ic


def run_stabie(
    problem: StabieProblem,
    settings: StabieSettings,
    state: StabieState,
    workdir,
    *,
    metadata: dict | None = None,
    resume: bool = True,
    progress: bool = True,
    shard_fn: Callable | None = None,
    tensorboard: bool = False,
) -> tuple[StabieState, list[dict]]:
    """Run StABlE training until the budget is spent; resume from ``workdir`` if possible.

    Args:
      problem: :class:`StabieProblem`.
      settings: :class:`StabieSettings`.
      state: initial :class:`StabieState` (:func:`init_state`); also the restore template.
      workdir: output directory (``metrics.jsonl``, ``checkpoints/``).
      metadata: JSON-able dict saved with every checkpoint (e.g. the config).
      resume: continue from the newest readable checkpoint in ``workdir`` if there is one.
      progress: show a tqdm progress bar.
      shard_fn: optional ``ReplicaState -> ReplicaState`` placing replicas on devices
        (:func:`shard_replicas`); applied after init and restore.
      tensorboard: also write each epoch's record as TensorBoard scalars
        (``workdir/tensorboard``).

    Returns:
      ``(final_state, records)``: the metrics records of this call's epochs.
    """
    phases = {
        SIMULATION: make_simulation_epoch(problem, settings),
        LEARNING: make_learning_epoch(problem, settings),
    }
    dt = problem.simulator.dt
    started = time.time()
    records: list[dict] = []
    with run_loop.ResumableLoop(
        workdir,
        counter="epoch",
        total=settings.max_epochs,
        desc="StABlE",
        progress=progress,
        tensorboard=tensorboard,
    ) as loop:

        def save(st: StabieState):
            blob = {"metadata": metadata or {}, "counters": st.train.counters._asdict()}
            loop.save(int(st.train.counters.epoch), st, blob)

        state = loop.resume(state, restore=resume).state
        if shard_fn is not None:
            state = shard_state(state, shard_fn)
        while _budget_left(settings, state.train.counters, dt, started):
            counters = state.train.counters
            phase = int(counters.phase)
            key, k_phase = jax.random.split(state.train.key)
            if phase == LEARNING:  # the learning step's key comes from a second split
                k_phase, key = jax.random.split(key)
            record = {
                "epoch": int(counters.epoch) + 1,
                "cycle": int(counters.cycle),
                "phase": PHASE_NAMES[phase],
            }
            state, phase_record = phases[phase](state, k_phase)
            counters = state.train.counters
            state = state._replace(train=state.train._replace(key=key))
            record.update(
                phase_record,
                simulated_ps=units.internal_to_fs(int(counters.simulated_steps) * dt) / 1000.0,
                optimizer_steps=int(counters.optimizer_steps),
                wall_seconds=time.time() - started,
            )
            records.append(record)
            loop.log(record, phase=record["phase"][:5], f_unst=f"{record['unstable_fraction']:.2f}")
            boundary = int(counters.phase) != phase
            if boundary or int(counters.epoch) % settings.checkpoint_every == 0:
                save(state)
        if loop.latest_step != int(state.train.counters.epoch):
            save(state)
    return state, records


def place_on(x, sharding: jax.sharding.Sharding) -> jax.Array:
    """``jax.device_put(x, sharding)``, also when ``sharding`` spans several processes
    (``jax.distributed``), where every process holds the same values of ``x``: an array already
    spread over the processes is resharded by a compiled identity, a local one is sliced into
    this process's shards."""
    if jax.process_count() == 1 or sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return jax.jit(lambda a: a, out_shardings=sharding)(x)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _replicated_like(train: TrainState, replicas: ReplicaState) -> TrainState:
    """``train``'s arrays replicated on every device the sharded ``replicas`` use.

    Parameters loaded from a model checkpoint live on one device; a jitted gradient over a
    trajectory sharded over several devices refuses such mixed placements.
    """
    sharding = replicas.alive.sharding
    if not isinstance(sharding, jax.sharding.NamedSharding):
        return train
    everywhere = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())

    def place(x):
        return place_on(x, everywhere) if isinstance(x, jax.Array) else x

    return train._replace(
        params=jax.tree.map(place, train.params),
        opt_state=jax.tree.map(place, train.opt_state),
        key=place(train.key),
    )


def shard_state(state: StabieState, shard_fn: Callable | None = None) -> StabieState:
    """``state`` with its replicas and anchors placed by ``shard_fn`` (default
    :func:`shard_replicas`) and its training arrays replicated on the same devices, as
    :func:`run_stabie` places them after init and restore."""
    shard_fn = shard_replicas if shard_fn is None else shard_fn
    replicas = shard_fn(state.replicas)
    return StabieState(_replicated_like(state.train, replicas), replicas, shard_fn(state.anchors))


def shard_replicas(replicas: ReplicaState, mesh: jax.sharding.Mesh | None = None) -> ReplicaState:
    """Place the replica axis of every leaf across devices (1-D mesh ``"replica"``).

    Parameters stay replicated (they are closed over or passed unsharded); jit then runs the
    vmapped MD on each device's slice of replicas. The number of replicas must be a multiple of
    the number of devices.
    """
    if mesh is None:
        mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("replica",))
    n_devices = mesh.devices.size
    n_replicas = int(replicas.alive.shape[0])
    if n_replicas % n_devices:
        raise ValueError(
            f"{n_replicas} replicas cannot be split evenly over {n_devices} devices; choose "
            "n_replicas as a multiple of the device count"
        )
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("replica"))

    def place(x):
        if isinstance(x, jax.Array | np.ndarray) and x.ndim >= 1 and x.shape[0] == n_replicas:
            return place_on(x, spec)
        return x

    return jax.tree.map(place, replicas)
