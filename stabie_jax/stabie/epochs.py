"""The two epochs of the driver, each a function ``(state, key) -> (state, record)``: a
simulation epoch (simulate, check, rewind and freeze the unstable replicas) and a learning
epoch (simulate from the anchors, one optimizer step, optional reuse)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stabie_jax import units
from stabie_jax.host import to_host
from stabie_jax.md import ReplicaState, Simulator, Trajectory
from stabie_jax.plateau import PlateauState, plateau_update
from stabie_jax.stabie.learning_step import (
    make_learning_step,
    make_optimizer,
    make_split_cosine_fn,
    random_half,
)
from stabie_jax.stabie.reuse import make_frame_energies, reuse_samples
from stabie_jax.stabie.state import (
    LEARNING,
    SIMULATION,
    LoopCounters,
    StabieProblem,
    StabieSettings,
    StabieState,
    TrainState,
)
from stabie_jax.trajectory_losses import trajectory_samples

__all__ = [
    "frames_within_criterion",
    "init_state",
    "make_learning_epoch",
    "make_simulation_epoch",
]


def _freeze(state: ReplicaState) -> ReplicaState:
    return state._replace(alive=jnp.zeros_like(state.alive))


def _revive(state: ReplicaState) -> ReplicaState:
    return state._replace(alive=jnp.ones_like(state.alive), nonfinite=jnp.zeros_like(state.alive))


def init_state(
    problem: StabieProblem,
    settings: StabieSettings,
    params,
    initial_positions,
    key: jax.Array,
    *,
    rescale_velocities: bool = True,
) -> StabieState:
    """Start replicas from ``initial_positions [R, N, 3]`` (e.g. R training frames)."""
    k_init, k_run = jax.random.split(key)
    replicas = problem.simulator.init(
        params, k_init, initial_positions, rescale_velocities=rescale_velocities
    )
    opt_state = make_optimizer(settings).init(params)
    train = TrainState(params, opt_state, k_run, LoopCounters.initial())
    return StabieState(train, replicas, replicas)


def _epoch_stability(problem: StabieProblem, replicas: ReplicaState, traj: Trajectory):
    """``[R]`` bool: criterion passed, state finite, and every recorded energy finite."""
    stable = to_host(problem.stable_fn(traj)) & ~to_host(replicas.nonfinite)
    if traj.potential_energy is not None:
        stable &= np.all(np.isfinite(to_host(traj.potential_energy)), axis=0)
    return stable


def frames_within_criterion(stable_fn: Callable, traj: Trajectory) -> np.ndarray:
    """``[F, R]`` bool: frame ``f`` of replica ``r`` lies before the replica's first failure.

    ``stable_fn`` is the training criterion over a trajectory's frames (``Trajectory [F', R,
    ...] -> [R]`` bool, the worst frame decides); it is applied to every prefix ``0..f`` of
    ``traj``, so criteria that look at several frames at once (an RDF over a window) are
    handled too and the result is non-increasing along the frames.
    """
    n_frames = traj.positions.shape[0]
    columns = [
        to_host(stable_fn(jax.tree.map(lambda a, f=f: a[: f + 1], traj)), bool)
        for f in range(n_frames)
    ]
    return np.logical_and.accumulate(np.stack(columns), axis=0)


def _budget_left(settings: StabieSettings, counters: LoopCounters, dt, started: float) -> bool:
    if int(counters.epoch) >= settings.max_epochs:
        return False
    if (
        settings.max_optimizer_steps is not None
        and int(counters.optimizer_steps) >= settings.max_optimizer_steps
    ):
        return False
    if settings.max_simulated_ps is not None:
        ps = units.internal_to_fs(int(counters.simulated_steps) * dt) / 1000.0
        if ps >= settings.max_simulated_ps:
            return False
    if settings.max_wall_seconds is not None and time.time() - started >= settings.max_wall_seconds:
        return False
    return True


def _reset_some_stable(sim: Simulator, replicas: ReplicaState, key, probability: float):
    """Authors' reset: ceil(p·#stable) stable replicas go back to a random saved state."""
    alive = to_host(replicas.alive)
    n_reset = math.ceil(probability * int(alive.sum()))
    if n_reset == 0:
        return replicas, 0
    k_pick, k_back = jax.random.split(key)
    candidates = np.flatnonzero(alive)
    picked = to_host(jax.random.choice(k_pick, candidates, (n_reset,), replace=False))
    mask = np.zeros(alive.shape, bool)
    mask[picked] = True
    available = np.minimum(to_host(replicas.history.count), sim.history_length)
    back = np.floor(to_host(jax.random.uniform(k_back, alive.shape)) * available).astype(int)
    replicas, ok = sim.rewind(replicas, jnp.asarray(mask), jnp.asarray(back, jnp.int32))
    return replicas, int(to_host(ok).sum())


def make_simulation_epoch(problem: StabieProblem, settings: StabieSettings) -> Callable:
    """``(state, key) -> (state, record)``: one simulation-phase epoch (learning rate 0).

    Alive replicas run ``t`` steps; a replica failing the criterion goes back to its state at
    the start of the epoch, frozen. When the unstable fraction reaches ``f_max`` every replica
    is revived at its anchor and the counters enter the learning phase. ``key`` draws the
    authors' reset of some stable replicas in the first epoch of a phase.
    """
    sim = problem.simulator
    t, every = settings.steps_per_epoch, settings.sample_every

    def epoch(state: StabieState, key) -> tuple[StabieState, dict]:
        train, replicas, _ = state
        counters = train.counters
        record: dict[str, Any] = {}
        if int(counters.phase_epoch) == 0 and settings.reset_probability > 0:
            replicas, record["n_reset"] = _reset_some_stable(
                sim, replicas, key, settings.reset_probability
            )
        start = replicas
        clock = time.perf_counter()
        replicas, traj = sim.simulate(train.params, replicas, t, every, record_energy=True)
        stable = _epoch_stability(problem, replicas, traj)  # waits for the simulation
        record["md_seconds"] = time.perf_counter() - clock
        alive_at_start = to_host(start.alive)
        newly_unstable = alive_at_start & ~stable
        replicas = sim.select(jnp.asarray(newly_unstable), _freeze(start), replicas)
        f_unst = 1.0 - float(np.mean(to_host(replicas.alive)))
        counters = counters.bump(epoch=1, phase_epoch=1, simulated_steps=t).with_plateau(
            counters.plateau()._replace(learning_rate=0.0)
        )
        record.update(
            unstable_fraction=f_unst,
            newly_unstable=int(newly_unstable.sum()),
            alive_at_start=int(alive_at_start.sum()),
            learning_rate=0.0,
        )
        anchors = replicas
        if f_unst >= settings.f_max:
            # Enter learning: every replica restarts from its anchor (near-unstable) state.
            anchors = _revive(replicas)
            counters = counters._replace(
                phase=np.asarray(LEARNING, np.int64), phase_epoch=np.asarray(0, np.int64)
            ).with_plateau(PlateauState(settings.learning_rate, math.inf, 0, 0))
        return StabieState(train._replace(counters=counters), replicas, anchors), record

    return epoch


def _energy_spread(traj: Trajectory, kT: float) -> dict:
    """Spread of the recorded frames' ``U_θ`` around their median, in kT (valid frames only)."""
    if traj.potential_energy is None:
        return {}
    _, mask = trajectory_samples(traj)
    u = to_host(traj.potential_energy).reshape(-1)[to_host(mask)]
    if u.size == 0:
        return {}
    median = float(np.median(u))
    return {
        "sample_energy_above_median_kT": (float(u.max()) - median) / kT,
        "sample_energy_below_median_kT": (median - float(u.min())) / kT,
    }


_STEP_METRICS = ("grad_norm", "obs_grad_norm", "qm_grad_norm", "obs_share", "grad_cosine")
_PROJECTION_METRICS = ("obs_projected", "obs_removed_fraction")


def _step_record(f_unst, phase_epoch, lr, metrics, finite, skipped) -> dict[str, Any]:
    record: dict[str, Any] = dict(
        unstable_fraction=f_unst,
        phase_epoch=phase_epoch,  # 0 in the first epoch of the phase
        learning_rate=lr,
        step_applied=finite,
        obs_loss=float(metrics["obs_loss"]),
        qm_loss=float(metrics["qm_loss"]),
        loss=float(metrics["loss"]),
        n_samples=int(metrics["n_samples"]),
        **{k: float(metrics[k]) for k in _STEP_METRICS + ("update_norm",)},
    )
    # with StabieSettings.project_conflict
    record.update({k: float(metrics[k]) for k in _PROJECTION_METRICS if k in metrics})
    if skipped:
        record["skipped"] = skipped
    return record


def _learning_samples(problem: StabieProblem, settings: StabieSettings, traj: Trajectory):
    """The trajectory whose frames feed the step, and the record entries that describe it."""
    if settings.learning_samples == "all":
        return traj, {}
    valid = to_host(trajectory_samples(traj)[1]).reshape(traj.alive.shape)
    within = frames_within_criterion(problem.stable_fn, traj)
    fraction = float((within & valid).sum()) / max(int(valid.sum()), 1)
    traj = traj._replace(alive=jnp.asarray(within) & traj.alive)
    return traj, {"within_criterion_fraction": fraction}


def _learning_end(settings: StabieSettings, f_unst: float, lr: float, phase_epoch: int):
    """Why the learning phase ends after this epoch, or None."""
    if f_unst <= settings.f_min:
        return "unstable fraction <= f_min"
    if lr < settings.learning_rate * settings.min_lr_fraction:
        return "learning rate < min_lr"
    if phase_epoch >= settings.max_learning_epochs:
        return "max_learning_epochs reached"
    return None


def _reuse_record(reused) -> dict[str, Any]:
    return dict(
        reuse_steps=reused.steps,
        reuse_end=reused.end,
        reuse_n_eff_fraction=reused.n_eff_fraction,
        reuse_obs_loss=reused.obs_loss,
        reuse_qm_loss=reused.qm_loss,
        reuse_update_norm=reused.update_norm,
    )


def make_learning_epoch(problem: StabieProblem, settings: StabieSettings) -> Callable:
    """``(state, key) -> (state, record)``: one learning-phase epoch.

    All replicas restart from the anchors, run ``t`` steps recording every ``S``-th frame, and
    ONE optimizer step is taken on those frames (``settings.learning_samples``: all of them, or
    each replica's frames before its first failure of the criterion), plus the reweighted reuse
    steps when ``settings.reuse_min_neff > 0``; the unstable fraction drives the plateau
    schedule and the end of the phase (``f_min``, ``min_lr``, ``max_learning_epochs``), after
    which replicas unstable in this epoch go back to their anchors, frozen, and the simulation
    phase resumes. ``key`` is the estimator's minibatch key.
    """
    sim = problem.simulator
    t, every = settings.steps_per_epoch, settings.sample_every
    learning_step = make_learning_step(problem, settings)
    reuse = settings.reuse_min_neff > 0 and settings.max_reuse_steps > 0
    frame_energies = make_frame_energies(problem) if reuse else None
    split_cosine = make_split_cosine_fn(problem) if settings.split_cosine_every else None

    def split_record(params, traj, key) -> dict[str, float]:
        # measured at the parameters the step was computed at, on the same frames
        k_half, k_est = jax.random.split(jax.random.fold_in(key, 2))
        half = random_half(k_half, traj.alive.shape[1])
        split = {
            k: float(v) for k, v in jax.device_get(split_cosine(params, traj, k_est, half)).items()
        }
        for name in ("obs_split_norm_a", "obs_split_norm_b"):
            split[name] *= settings.gradient_scale
        return split

    def reuse_steps(train: TrainState, params, opt_state, traj, key, lr):
        budget = settings.max_reuse_steps
        if settings.max_optimizer_steps is not None:
            budget = min(budget, settings.max_optimizer_steps - int(train.counters.optimizer_steps))
        return reuse_samples(
            learning_step,
            frame_energies,
            settings,
            sim.kT,
            train.params,
            params,
            opt_state,
            traj,
            jax.random.fold_in(key, 1),
            lr,
            max(budget, 0),
        )

    def epoch(state: StabieState, key) -> tuple[StabieState, dict]:
        train, _, anchors = state
        counters = train.counters
        clock = time.perf_counter()
        replicas, traj = sim.simulate(train.params, anchors, t, every, record_energy=True)
        stable = _epoch_stability(problem, replicas, traj)  # waits for the simulation
        md_seconds = time.perf_counter() - clock
        f_unst = 1.0 - float(np.mean(stable))
        traj, samples_record = _learning_samples(problem, settings, traj)
        lr = counters.plateau().learning_rate
        clock = time.perf_counter()
        params, opt_state, metrics, finite, skipped = learning_step(
            train.params, train.opt_state, traj, key, lr
        )
        step_seconds = time.perf_counter() - clock  # the step reads its metrics on the host
        record = _step_record(f_unst, int(counters.phase_epoch), lr, metrics, finite, skipped)
        record.update(md_seconds=md_seconds, step_seconds=step_seconds)
        record.update(samples_record)
        record.update(_energy_spread(traj, sim.kT))
        if (
            split_cosine is not None
            and int(counters.phase_epoch) % settings.split_cosine_every == 0
        ):
            record.update(split_record(train.params, traj, key))
        if finite:
            counters = counters.bump(optimizer_steps=1)
        if reuse and finite:
            reused = reuse_steps(
                train._replace(counters=counters), params, opt_state, traj, key, lr
            )
            params, opt_state = reused.params, reused.opt_state
            counters = counters.bump(optimizer_steps=reused.steps)
            record.update(_reuse_record(reused))
        plateau = plateau_update(
            counters.plateau(),
            f_unst,
            factor=settings.plateau_factor,
            patience=settings.plateau_patience,
        )
        counters = counters.bump(epoch=1, phase_epoch=1).with_plateau(plateau)
        train = train._replace(params=params, opt_state=opt_state)
        end_reason = _learning_end(
            settings, f_unst, plateau.learning_rate, int(counters.phase_epoch)
        )
        if end_reason is None:
            replicas = anchors
        else:
            record["learning_end"] = end_reason
            replicas = sim.select(jnp.asarray(~stable), _freeze(anchors), replicas)
            anchors = replicas
            counters = (
                counters._replace(
                    phase=np.asarray(SIMULATION, np.int64), phase_epoch=np.asarray(0, np.int64)
                )
                .bump(cycle=1)
                .with_plateau(PlateauState(0.0, math.inf, 0, 0))
            )
        return StabieState(train._replace(counters=counters), replicas, anchors), record

    return epoch
