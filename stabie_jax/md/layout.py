"""How the replica axis is laid out: devices (``shard_map`` over a mesh) and chunks (``lax.map``).

This is the one sharding path of the replica engine: with a mesh, the jitted step scan runs under
``jax.shard_map`` with the replicas split evenly over the mesh's devices and the parameters
replicated (replicas never communicate); inside each device, the per-replica functions run under
``jax.vmap`` or, with ``replica_batch_size``, ``jax.lax.map`` over chunks of vectorised replicas.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np
from jax import lax

__all__ = [
    "CPU_CHUNK",
    "CPU_FRAME_CHUNK",
    "ReplicaLayout",
    "auto_frame_chunk_size",
    "auto_replica_batch_size",
    "replica_layout",
    "replica_mesh",
    "splits_replicas",
]

CPU_CHUNK = 2
"""Replicas per chunk on each CPU device in the automatic layout: the per-edge arrays of a
40-atom molecule's SchNet step then stay in cache (benchmarks/RESULTS.md, issue 11)."""


CPU_FRAME_CHUNK = 4
"""Recorded frames per chunk of the Boltzmann estimator's backward pass on each CPU device in
the automatic layout: measured on 2 cores, paper-scale aspirin (2,560 frames), the gradient took
6.2 s in chunks of 4 and 8.3 s in chunks of 16 against 23.1 s in one pass per device
(benchmarks/RESULTS.md)."""


def auto_frame_chunk_size(n_replicas: int, devices=None) -> int | None:
    """The automatic chunk of the estimator's per-frame work (``chunk_size`` of
    :func:`stabie_jax.estimator.boltzmann_expectation`) for a run of ``n_replicas``:
    :data:`CPU_FRAME_CHUNK` on a CPU whose devices split the replicas (the layout
    :func:`auto_replica_batch_size` chunks), None (one pass) otherwise."""
    devices = list(jax.devices() if devices is None else devices)
    on_cpu = all(d.platform == "cpu" for d in devices)
    return CPU_FRAME_CHUNK if on_cpu and splits_replicas(n_replicas, devices) else None


def splits_replicas(n_replicas: int, devices=None) -> bool:
    """True when there are several ``devices`` (default ``jax.devices()``) and they split
    ``n_replicas`` evenly: the one condition under which the replicas are spread over devices
    (:func:`replica_mesh`, :func:`auto_replica_batch_size`, the driver's sharding)."""
    n_devices = len(jax.devices() if devices is None else list(np.asarray(devices).reshape(-1)))
    return n_devices > 1 and int(n_replicas) % n_devices == 0


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
    if not splits_replicas(n_replicas, devices):
        return None
    return jax.sharding.Mesh(devices.reshape(-1), ("replica",))


def auto_replica_batch_size(n_replicas: int, devices=None) -> int | None:
    """The automatic ``replica_batch_size`` for ``n_replicas``: :data:`CPU_CHUNK` on a CPU
    whose devices split the replicas (one device per core, :func:`replica_mesh` not None),
    None (``vmap`` over each device's replicas) otherwise.

    Measured on 2 cores with SchNet aspirin at 128 replicas: one device per core with chunks of
    2 ran 1.8x the MD throughput of ``vmap`` on one device; chunks on a single device were
    slower than ``vmap`` (the elementwise passes then run on one thread either way), and on
    accelerators ``vmap`` keeps the device busy.

    Args:
      n_replicas: number of replicas the simulator will run.
      devices: the devices they run on (default ``jax.devices()``).
    """
    devices = list(jax.devices() if devices is None else devices)
    on_cpu = all(d.platform == "cpu" for d in devices)
    return CPU_CHUNK if on_cpu and splits_replicas(n_replicas, devices) else None


class ReplicaLayout(NamedTuple):
    """Functions placing the replica axis, see :func:`replica_layout`.

    Attributes:
      map_replicas: ``(fn, *args) -> fn`` applied to every replica (leading axis of ``args``).
      shard: ``advance -> advance`` over the mesh, for ``advance(params, state, n_steps,
        sample_every, record_energy) -> (state, frames)`` (frames time-major ``[F, R, ...]``);
        the identity without a mesh.
      place: ``(params, state) -> (params, state)``, parameters replicated and replicas split
        over the mesh (the identity without a mesh); raises ``ValueError`` when the replica
        count does not divide the mesh.
    """

    map_replicas: Callable
    shard: Callable
    place: Callable


def replica_layout(
    mesh: jax.sharding.Mesh | None = None, replica_batch_size: int | None = None
) -> ReplicaLayout:
    """Layout of the replica axis over ``mesh`` devices and ``replica_batch_size`` chunks.

    Args:
      mesh: optional device mesh (:func:`replica_mesh`); None runs everything on one device.
      replica_batch_size: None vectorises over all replicas (``jax.vmap``); an integer ``b``
        runs ``jax.lax.map`` over chunks of ``b`` vectorised replicas.

    Returns:
      A :class:`ReplicaLayout`.
    """

    def map_replicas(fn, *args):
        if replica_batch_size is None:
            return jax.vmap(fn)(*args)
        return lax.map(lambda a: fn(*a), args, batch_size=replica_batch_size)

    if mesh is None:
        return ReplicaLayout(map_replicas, lambda advance: advance, lambda p, s: (p, s))

    replica_spec = jax.sharding.PartitionSpec(tuple(mesh.axis_names))
    frame_spec = jax.sharding.PartitionSpec(None, tuple(mesh.axis_names))
    replicated = jax.sharding.PartitionSpec()

    def shard(advance):
        def advance_on_mesh(params, state, n_steps, sample_every, record_energy):
            per_device = jax.shard_map(
                lambda p, s: advance(p, s, n_steps, sample_every, record_energy),
                mesh=mesh,
                in_specs=(replicated, replica_spec),
                out_specs=(replica_spec, frame_spec),
                check_vma=False,
            )
            return per_device(params, state)

        return advance_on_mesh

    def place(params, state):
        """Params replicated and replicas split over the mesh, so every call of the jitted
        scan sees the same input shardings (a different placement would recompile it)."""
        if state.step.shape[0] % mesh.devices.size:
            raise ValueError(
                f"{state.step.shape[0]} replicas cannot be split evenly over the "
                f"{mesh.devices.size} devices of the simulator's mesh; choose a multiple of "
                f"{mesh.devices.size} replicas or build the simulator with mesh=None"
            )
        params = jax.device_put(params, jax.sharding.NamedSharding(mesh, replicated))
        state = jax.device_put(state, jax.sharding.NamedSharding(mesh, replica_spec))
        return params, state

    return ReplicaLayout(map_replicas, shard, place)
