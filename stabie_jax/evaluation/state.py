"""What a stability evaluation carries and returns: the resumable :class:`EvalState` (a pytree
of arrays), the :class:`StabilityResult` and the :class:`TemperatureTransferResult`."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from stabie_jax.md import ReplicaState

__all__ = [
    "EvalState",
    "StabilityResult",
    "TemperatureTransferResult",
]


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
