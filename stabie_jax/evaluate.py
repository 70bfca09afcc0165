"""Evaluation of trained potentials: stable simulation time, observables, test errors.

The paper's protocol and the authors' evaluation settings (docs/method.md, Evaluation protocol;
per system in docs/paper_settings.md): many replicas start from held-out structures, with the
*same* positions and momenta (same PRNG key) for the baseline and the StABlE-trained model, and
are simulated in chunks of ``check_every_steps`` steps (the authors' 1-ps "epochs"). After every
chunk the stability criterion is evaluated on the chunk's frames (recorded every
``sample_every`` steps); a replica that fails is frozen for good (the simulator's ``alive``
mask). The run stops at ``total_steps`` or as soon as the unstable fraction reaches
``stop_fraction`` (authors: 0.99, water 0.95).

Definitions used throughout:

* **stable time** of a replica: the simulated time before the first chunk whose check failed
  (a multiple of the chunk length; chunk resolution, as in the authors' code). A replica still
  stable when the run ends is *censored*: its stable time is the simulated length of the run,
  a lower bound. Median and mean are taken over all replicas, censored ones included (authors).
* **fraction unstable** at ``t_k = k · chunk``: the fraction of replicas whose check failed in
  one of the first ``k`` chunks, i.e. ``mean(stable_time < t_k)`` over the uncensored ones.
* **observables** are accumulated over the frames of *stable chunks only* (frames of the chunk
  in which a replica fails are discarded, as are those of a replica frozen for non-finite
  values): per-frame observables (h(r), element RDFs) as running sums per replica; the VACF from
  a short dense window of consecutive frames at the start of every chunk; the mean squared
  displacement of chosen atoms (oxygens) from the unwrapped positions of each replica's stable
  stretch ``[0, stable time]``.

The state of a run (:class:`EvalState`) is a pytree of arrays: pass ``on_chunk`` to save it
(e.g. with :mod:`stabie_jax.checkpoint`) and ``resume`` to continue a killed evaluation exactly
where it stopped.

Metric helpers (:mod:`stabie_jax.evaluation_metrics`, re-exported here) compare with
references: :func:`h_of_r_errors`, :func:`vacf_mae`, :func:`rdf_errors`, :func:`qm_test_errors`
(eV and kcal/mol), diffusivity in m²/s. The temperature transfer (docs/method.md, Temperature
transfer and N_eff) is :func:`evaluate_temperature_transfer` with
:func:`reweighted_h_of_r_reference` and :func:`effective_sample_size_vs_temperature`.

Examples:
  >>> result = evaluate_stability(sim, params, test_positions, key, stable_fn=stable_fn,
  ...     total_steps=600_000, check_every_steps=2000, sample_every=100,
  ...     frame_observables={"h_of_r": h_of_r_observable()})        # doctest: +SKIP
  >>> result.median_stable_time_ps, h_of_r_errors(result.observables["h_of_r"], h_ref)
  ... # doctest: +SKIP
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from stabie_jax import observables, run_loop, units
from stabie_jax.evaluation_metrics import (
    VACF_WINDOW,
    diffusivity_curve_m2_per_s,
    effective_sample_size_vs_temperature,
    h_of_r_errors,
    paired_stability_comparison,
    pareto_front_mask,
    qm_test_errors,
    rdf_errors,
    reference_msd,
    reference_vacf,
    reweighted_h_of_r_reference,
    unwrap_positions,
    vacf_mae,
    velocities_from_positions,
)
from stabie_jax.md import ReplicaState, Simulator, Trajectory

__all__ = [
    "STOP_FRACTION",
    "VACF_WINDOW",
    "WATER_STOP_FRACTION",
    "EvalState",
    "StabilityResult",
    "TemperatureTransferResult",
    "diffusivity_curve_m2_per_s",
    "effective_sample_size_vs_temperature",
    "evaluate_stability",
    "evaluate_temperature_transfer",
    "h_of_r_errors",
    "h_of_r_observable",
    "median_improvement_replica",
    "paired_stability_comparison",
    "pareto_front_mask",
    "qm_test_errors",
    "rdf_errors",
    "rdf_name",
    "rdf_observables",
    "reference_msd",
    "reference_vacf",
    "reweighted_h_of_r_reference",
    "unwrap_positions",
    "vacf_mae",
    "velocities_from_positions",
]

STOP_FRACTION = 0.99
"""Unstable fraction that ends an evaluation early (authors; water uses 0.95)."""

WATER_STOP_FRACTION = 0.95


def _ps(steps, dt) -> np.ndarray:
    """Steps of length ``dt`` (internal units) → ps."""
    return units.internal_to_fs(np.asarray(steps, np.float64) * dt) / 1000.0


def h_of_r_observable(r_max: float = 10.0, n_bins: int = 500, sigma: float | None = None):
    """Per-frame h(r) (:func:`stabie_jax.observables.h_of_r`, paper's Gaussian smearing).

    Equal settings return the same function object, so repeated evaluations (baseline,
    StABlE model, temperatures) reuse one compiled accumulator.

    Returns:
      ``positions [..., N, 3] -> [..., n_bins]`` for ``frame_observables``.
    """
    sigma = observables.H_OF_R_SIGMA if sigma is None else sigma
    return _h_of_r_fn(float(r_max), int(n_bins), float(sigma))


@functools.cache
def _h_of_r_fn(r_max: float, n_bins: int, sigma: float):
    return functools.partial(observables.h_of_r, r_max=r_max, n_bins=n_bins, sigma=sigma)


def rdf_observables(
    species, box, pairs=((8, 8), (8, 1), (1, 1)), r_max: float = 6.0, n_bins: int = 500
) -> dict[str, Callable]:
    """Element RDFs (default O–O, O–H, H–H, 0.012-Å bins to 6 Å, the authors' evaluation grid).

    Returns:
      ``{"rdf_8_8": fn, ...}``, each ``positions [..., N, 3] -> [..., n_bins]``.
    """
    return {
        rdf_name(p): (
            lambda positions, p=p: observables.rdf(positions, species, p, box, r_max, n_bins)
        )
        for p in pairs
    }


def rdf_name(pair) -> str:
    """Key of an element-pair RDF in ``frame_observables`` (``(8, 1) -> "rdf_8_1"``)."""
    return f"rdf_{int(pair[0])}_{int(pair[1])}"


class EvalState(NamedTuple):
    """Resumable state of :func:`evaluate_stability` (a pytree of arrays).

    Attributes:
      replicas: the simulator's :class:`ReplicaState`.
      chunk: ``[]`` int, chunks simulated.
      stable_chunks: ``[R]`` int, chunks passed before the first failed check.
      unstable: ``[R]`` bool, replica failed a check (frozen).
      initial_momenta: ``[R, N, 3]`` amu·Å/internal time (for pairing checks).
      obs_sum: ``{name: [R, K]}`` sums of per-frame observables over stable frames.
      obs_frames: ``[R]`` int, stable frames accumulated per replica.
      vacf_sum: ``[R, W]`` sum of per-chunk VACFs of stable chunks, or None.
      vacf_count: ``[R]`` int, VACF windows accumulated.
      msd_positions: ``[R, M, N, 3]`` Å unwrapped positions every ``msd_every_steps`` (frame 0
        = initial), or None.
      window: ``[R, 2F, N, 3]`` Å, each replica's frames (``sample_every`` grid) of its last two
        simulated chunks, frozen at the chunk it failed in (NaN before its first chunks), or
        None (``keep_last_chunks=False``).
    """

    replicas: ReplicaState
    chunk: np.ndarray
    stable_chunks: np.ndarray
    unstable: np.ndarray
    initial_momenta: np.ndarray
    obs_sum: dict
    obs_frames: np.ndarray
    vacf_sum: np.ndarray | None
    vacf_count: np.ndarray
    msd_positions: np.ndarray | None
    window: np.ndarray | None


class StabilityResult(NamedTuple):
    """Outcome of :func:`evaluate_stability` (numpy arrays, times in ps).

    Attributes:
      stable_time_ps: ``[R]`` stable time per replica.
      censored: ``[R]`` bool, still stable at the end (time is a lower bound).
      times_ps: ``[C+1]`` check times ``0, chunk, 2·chunk, ...`` up to the end of the run.
      fraction_unstable: ``[C+1]`` unstable fraction at those times (non-decreasing).
      median_stable_time_ps, mean_stable_time_ps: over all replicas (censored included).
      simulated_ps: length of the run (shorter than requested when stopped early).
      chunk_ps: check interval.
      stopped_early: the unstable fraction reached ``stop_fraction`` before the end.
      temperature_kelvin: simulator temperature.
      initial_momenta: ``[R, N, 3]`` amu·Å/internal time (identical for the same key).
      observables: ``{name: [K]}`` mean over all stable frames of all replicas (NaN if none).
      observables_per_replica: ``{name: [R, K]}`` per-replica means (NaN rows if none).
      observable_frames: ``[R]`` stable frames per replica.
      vacf_lag_fs: ``[W]`` lags, fs, or None. vacf: ``[W]`` mean VACF (``C(0)=1``) or None.
      vacf_per_replica: ``[R, W]`` or None.
      msd_lag_ps: ``[L+1]`` lags, ps, or None. msd: ``[R, L+1]`` Å² (NaN beyond a replica's
        stable stretch) or None.
      diffusivity_m2_per_s: ``[R]`` ``MSD/(6 t)`` at each replica's largest available lag
        (≤ ``msd_max_lag``; NaN if the stretch is shorter than one lag), or None.
      diffusivity_lag_ps: ``[R]`` the lag used, ps, or None.
      last_frames: ``[R, 2F, N, 3]`` Å, each replica's last two chunks of frames: for a failed
        replica the chunk before its failure and the chunk it failed in, for a censored one the
        run's last two chunks (NaN frames where fewer chunks ran), or None
        (``keep_last_chunks=False``; :mod:`stabie_jax.trajectories` writes them as extxyz).
      last_frames_time_ps: ``[R, 2F]`` the simulation time of those frames (NaN where none).
    """

    stable_time_ps: np.ndarray
    censored: np.ndarray
    times_ps: np.ndarray
    fraction_unstable: np.ndarray
    median_stable_time_ps: float
    mean_stable_time_ps: float
    simulated_ps: float
    chunk_ps: float
    stopped_early: bool
    temperature_kelvin: float
    initial_momenta: np.ndarray
    observables: dict
    observables_per_replica: dict
    observable_frames: np.ndarray
    vacf_lag_fs: np.ndarray | None
    vacf: np.ndarray | None
    vacf_per_replica: np.ndarray | None
    msd_lag_ps: np.ndarray | None
    msd: np.ndarray | None
    diffusivity_m2_per_s: np.ndarray | None
    diffusivity_lag_ps: np.ndarray | None
    last_frames: np.ndarray | None = None
    last_frames_time_ps: np.ndarray | None = None

    def summary(self) -> dict:
        """JSON-friendly scalars: median/mean stable time, fractions, diffusivity."""
        out = {
            "n_replicas": int(self.stable_time_ps.shape[0]),
            "median_stable_time_ps": self.median_stable_time_ps,
            "mean_stable_time_ps": self.mean_stable_time_ps,
            "simulated_ps": self.simulated_ps,
            "chunk_ps": self.chunk_ps,
            "stopped_early": self.stopped_early,
            "final_fraction_unstable": float(self.fraction_unstable[-1]),
            "n_censored": int(self.censored.sum()),
            "temperature_kelvin": self.temperature_kelvin,
            "stable_frames": int(self.observable_frames.sum()),
        }
        if self.diffusivity_m2_per_s is not None:
            d = self.diffusivity_m2_per_s
            out["diffusivity_m2_per_s_mean"] = (
                float(np.nanmean(d)) if np.isfinite(d).any() else None
            )
            out["diffusivity_n_replicas"] = int(np.isfinite(d).sum())
        return out


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


def evaluate_stability(
    simulator: Simulator,
    params,
    initial_positions,
    key,
    *,
    stable_fn: Callable[[Trajectory], jax.Array],
    total_steps: int,
    check_every_steps: int,
    sample_every: int,
    stop_fraction: float = STOP_FRACTION,
    frame_observables: Mapping[str, Callable] | None = None,
    vacf_window: int | None = None,
    vacf_every: int = 1,
    msd_atoms=None,
    msd_every_steps: int | None = None,
    msd_max_lag: int = 100,
    rescale_velocities: bool = True,
    checkpoint_dir=None,
    checkpoint_every_seconds: float = 0.0,
    on_chunk: Callable[[EvalState], None] | None = None,
    progress: bool = True,
    tensorboard: bool = False,
    keep_last_chunks: bool = False,
    desc: str | None = None,
) -> StabilityResult:
    """Simulate replicas until they become unstable; stable times and stable-frame observables.

    Args:
      simulator: :func:`stabie_jax.md.make_simulator` result at the evaluation temperature.
      params: model parameters.
      initial_positions: ``[R, N, 3]`` Å, held-out structures (e.g. test frames ``0..R−1``).
      key: PRNG key for the initial Maxwell–Boltzmann momenta; use the same key for the
        baseline and the StABlE model so that both start from identical conditions.
      stable_fn: ``(Trajectory [F, R, ...]) -> [R] bool``, the evaluation criterion over the
        frames of one chunk (e.g. bond-length deviation at 0.5 Å with ``frame_axis=0``).
      total_steps: maximum run length in steps (a multiple of ``check_every_steps``).
      check_every_steps: steps per chunk (stability-check interval; authors: 1 ps).
      sample_every: steps between frames used for the check and the observables (divides
        ``check_every_steps``).
      stop_fraction: stop when the unstable fraction is at least this (0.99; water 0.95).
      frame_observables: ``{name: fn}``, ``fn(positions [F, R, N, 3]) -> [F, R, K]``, averaged
        over stable frames (:func:`h_of_r_observable`, :func:`rdf_observables`).
      vacf_window: if set, record ``vacf_window`` consecutive frames, ``vacf_every`` steps
        apart, at the start of each chunk and accumulate their VACF (aspirin: 100, every step).
        ``vacf_window·vacf_every`` must be a multiple of ``sample_every`` and ``sample_every``
        a multiple of ``vacf_every``.
      vacf_every: steps between VACF frames (match the reference's frame spacing).
      msd_atoms: ``[N]`` bool or index array of atoms whose MSD is measured (water oxygens);
        None disables MSD/diffusivity.
      msd_every_steps: steps between stored MSD frames (a multiple of ``sample_every`` that
        divides ``check_every_steps``; default ``check_every_steps``).
      msd_max_lag: largest MSD lag in stored frames (authors: 100 lags of 1 ps).
      rescale_velocities: rescale initial momenta to exactly ``dof·kT/2`` (authors).
      checkpoint_dir: if set, the run is resumable: the :class:`EvalState` is checkpointed
        there (after every chunk, or at most every ``checkpoint_every_seconds``, and at the
        end, with one line per chunk in ``metrics.jsonl``), and a call with the same directory
        and arguments continues from the newest checkpoint, bit-identically (``key`` is then
        unused). The directory belongs to one model and protocol: use a fresh one when either
        changes.
      checkpoint_every_seconds: minimum wall time between two checkpoints; 0 (default): after
        every chunk, so a kill loses at most the chunk in progress.
      on_chunk: called with the :class:`EvalState` after every chunk (after its checkpoint).
      progress: show a tqdm progress bar.
      tensorboard: with ``checkpoint_dir``, also write the unstable fraction per chunk as a
        TensorBoard scalar (``checkpoint_dir/tensorboard``).
      desc: label of the progress bar and of the per-chunk log lines (e.g. model and
        temperature).
      keep_last_chunks: keep each replica's frames of its last two chunks (up to and including
        the one it failed in) for :attr:`StabilityResult.last_frames`; memory
        ``R·2F·N·3`` floats, ``F = check_every_steps / sample_every``.

    Returns:
      A :class:`StabilityResult`.
    """
    n_atoms = np.shape(initial_positions)[-2]
    plan = _plan(
        n_atoms, total_steps, check_every_steps, sample_every, stop_fraction, vacf_window,
        vacf_every, msd_atoms, msd_every_steps, msd_max_lag,
    )._replace(keep_last_chunks=bool(keep_last_chunks))  # fmt: skip
    accumulate = _accumulator(tuple(dict(frame_observables or {}).items()))
    chunk_fn = _make_chunk_fn(simulator, params, plan, stable_fn, accumulate)
    state = _initial_eval_state(
        simulator, params, key, initial_positions, plan, accumulate, rescale_velocities
    )
    loop = None
    if checkpoint_dir is not None:
        loop = run_loop.ResumableLoop(
            checkpoint_dir,
            counter="chunk",
            total=plan.n_chunks,
            unit="chunk",
            desc=desc,
            progress=progress,
            tensorboard=tensorboard,
        )
        state = _host_state(loop.resume(state).state)
    bar = tqdm(
        total=plan.n_chunks,
        initial=int(state.chunk),
        disable=not progress or loop is not None,
        unit="chunk",
        desc=desc,
    )
    stopped_early = False
    saved = time.monotonic()
    try:
        while int(state.chunk) < plan.n_chunks:
            if np.mean(state.unstable) >= stop_fraction:
                stopped_early = True
                break
            state = chunk_fn(state)
            f_unst = float(np.mean(state.unstable))
            if loop is not None:
                loop.log(
                    {"chunk": int(state.chunk), "unstable_fraction": f_unst}, f_unst=f"{f_unst:.2f}"
                )
                done = int(state.chunk) == plan.n_chunks or f_unst >= stop_fraction
                if done or time.monotonic() - saved >= checkpoint_every_seconds:
                    loop.save(int(state.chunk), state)
                    saved = time.monotonic()
            if on_chunk is not None:
                on_chunk(state)
            bar.update(1)
            bar.set_postfix(f_unst=f"{f_unst:.2f}")
    finally:
        bar.close()
        if loop is not None:
            loop.close()
    return _result(state, simulator, plan, stopped_early)


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


def median_improvement_replica(baseline: StabilityResult, trained: StabilityResult) -> int:
    """Replica whose stable-time improvement is the median one (paper section 3 observables).

    Both results must come from the same initial conditions (checked via the momenta).
    """
    if not np.array_equal(baseline.initial_momenta, trained.initial_momenta):
        raise ValueError("results are not paired: initial momenta differ (use the same key)")
    gain = trained.stable_time_ps - baseline.stable_time_ps
    order = np.argsort(gain, kind="stable")
    return int(order[(len(order) - 1) // 2])


class TemperatureTransferResult(NamedTuple):
    """Evaluation at another temperature against a reweighted reference.

    Attributes:
      temperature_kelvin: T₂, K.
      stability: :class:`StabilityResult` at T₂.
      h_of_r_reference: ``[n_bins]`` reweighted reference h(r).
      n_eff: effective sample size of the reweighting.
      h_of_r_errors: :func:`h_of_r_errors` of the simulated h(r) (NaNs if no stable frame).
    """

    temperature_kelvin: float
    stability: StabilityResult
    h_of_r_reference: np.ndarray
    n_eff: float
    h_of_r_errors: dict


def evaluate_temperature_transfer(
    simulator: Simulator,
    params,
    initial_positions,
    key,
    *,
    reference_positions,
    reference_energies,
    reference_temperature_kelvin: float,
    r_max: float = 10.0,
    n_bins: int = 500,
    sigma: float | None = None,
    **evaluate_kwargs,
) -> TemperatureTransferResult:
    """Run :func:`evaluate_stability` with a simulator built for T₂ and score its h(r).

    Args:
      simulator: simulator whose ``kT`` is the new temperature T₂.
      params, initial_positions, key: as :func:`evaluate_stability` (same key for both models).
      reference_positions: ``[F, N, 3]`` Å, canonical reference frames at T₁.
      reference_energies: ``[F]`` eV, their reference potential energies.
      reference_temperature_kelvin: T₁, K.
      r_max, n_bins: h(r) grid (aspirin: 10 Å, 500).
      sigma: smearing of the simulated h(r), Å (default the paper's 0.01).
      **evaluate_kwargs: ``stable_fn``, ``total_steps``, ``check_every_steps``,
        ``sample_every``, ... forwarded to :func:`evaluate_stability` (an ``"h_of_r"`` frame
        observable is added).

    Returns:
      A :class:`TemperatureTransferResult`.
    """
    t2 = float(units.temperature_from_kT(simulator.kT))
    obs = dict(evaluate_kwargs.pop("frame_observables", None) or {})
    obs["h_of_r"] = h_of_r_observable(r_max, n_bins, sigma)
    result = evaluate_stability(
        simulator, params, initial_positions, key, frame_observables=obs, **evaluate_kwargs
    )
    h_ref, n_eff = reweighted_h_of_r_reference(
        reference_positions, reference_energies, reference_temperature_kelvin, t2, r_max, n_bins
    )
    return TemperatureTransferResult(
        temperature_kelvin=t2,
        stability=result,
        h_of_r_reference=h_ref,
        n_eff=n_eff,
        h_of_r_errors=h_of_r_errors(result.observables["h_of_r"], h_ref),
    )
