"""A toy StABlE problem that runs in seconds: a diatomic whose "pretrained" bond is too soft.

True potential: a harmonic bond, k = 20 eV/Å², r0 = 1.2 Å, two 12-amu atoms, 500 K. The model
is the same functional form with a trainable ``log_k`` started at log(0.5): its bond fluctuates
by ~0.3 Å and breaks the 0.25-Å bond-deviation criterion within a vibration. The reference
observable is h(r) of MD samples of the true potential. StABlE training should stiffen the bond.

Run as a script (``python tests/toy_stabie.py WORKDIR [n_epochs] [shard]
[distributed=HOST:PORT,PROCESS_ID,N_PROCESSES]``) it trains and writes ``final_params.npy``
into WORKDIR; the resume test kills and restarts that process. With ``distributed=...`` the
script is one of several processes of a ``jax.distributed`` job (CPU, collectives over gloo)
that shard the replicas over all their devices; process 0 also writes ``topology.json``.
"""

from __future__ import annotations

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np


def start_distributed(spec: str, workdir: str) -> None:
    """``jax.distributed.initialize`` from ``HOST:PORT,PROCESS_ID,N_PROCESSES`` (CPU devices,
    gloo collectives); process 0 records what the job looks like in ``topology.json``."""
    address, process_id, n_processes = spec.split(",")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(address, num_processes=int(n_processes), process_id=int(process_id))
    if jax.process_index() == 0:
        pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
        topology = dict(
            process_count=jax.process_count(),
            devices=len(jax.devices()),
            local_devices=len(jax.local_devices()),
        )
        (pathlib.Path(workdir) / "topology.json").write_text(json.dumps(topology))


# A process of a jax.distributed job joins it before stabie_jax starts the XLA backend (jax_md
# does so at import).
_DISTRIBUTED = [a.removeprefix("distributed=") for a in sys.argv if a.startswith("distributed=")]
if __name__ == "__main__" and _DISTRIBUTED:
    start_distributed(_DISTRIBUTED[0], sys.argv[1])

from stabie_jax import md, observables, stabie, stability, trajectory_losses, units  # noqa: E402

K_TRUE = 20.0
LOG_K_PRETRAINED = float(np.log(0.5))
R0 = 1.2
TEMPERATURE_K = 500.0
MASSES = np.array([12.0, 12.0])
BONDS = np.array([[0, 1]])
H_BINS = dict(r_max=3.0, n_bins=150, sigma=0.05)


def energy_fn(params, positions, neighbor=None):
    r = jnp.sqrt(jnp.sum((positions[1] - positions[0]) ** 2))
    return 0.5 * jnp.exp(params["log_k"]) * (r - R0) ** 2


def observable_fn(positions):
    return observables.h_of_r(positions, **H_BINS)


def make_simulator(mesh=None):
    return md.make_simulator(
        energy_fn,
        MASSES,
        dt=units.fs_to_internal(1.0),
        kT=units.kT(TEMPERATURE_K),
        space=md.free_space(),
        history_every=100,
        history_length=4,
        mesh=mesh,
    )


def initial_positions(n_replicas: int) -> np.ndarray:
    base = np.array([[0.0, 0.0, 0.0], [R0, 0.0, 0.0]])
    return np.broadcast_to(base, (n_replicas, 2, 3)).copy()


def reference_h(sim, n_replicas: int = 16) -> jax.Array:
    """h(r) of the true potential from MD samples."""
    params = {"log_k": jnp.log(K_TRUE)}
    state = sim.init(params, jax.random.PRNGKey(123), initial_positions(n_replicas))
    state, _ = sim.simulate(params, state, 500)
    _, traj = sim.simulate(params, state, 2000, 20)
    return jnp.mean(observable_fn(traj.positions), axis=(0, 1))


def stable_fn(threshold):
    def fn(traj):
        ok, _ = stability.bond_length_deviation(
            traj.positions, BONDS, np.array([R0]), threshold=threshold, frame_axis=0
        )
        return ok

    return fn


def make_problem(sim, h_ref, batch_size=None):
    loss_fn = trajectory_losses.global_observable_loss(
        energy_fn, observable_fn, h_ref, sim.kT, batch_size=batch_size
    )
    return stabie.StabieProblem(sim, stable_fn(0.25), loss_fn, None, energy_fn=energy_fn)


SETTINGS = stabie.StabieSettings(
    steps_per_epoch=100,
    sample_every=5,
    learning_rate=0.5,
    f_max=0.5,
    f_min=0.0,
    grad_clip_norm=1.0,
    plateau_patience=3,
    max_learning_epochs=30,
    max_epochs=30,
)


def stable_steps(sim, params, n_replicas, n_chunks, key, threshold=0.5):
    """Steps each replica stays stable (chunks of 100 steps, eval threshold)."""
    state = sim.init(params, key, initial_positions(n_replicas), rescale_velocities=True)
    check = stable_fn(threshold)
    steps = np.zeros(n_replicas, int)
    alive = np.ones(n_replicas, bool)
    for _ in range(n_chunks):
        state, traj = sim.simulate(params, state, 100, 5)
        alive &= np.asarray(check(traj))
        steps += 100 * alive
    return steps


def main(workdir, n_epochs, shard=False):
    import dataclasses

    sim = make_simulator(md.replica_mesh(8) if shard else None)  # shard_map over the devices
    problem = make_problem(sim, reference_h(sim))
    settings = dataclasses.replace(SETTINGS, max_epochs=n_epochs)
    params = {"log_k": jnp.asarray(LOG_K_PRETRAINED, jnp.float32)}
    if shard:  # committed to one device, as parameters loaded from a model checkpoint are
        params = jax.device_put(params, jax.local_devices()[0])
    state = stabie.init_state(
        problem, settings, params, initial_positions(8), jax.random.PRNGKey(0)
    )
    shard_fn = stabie.shard_replicas if shard else None
    state, _ = stabie.run_stabie(
        problem, settings, state, workdir, progress=False, shard_fn=shard_fn
    )
    if jax.process_index() == 0:
        np.save(f"{workdir}/final_params.npy", np.asarray(state.train.params["log_k"]))


if __name__ == "__main__":
    options = sys.argv[3:]
    main(
        sys.argv[1],
        int(sys.argv[2]) if len(sys.argv) > 2 else SETTINGS.max_epochs,
        shard="shard" in options,
    )
    if _DISTRIBUTED:
        jax.distributed.shutdown()
