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

Metric helpers (:mod:`stabie_jax.evaluation.metrics`) compare with
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

import time
from collections.abc import Callable, Mapping

import jax
import numpy as np
from tqdm.auto import tqdm

from stabie_jax import observables, run_loop, units
from stabie_jax.evaluation._chunks import (
    _accumulator,
    _host_state,
    _initial_eval_state,
    _make_chunk_fn,
    _plan,
    _result,
)
from stabie_jax.evaluation.state import EvalState, StabilityResult, TemperatureTransferResult
from stabie_jax.md import Simulator, Trajectory
from stabie_jax.observables.errors import h_of_r_errors
from stabie_jax.observables.kinds import h_of_r as h_of_r_kind
from stabie_jax.observables.kinds.rdf import rdf_name
from stabie_jax.observables.references import reweighted_h_of_r_reference

__all__ = [
    "STOP_FRACTION",
    "WATER_STOP_FRACTION",
    "evaluate_stability",
    "evaluate_temperature_transfer",
    "h_of_r_observable",
    "median_improvement_replica",
    "rdf_name",
    "rdf_observables",
]


STOP_FRACTION = 0.99
"""Unstable fraction that ends an evaluation early (authors; water uses 0.95)."""


WATER_STOP_FRACTION = 0.95


def h_of_r_observable(r_max: float = 10.0, n_bins: int = 500, sigma: float | None = None):
    """Per-frame h(r) (:func:`stabie_jax.observables.h_of_r`, paper's Gaussian smearing).

    Equal settings return the same function object, so repeated evaluations (baseline,
    StABlE model, temperatures) reuse one compiled accumulator.

    Returns:
      ``positions [..., N, 3] -> [..., n_bins]`` for ``frame_observables``.
    """
    sigma = observables.H_OF_R_SIGMA if sigma is None else sigma
    return h_of_r_kind.frame_function(float(r_max), int(n_bins), float(sigma))


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
    state, stopped_early = _run_chunks(
        chunk_fn, state, plan.n_chunks, stop_fraction, loop, checkpoint_every_seconds, on_chunk,
        progress, desc,
    )  # fmt: skip
    return _result(state, simulator, plan, stopped_early)


def _run_chunks(
    chunk_fn, state: EvalState, n_chunks: int, stop_fraction: float, loop,
    checkpoint_every_seconds: float, on_chunk, progress: bool, desc,
) -> tuple[EvalState, bool]:  # fmt: skip
    """Advance ``state`` chunk by chunk until ``n_chunks`` or ``stop_fraction``; log and
    checkpoint through ``loop`` (a :class:`~stabie_jax.run_loop.ResumableLoop` or None).
    Returns the final state and whether it stopped early."""
    bar = tqdm(
        total=n_chunks,
        initial=int(state.chunk),
        disable=not progress or loop is not None,
        unit="chunk",
        desc=desc,
    )
    saved = time.monotonic()
    try:
        while int(state.chunk) < n_chunks:
            if np.mean(state.unstable) >= stop_fraction:
                return state, True
            state = chunk_fn(state)
            f_unst = float(np.mean(state.unstable))
            if loop is not None:
                loop.log(
                    {"chunk": int(state.chunk), "unstable_fraction": f_unst}, f_unst=f"{f_unst:.2f}"
                )
                done = int(state.chunk) == n_chunks or f_unst >= stop_fraction
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
    return state, False


def median_improvement_replica(baseline: StabilityResult, trained: StabilityResult) -> int:
    """Replica whose stable-time improvement is the median one (paper section 3 observables).

    Both results must come from the same initial conditions (checked via the momenta).
    """
    if not np.array_equal(baseline.initial_momenta, trained.initial_momenta):
        raise ValueError("results are not paired: initial momenta differ (use the same key)")
    gain = trained.stable_time_ps - baseline.stable_time_ps
    order = np.argsort(gain, kind="stable")
    return int(order[(len(order) - 1) // 2])


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
