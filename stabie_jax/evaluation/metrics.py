"""Evaluation metrics: diffusivity, dynamics references, test-set errors, paired statistics.

Pure functions of arrays that score an evaluation (:mod:`stabie_jax.evaluation`) against
reference data; all are re-exported by :mod:`stabie_jax.evaluation`, together with the
observable errors and reference observables of :mod:`stabie_jax.observables`.

* dynamics: :func:`reference_vacf`, :func:`velocities_from_positions` (the authors'
  finite-difference reference velocities), :func:`reference_msd`,
  :func:`diffusivity_curve_m2_per_s` (``MSD/(6t)`` in m²/s), :func:`unwrap_positions`;
* accuracy: :func:`qm_test_errors` (energy/force MAE and RMSE, eV and kcal/mol);
* hyperparameter sweeps: :func:`pareto_front_mask`;
* stability of two models from the same initial conditions: :func:`paired_stability_comparison`
  (pairs longer/shorter/tied, Wilcoxon signed-rank, sign test, Fisher's exact test on the
  failure counts).

Units: Å, eV, ps/fs as named; diffusivities in m²/s.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from stabie_jax import observables, units
from stabie_jax.losses import LabelledFrames, qm_errors

VACF_WINDOW = 100
"""VACF lags (authors: 100-step window)."""

__all__ = [
    "VACF_WINDOW",
    "diffusivity_curve_m2_per_s",
    "paired_stability_comparison",
    "pareto_front_mask",
    "qm_test_errors",
    "reference_msd",
    "reference_vacf",
    "unwrap_positions",
    "velocities_from_positions",
]


def diffusivity_curve_m2_per_s(msd, lag_ps):
    """Running diffusivity estimate ``MSD(t)/(6 t)`` in m²/s (NaN at ``t = 0``).

    Args:
      msd: ``[..., L]`` Å².
      lag_ps: ``[L]`` ps.

    Returns:
      ``[..., L]`` m²/s; the authors report the value at the last lag (×10 → 10⁻⁹ m²/s).
    """
    lag_ps = np.asarray(lag_ps, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.asarray(msd, np.float64) / (6.0 * np.where(lag_ps > 0, lag_ps, np.nan))
    return d * units.ANGSTROM2_PER_PS_IN_M2_PER_S


def reference_msd(positions, frame_interval_fs: float, max_lag: int, masses=None, atom_mask=None):
    """MSD and ``MSD/(6t)`` of a reference trajectory (e.g. contiguous water frames).

    Args:
      positions: ``[T, N, 3]`` Å, *unwrapped* (see :func:`unwrap_positions`).
      frame_interval_fs: time between frames, fs.
      max_lag: largest lag in frames (authors: 100 frames of 1 ps).
      masses: ``[N]`` amu for the centre of mass (removed).
      atom_mask: ``[N]`` bool atoms averaged (oxygens).

    Returns:
      ``(lag_ps [L+1], msd [L+1] Å², diffusivity [L+1] m²/s)``.
    """
    msd = np.asarray(
        observables.mean_squared_displacement(
            jnp.asarray(positions), max_lag, masses=masses, atom_mask=atom_mask
        ),
        np.float64,
    )
    lag_ps = np.arange(max_lag + 1) * frame_interval_fs / 1000.0
    return lag_ps, msd, diffusivity_curve_m2_per_s(msd, lag_ps)


def unwrap_positions(positions, box) -> np.ndarray:
    """Undo periodic wrapping: accumulate minimum-image steps between consecutive frames.

    Args:
      positions: ``[T, N, 3]`` Å, wrapped into an orthorhombic box (frames close enough that
        no atom moves more than half a box between them).
      box: ``[3]`` or scalar side lengths, Å.

    Returns:
      ``[T, N, 3]`` Å unwrapped, frame 0 unchanged.
    """
    x = np.asarray(positions, np.float64)
    box = np.broadcast_to(np.asarray(box, np.float64), (3,))
    step = np.diff(x, axis=0)
    step -= box * np.round(step / box)
    return np.concatenate([x[:1], x[:1] + np.cumsum(step, axis=0)], axis=0)


def velocities_from_positions(positions, frame_interval_fs: float) -> np.ndarray:
    """Central finite-difference velocities (authors' reference VACF from positions).

    Args:
      positions: ``[T, N, 3]`` Å, consecutive frames.
      frame_interval_fs: fs.

    Returns:
      ``[T−2, N, 3]`` Å/fs (VACF normalisation makes the unit irrelevant).
    """
    x = np.asarray(positions, np.float64)
    return (x[2:] - x[:-2]) / (2.0 * frame_interval_fs)


def reference_vacf(velocities, window: int = VACF_WINDOW) -> np.ndarray:
    """Normalised VACF of one reference trajectory ``[T, N, 3]`` (origins averaged), ``[W]``."""
    return np.asarray(observables.vacf(jnp.asarray(velocities), window), np.float64)


def qm_test_errors(potential, params, frames: LabelledFrames, batch_size: int = 100) -> dict:
    """Energy and force MAE on held-out frames, eV and kcal/mol.

    Args:
      potential: :class:`stabie_jax.models.potential.Potential`.
      params: model parameters.
      frames: :class:`LabelledFrames` (test split).
      batch_size: frames per jitted batch (the last batch is padded and masked).

    Returns:
      ``{"energy_mae_ev", "energy_mae_kcal_per_mol", "forces_mae_ev_per_angstrom",
      "forces_mae_kcal_per_mol_per_angstrom", "energy_rmse_ev", "forces_rmse_ev_per_angstrom",
      "energy_mean_error_ev", "energy_mae_offset_removed_ev", "n_frames"}``; force errors are over
      Cartesian components. ``energy_mean_error_ev`` is the signed bias (predicted − reference);
      ``energy_mae_offset_removed_ev`` the MAE after subtracting it, i.e. the part of the energy
      error that a constant shift of U (which changes neither forces nor the Boltzmann
      distribution) cannot remove.
    """
    n = int(frames.positions.shape[0])
    if n == 0:
        raise ValueError("qm_test_errors: no frames")
    batch_size = min(int(batch_size), n)
    fn = jax.jit(lambda p, f: qm_errors(potential, p, f))
    e_abs = e_sq = f_abs = f_sq = 0.0
    n_comp = 0
    energy_errors = []
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size)
        valid = idx < n
        idx = np.where(valid, idx, n - 1)
        batch = jax.tree_util.tree_map(lambda x, i=idx: jnp.asarray(np.asarray(x)[i]), frames)
        err = jax.device_get(fn(params, batch))
        de = np.asarray(err.energy, np.float64)[valid]
        df = np.asarray(err.forces, np.float64)[valid]
        energy_errors.append(de)
        e_abs += np.abs(de).sum()
        e_sq += (de**2).sum()
        f_abs += np.abs(df).sum()
        f_sq += (df**2).sum()
        n_comp += df.size
    e_mae, f_mae = e_abs / n, f_abs / n_comp
    de = np.concatenate(energy_errors)
    bias = float(de.mean())
    return {
        "energy_mae_ev": float(e_mae),
        "energy_mae_kcal_per_mol": float(units.ev_to_kcal_per_mol(e_mae)),
        "forces_mae_ev_per_angstrom": float(f_mae),
        "forces_mae_kcal_per_mol_per_angstrom": float(units.ev_to_kcal_per_mol(f_mae)),
        "energy_rmse_ev": float(np.sqrt(e_sq / n)),
        "forces_rmse_ev_per_angstrom": float(np.sqrt(f_sq / n_comp)),
        "energy_mean_error_ev": bias,
        "energy_mae_offset_removed_ev": float(np.abs(de - bias).mean()),
        "n_frames": n,
    }


def pareto_front_mask(force_mae, stable_time) -> np.ndarray:
    """``[P]`` bool: points not dominated (lower force MAE *and* longer stable time).

    A point is dominated when another is at least as good in both and better in one.
    """
    x = np.asarray(force_mae, np.float64)
    y = np.asarray(stable_time, np.float64)
    better_eq = (x[None, :] <= x[:, None]) & (y[None, :] >= y[:, None])
    strictly = (x[None, :] < x[:, None]) | (y[None, :] > y[:, None])
    return ~np.any(better_eq & strictly, axis=1)


def paired_stability_comparison(baseline_ps, baseline_censored, other_ps, other_censored) -> dict:
    """Compare two models' stable times replica by replica (same initial conditions).

    A pair is *tied* when both replicas outlived the run (both censored) or the times are equal;
    a censored replica counts as longer than any failure shorter than the run. Tests
    (two-sided): Wilcoxon signed-rank on the paired differences of the non-tied pairs (exact
    for small samples; a censored time enters at the run length, which understates a gain), the
    exact sign test on longer vs shorter, and Fisher's exact test on the numbers of replicas
    that failed within the run.

    Args:
      baseline_ps, other_ps: ``[R]`` stable times, ps.
      baseline_censored, other_censored: ``[R]`` bool, True where the replica never failed.

    Returns:
      dict with ``n_pairs``, ``longer``, ``shorter``, ``tied`` (of ``other`` vs the baseline),
      ``failed_baseline``, ``failed_other``, ``wilcoxon_p``, ``sign_test_p``, ``fisher_p``,
      ``median_difference_ps`` (over all pairs). p-values are None when undefined (no
      non-tied pair).

    Examples:
      >>> c = paired_stability_comparison([1.0, 2.0, 5.0], [False, False, True],
      ...                                 [3.0, 5.0, 5.0], [False, True, True])
      >>> c["longer"], c["shorter"], c["tied"], c["failed_baseline"], c["failed_other"]
      (2, 0, 1, 2, 1)
    """
    b, o = np.asarray(baseline_ps, np.float64), np.asarray(other_ps, np.float64)
    bc, oc = np.asarray(baseline_censored, bool), np.asarray(other_censored, bool)
    if not (b.shape == o.shape == bc.shape == oc.shape) or b.ndim != 1:
        raise ValueError(
            f"paired_stability_comparison: need four [R] arrays, got {b.shape}, {bc.shape}, "
            f"{o.shape}, {oc.shape}"
        )
    diff = np.where(bc & oc, 0.0, o - b)
    longer, shorter = int(np.sum(diff > 0)), int(np.sum(diff < 0))
    n = len(b)
    failed_b, failed_o = int(np.sum(~bc)), int(np.sum(~oc))
    nonzero = diff[diff != 0]
    wilcoxon_p = sign_p = None
    if nonzero.size:
        wilcoxon_p = float(stats.wilcoxon(nonzero, alternative="two-sided").pvalue)
        sign_p = float(stats.binomtest(longer, longer + shorter, 0.5).pvalue)
    fisher_p = float(stats.fisher_exact([[failed_b, n - failed_b], [failed_o, n - failed_o]])[1])
    return {
        "n_pairs": n,
        "longer": longer,
        "shorter": shorter,
        "tied": n - longer - shorter,
        "failed_baseline": failed_b,
        "failed_other": failed_o,
        "wilcoxon_p": wilcoxon_p,
        "sign_test_p": sign_p,
        "fisher_p": fisher_p,
        "median_difference_ps": float(np.median(diff)) if n else None,
    }
