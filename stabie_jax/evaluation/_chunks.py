"""The chunked evaluation engine behind :func:`stabie_jax.evaluation.evaluate_stability`: the
plan of a run, the jitted chunk (simulate, check, accumulate observables of stable chunks), and
the conversion of the final state into a :class:`~stabie_jax.evaluation.StabilityResult`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stabie_jax import observables, units
from stabie_jax.evaluation.metrics import diffusivity_curve_m2_per_s
from stabie_jax.evaluation.state import EvalState, StabilityResult
from stabie_jax.md import Trajectory

__all__: list[str] = []


def _ps(steps, dt) -> np.ndarray:
    """Steps of length ``dt`` (internal units) → ps."""
    return units.internal_to_fs(np.asarray(steps, np.float64) * dt) / 1000.0


def _cat_frames(a: Trajectory, b: Trajectory) -> Trajectory:
    return jax.tree_util.tree_map(lambda x, y: jnp.concatenate([x, y], axis=0), a, b)


def _sample_indices(n_dense: int, vacf_every: int, sample_every: int) -> np.ndarray:
    """Indices of dense frames that fall on the ``sample_every`` grid."""
    steps = vacf_every * np.arange(1, n_dense + 1)
    return np.nonzero(steps % sample_every == 0)[0]


def _host_state(state: EvalState) -> EvalState:
    """Host numpy copies of the bookkeeping fields (a restored checkpoint may hold jax arrays)."""

    def host(x, dtype=None):
        return None if x is None else np.array(x, dtype=dtype)

    return state._replace(
        chunk=host(state.chunk, np.int64),
        stable_chunks=host(state.stable_chunks, np.int64),
        unstable=host(state.unstable, bool),
        initial_momenta=host(state.initial_momenta),
        obs_sum={k: host(v, np.float64) for k, v in state.obs_sum.items()},
        obs_frames=host(state.obs_frames, np.int64),
        vacf_sum=host(state.vacf_sum, np.float64),
        vacf_count=host(state.vacf_count, np.int64),
        msd_positions=host(state.msd_positions),
        window=host(state.window),
    )


@functools.lru_cache(maxsize=32)
def _accumulator(items: tuple) -> Callable:
    """Jitted ``(positions [F,R,N,3], mask [R]) -> {name: [R, K]}`` sums over masked frames."""

    @jax.jit
    def accumulate(positions, mask):
        out = {}
        for name, fn in items:
            values = fn(positions)  # [F, R, K]
            out[name] = jnp.sum(jnp.where(mask[None, :, None], values, 0.0), axis=0)
        return out

    return accumulate


@functools.partial(jax.jit, static_argnums=2)
def _chunk_vacf(velocities, mask, window: int):
    """``[R, W]`` VACF of one dense window per replica, zero where ``mask`` is False."""
    c = observables.vacf(velocities, window=window)
    return jnp.where(mask[:, None], c, 0.0)


class _Plan(NamedTuple):
    """The validated chunk layout of one evaluation (steps, frames, VACF and MSD windows)."""

    chunk_steps: int
    sample_every: int
    n_chunks: int
    dense_steps: int  # VACF frames at the start of each chunk, in steps (0: no VACF)
    vacf_window: int | None
    vacf_every: int
    msd_mask: np.ndarray | None  # [N] bool
    msd_every_steps: int | None
    msd_max_lag: int
    keep_last_chunks: bool = False


def _plan(
    n_atoms, total_steps, check_every_steps, sample_every, stop_fraction, vacf_window,
    vacf_every, msd_atoms, msd_every_steps, msd_max_lag,
) -> _Plan:  # fmt: skip
    total_steps, chunk_steps, sample_every = (
        int(total_steps),
        int(check_every_steps),
        int(sample_every),
    )
    if chunk_steps < 1 or total_steps < chunk_steps or total_steps % chunk_steps:
        raise ValueError(
            f"total_steps={total_steps} must be a positive multiple of check_every_steps="
            f"{chunk_steps}"
        )
    if sample_every < 1 or chunk_steps % sample_every:
        raise ValueError(f"sample_every={sample_every} must divide check_every_steps={chunk_steps}")
    if not 0.0 < stop_fraction <= 1.0:
        raise ValueError(f"stop_fraction must be in (0, 1], got {stop_fraction}")
    dense_steps = 0
    if vacf_window is not None:
        dense_steps = int(vacf_window) * int(vacf_every)
        if vacf_window < 2 or sample_every % vacf_every or dense_steps % sample_every:
            raise ValueError(
                f"VACF window {vacf_window}×{vacf_every} steps must be a multiple of "
                f"sample_every={sample_every}, and vacf_every must divide sample_every"
            )
        if dense_steps > chunk_steps:
            raise ValueError(
                f"VACF window ({dense_steps} steps) longer than a chunk ({chunk_steps} steps)"
            )
    msd_mask = None
    if msd_atoms is not None:
        msd_mask = np.zeros(int(n_atoms), bool)
        msd_mask[np.asarray(msd_atoms)] = True
        msd_every_steps = chunk_steps if msd_every_steps is None else int(msd_every_steps)
        if msd_every_steps % sample_every or chunk_steps % msd_every_steps:
            raise ValueError(
                f"msd_every_steps={msd_every_steps} must be a multiple of sample_every and "
                f"divide check_every_steps={chunk_steps}"
            )
    return _Plan(
        chunk_steps,
        sample_every,
        total_steps // chunk_steps,
        dense_steps,
        None if vacf_window is None else int(vacf_window),
        int(vacf_every),
        msd_mask,
        msd_every_steps if msd_mask is not None else None,
        int(msd_max_lag),
    )


def _initial_eval_state(simulator, params, key, positions, plan: _Plan, accumulate, rescale):
    """The state before the first chunk, every accumulator allocated (a fixed pytree shape, so
    that checkpoints restore onto it); zeros add exactly, so results do not change."""
    positions = jnp.asarray(positions)
    replicas = simulator.init(params, key, positions, rescale_velocities=rescale)
    n_rep = int(replicas.alive.shape[0])
    frames = plan.chunk_steps // plan.sample_every
    shapes = jax.eval_shape(
        accumulate,
        jax.ShapeDtypeStruct((frames, *positions.shape), positions.dtype),
        jax.ShapeDtypeStruct((n_rep,), bool),
    )
    msd_positions = None
    if plan.msd_mask is not None:
        n_msd = plan.n_chunks * (plan.chunk_steps // plan.msd_every_steps) + 1
        msd_positions = np.full((n_rep, n_msd, *positions.shape[1:]), np.nan, np.float32)
        msd_positions[:, 0] = np.asarray(replicas.positions)
    return EvalState(
        replicas=replicas,
        chunk=np.asarray(0, np.int64),
        stable_chunks=np.zeros(n_rep, np.int64),
        unstable=np.zeros(n_rep, bool),
        initial_momenta=np.asarray(replicas.md.momentum),
        obs_sum={name: np.zeros(s.shape, np.float64) for name, s in shapes.items()},
        obs_frames=np.zeros(n_rep, np.int64),
        vacf_sum=None if plan.vacf_window is None else np.zeros((n_rep, plan.vacf_window)),
        vacf_count=np.zeros(n_rep, np.int64),
        msd_positions=msd_positions,
        window=(
            np.full((n_rep, 2 * frames, *positions.shape[1:]), np.nan, np.float32)
            if plan.keep_last_chunks
            else None
        ),
    )


def _make_chunk_fn(simulator, params, plan: _Plan, stable_fn, accumulate) -> Callable:
    """``chunk(state) -> state``: simulate one check interval and accumulate its stable frames.

    Only frames on the ``sample_every`` grid are checked and accumulated (dense VACF frames are
    subsampled onto it), so h(r)/RDFs do not depend on whether a VACF is recorded.
    """
    dense_idx = _sample_indices(plan.vacf_window or 0, plan.vacf_every, plan.sample_every)

    def chunk(state: EvalState) -> EvalState:
        replicas = state.replicas
        alive_before = ~state.unstable
        dense = traj = None
        if plan.dense_steps:
            replicas, dense = simulator.simulate(
                params, replicas, plan.dense_steps, plan.vacf_every
            )
        rest = plan.chunk_steps - plan.dense_steps
        if rest:
            replicas, traj = simulator.simulate(params, replicas, rest, plan.sample_every)
        if dense is not None:
            sampled = jax.tree_util.tree_map(lambda x: x[dense_idx], dense)
            traj = sampled if traj is None else _cat_frames(sampled, traj)
        ok = np.asarray(stable_fn(traj), bool) & np.asarray(jnp.all(traj.alive, axis=0))
        stable_now = alive_before & ok
        mask = jnp.asarray(stable_now)
        sums = jax.device_get(accumulate(traj.positions, mask)) if state.obs_sum else {}
        obs_sum = {k: state.obs_sum[k] + np.asarray(v, np.float64) for k, v in sums.items()}
        vacf_sum, vacf_count = state.vacf_sum, state.vacf_count
        if dense is not None:
            c = _chunk_vacf(dense.velocities, mask, plan.vacf_window)
            vacf_sum = vacf_sum + np.asarray(c, np.float64)
            vacf_count = vacf_count + stable_now
        msd_positions = state.msd_positions
        if plan.msd_mask is not None:
            per_chunk = plan.chunk_steps // plan.msd_every_steps
            idx = np.arange(1, per_chunk + 1) * (plan.msd_every_steps // plan.sample_every) - 1
            start = 1 + int(state.chunk) * per_chunk
            msd_positions = msd_positions.copy()
            frames = np.asarray(traj.positions)[idx]  # [per_chunk, R, N, 3]
            msd_positions[:, start : start + per_chunk] = np.swapaxes(frames, 0, 1)
        unstable = state.unstable | (alive_before & ~ok)
        window = state.window
        if window is not None:  # slide the replicas that were alive during this chunk
            new = np.swapaxes(np.asarray(traj.positions, np.float32), 0, 1)  # [R, F, N, 3]
            frames = new.shape[1]
            window = window.copy()
            window[alive_before] = np.concatenate(
                [window[alive_before, frames:], new[alive_before]], axis=1
            )
        return EvalState(
            replicas=replicas._replace(alive=replicas.alive & jnp.asarray(~unstable)),
            chunk=np.asarray(int(state.chunk) + 1, np.int64),
            stable_chunks=state.stable_chunks + stable_now,
            unstable=unstable,
            initial_momenta=state.initial_momenta,
            obs_sum=obs_sum,
            obs_frames=state.obs_frames + stable_now * (traj.positions.shape[0]),
            vacf_sum=vacf_sum,
            vacf_count=vacf_count,
            msd_positions=msd_positions,
            window=window,
        )

    return chunk


def _result(state: EvalState, simulator, plan: _Plan, stopped_early: bool) -> StabilityResult:
    chunk_steps, msd_mask, msd_every_steps = plan.chunk_steps, plan.msd_mask, plan.msd_every_steps
    dt = simulator.dt
    chunk_ps = float(_ps(chunk_steps, dt))
    n_done = int(state.chunk)
    stable_time = state.stable_chunks * chunk_ps
    censored = ~state.unstable
    ks = np.arange(n_done + 1)
    fail_chunk = np.where(state.unstable, state.stable_chunks + 1, np.iinfo(np.int64).max)
    fraction = np.mean(fail_chunk[None, :] <= ks[:, None], axis=1)

    def mean_rows(total, count):
        with np.errstate(invalid="ignore", divide="ignore"):
            per = total / np.where(count > 0, count, np.nan)[:, None]
            pooled = total.sum(0) / (count.sum() if count.sum() > 0 else np.nan)
        return pooled, per

    obs, obs_rep = {}, {}
    for name, total in state.obs_sum.items():
        if total is None:
            continue
        obs[name], obs_rep[name] = mean_rows(total, state.obs_frames)
    vacf = vacf_rep = lag_fs = None
    if state.vacf_sum is not None:
        vacf, vacf_rep = mean_rows(state.vacf_sum, state.vacf_count)
        lag_fs = units.internal_to_fs(np.arange(plan.vacf_window) * plan.vacf_every * dt)
    msd = lag_ps = d_m2s = d_lag = None
    if msd_mask is not None:
        msd, lag_ps, d_m2s, d_lag = _stretch_msd(
            state.msd_positions,
            state.stable_chunks * (chunk_steps // msd_every_steps) + 1,
            simulator.masses,
            msd_mask,
            float(_ps(msd_every_steps, dt)),
            plan.msd_max_lag,
        )
    return StabilityResult(
        stable_time_ps=stable_time,
        censored=censored,
        times_ps=ks * chunk_ps,
        fraction_unstable=fraction,
        median_stable_time_ps=float(np.median(stable_time)),
        mean_stable_time_ps=float(np.mean(stable_time)),
        simulated_ps=n_done * chunk_ps,
        chunk_ps=chunk_ps,
        stopped_early=bool(stopped_early),
        temperature_kelvin=float(units.temperature_from_kT(simulator.kT)),
        initial_momenta=state.initial_momenta,
        observables=obs,
        observables_per_replica=obs_rep,
        observable_frames=state.obs_frames,
        vacf_lag_fs=lag_fs,
        vacf=vacf,
        vacf_per_replica=vacf_rep,
        msd_lag_ps=lag_ps,
        msd=msd,
        diffusivity_m2_per_s=d_m2s,
        diffusivity_lag_ps=d_lag,
        last_frames=state.window,
        last_frames_time_ps=_window_times(state, plan, dt),
    )


def _window_times(state: EvalState, plan: _Plan, dt) -> np.ndarray | None:
    """``[R, 2F]`` ps of the window frames: frame ``j`` of a window ending after chunk ``c``
    is at step ``(c − 2)·chunk_steps + (j + 1)·sample_every`` (NaN before the run started).
    A window ends at the chunk its replica failed in, ``stable_chunks + 1``, or, for a replica
    still stable, at the last chunk run."""
    if state.window is None:
        return None
    frames = state.window.shape[1]
    last_chunk = np.where(state.unstable, state.stable_chunks + 1, int(state.chunk))
    steps = (last_chunk[:, None] - 2) * plan.chunk_steps + (
        np.arange(frames)[None, :] + 1
    ) * plan.sample_every
    return np.where(steps > 0, float(_ps(1, dt)) * steps, np.nan)


def _stretch_msd(positions, lengths, masses, atom_mask, frame_ps, max_lag):
    """Per-replica MSD over the first ``lengths[r]`` stored frames (NaN-padded)."""
    n_rep = positions.shape[0]
    msd = np.full((n_rep, max_lag + 1), np.nan)
    for r in range(n_rep):
        n = int(lengths[r])
        lag = min(max_lag, n - 1)
        if lag < 1:
            continue
        msd[r, : lag + 1] = np.asarray(
            observables.mean_squared_displacement(
                jnp.asarray(positions[r, :n]), lag, masses=masses, atom_mask=atom_mask
            )
        )
    lags_ps = np.arange(max_lag + 1) * frame_ps
    d_curve = diffusivity_curve_m2_per_s(msd, lags_ps)
    last = np.where(np.isfinite(d_curve), np.arange(max_lag + 1), -1).max(axis=1)
    d = np.where(last > 0, d_curve[np.arange(n_rep), np.maximum(last, 0)], np.nan)
    d_lag = np.where(last > 0, last * frame_ps, np.nan)
    return msd, lags_ps, d, d_lag
