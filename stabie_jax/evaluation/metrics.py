"""Evaluation metrics: observable errors, diffusivity, test-set errors, reweighted references.

Pure functions of arrays that score an evaluation (:mod:`stabie_jax.evaluation`) against
reference data; all are re-exported by :mod:`stabie_jax.evaluation`.

* structure: :func:`h_of_r_errors` (mean |Δh| and the integrated L1 distance), :func:`rdf_errors`
  (the authors' RDF-MAE ``r_max·mean|Δg|`` per element pair);
* dynamics: :func:`vacf_mae`, :func:`reference_vacf`, :func:`velocities_from_positions`
  (the authors' finite-difference reference velocities), :func:`reference_msd`,
  :func:`diffusivity_curve_m2_per_s` (``MSD/(6t)`` in m²/s), :func:`unwrap_positions`;
* accuracy: :func:`qm_test_errors` (energy/force MAE and RMSE, eV and kcal/mol);
* hyperparameter sweeps: :func:`pareto_front_mask`;
* stability of two models from the same initial conditions: :func:`paired_stability_comparison`
  (pairs longer/shorter/tied, Wilcoxon signed-rank, sign test, Fisher's exact test on the
  failure counts);
* temperature transfer (docs/method.md, Temperature transfer and N_eff):
  :func:`reweighted_h_of_r_reference` and :func:`effective_sample_size_vs_temperature`,
  Boltzmann reweighting with the *potential* energy (see that function for why the kinetic
  energy is left out).

Units: Å, eV, ps/fs as named; diffusivities in m²/s.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from stabie_jax import observables, reweighting, units
from stabie_jax.losses import LabelledFrames, qm_errors

VACF_WINDOW = 100
"""VACF lags (authors: 100-step window)."""

__all__ = [
    "h_of_r_reference_at",
    "VACF_WINDOW",
    "diffusivity_curve_m2_per_s",
    "effective_sample_size_vs_temperature",
    "h_of_r_errors",
    "paired_stability_comparison",
    "pareto_front_mask",
    "qm_test_errors",
    "rdf_errors",
    "reference_msd",
    "reference_vacf",
    "reweighted_h_of_r_reference",
    "unwrap_positions",
    "vacf_mae",
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


def h_of_r_errors(h, h_ref) -> dict:
    """Errors of an h(r) (sum-100 normalisation) against the reference on the same grid.

    Returns:
      ``{"mae": mean_bins |Δh|, "l1": Σ|Δh|/100}``; ``l1`` is the integrated absolute
      difference ``∫|p − p_ref| dr`` of the two probability densities (0..2, MDsim's h(r)
      error). NaN if ``h`` is NaN (no stable frames).
    """
    d = np.abs(np.asarray(h, np.float64) - np.asarray(h_ref, np.float64))
    if d.shape[-1] != np.asarray(h_ref).shape[-1]:
        raise ValueError(f"h(r) grids differ: {np.shape(h)} vs {np.shape(h_ref)}")
    return {"mae": float(np.mean(d)), "l1": float(np.sum(d) / 100.0)}


def vacf_mae(vacf, vacf_ref) -> float:
    """``mean_lags |C − C_ref|`` of two normalised VACFs on the same lags (dimensionless)."""
    a, b = np.asarray(vacf, np.float64), np.asarray(vacf_ref, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"VACF lags differ: {a.shape} vs {b.shape}; record the same window")
    return float(np.mean(np.abs(a - b)))


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


def rdf_errors(rdfs: Mapping, reference: Mapping, r_max: float = 6.0) -> dict:
    """Per-pair RDF errors: ``{name: {"mae": mean|Δg|, "rdf_mae": r_max·mean|Δg|}}``.

    ``rdf_mae`` is the authors' water stability metric (threshold 3.0, the formula of
    :func:`stabie_jax.stability.rdf_mae`, here on the host in float64); ``"max_rdf_mae"`` is
    the worst pair. All NaN when the model had no stable frames (its RDFs are NaN).
    """
    out = {}
    for name, ref in reference.items():
        if name not in rdfs:
            raise ValueError(f"rdf_errors: {name!r} missing from the simulated RDFs {list(rdfs)}")
        g, ref = np.asarray(rdfs[name], np.float64), np.asarray(ref, np.float64)
        mae = float(np.mean(np.abs(g - ref)))
        out[name] = {"mae": mae, "rdf_mae": r_max * mae}
    values = [v["rdf_mae"] for v in out.values()]
    out["max_rdf_mae"] = float("nan") if np.any(np.isnan(values)) else max(values)
    return out


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


def h_of_r_reference_at(
    positions,
    potential_energies,
    temperature_kelvin: float,
    reference_temperature_kelvin: float | None,
    *,
    r_max: float,
    n_bins: int,
) -> np.ndarray:
    """``[n_bins]`` reference h(r) at ``temperature_kelvin`` (sums to 100).

    The frames are canonical samples at ``reference_temperature_kelvin`` (MD17: the 500 K AIMD
    run). At that temperature (or when it is ``None``) this is the plain histogram
    :func:`stabie_jax.observables.h_of_r_reference`; at another temperature the frames are
    Boltzmann-reweighted with their energies (:func:`reweighted_h_of_r_reference`), and the
    effective sample size is logged.

    Args:
      positions: ``[F, N, 3]`` Å.
      potential_energies: ``[F]`` eV (used only when reweighting).
      temperature_kelvin: where the h(r) is wanted, K.
      reference_temperature_kelvin: where the frames were sampled, K, or ``None``.
      r_max, n_bins: h(r) grid (Å, count).
    """
    positions = np.asarray(positions)
    if reference_temperature_kelvin is None or np.isclose(
        float(reference_temperature_kelvin), float(temperature_kelvin)
    ):
        return np.asarray(
            observables.h_of_r_reference(jnp.asarray(positions), r_max=r_max, n_bins=n_bins)
        )
    h_ref, n_eff = reweighted_h_of_r_reference(
        positions,
        np.asarray(potential_energies),
        float(reference_temperature_kelvin),
        float(temperature_kelvin),
        r_max=r_max,
        n_bins=n_bins,
    )
    logging.info(
        "h(r) reference reweighted %g K -> %g K (N_eff = %.0f of %d frames)",
        reference_temperature_kelvin,
        temperature_kelvin,
        n_eff,
        positions.shape[0],
    )
    return np.asarray(h_ref)


def reweighted_h_of_r_reference(
    positions,
    potential_energies,
    temperature_from_kelvin: float,
    temperature_to_kelvin: float,
    r_max: float = 10.0,
    n_bins: int = 500,
    frame_batch: int = 1000,
) -> tuple[np.ndarray, float]:
    """Reference h(r) at another temperature by Boltzmann reweighting of canonical samples.

    Each frame's pair-distance histogram (the grid of
    :func:`stabie_jax.observables.h_of_r_reference`, bin 0 zeroed) enters with the weight
    ``w_i ∝ exp(−U_i (1/kT₂ − 1/kT₁))`` (:mod:`stabie_jax.reweighting`); the result is normalised
    to sum 100. With ``T₂ = T₁`` it equals the unweighted reference.

    **H is the potential energy only.** h(r) depends on positions alone, and in the canonical
    ensemble momenta are independent of positions with a Maxwell–Boltzmann factor that
    integrates out of the ratio exactly, so weighting by ``U`` gives the exact configurational
    expectation at T₂; adding kinetic energies (which MD17 frames do not even carry) would only
    add variance (smaller N_eff). The samples must be canonical at T₁ under the reference
    potential whose energies are given (e.g. the 500 K AIMD training split).

    Args:
      positions: ``[F, N, 3]`` Å.
      potential_energies: ``[F]`` eV (reference energies of the same frames).
      temperature_from_kelvin: T₁, K (500 for aspirin).
      temperature_to_kelvin: T₂, K.
      r_max, n_bins: h(r) grid.
      frame_batch: frames per distance batch (memory).

    Returns:
      ``(h [n_bins] summing to 100, n_eff)``.
    """
    x = np.asarray(positions)
    e = np.asarray(potential_energies, np.float64)
    if e.shape != (x.shape[0],):
        raise ValueError(f"need one energy per frame: {e.shape} vs {x.shape[0]} frames")
    log_w = _log_weights(e, temperature_from_kelvin, temperature_to_kelvin)
    w = np.exp(log_w)
    edges = np.linspace(observables.H_OF_R_MIN, r_max, n_bins + 1)
    counts = np.zeros(n_bins)
    for start in range(0, x.shape[0], frame_batch):
        d = np.asarray(observables.pair_distances(jnp.asarray(x[start : start + frame_batch])))
        ww = np.broadcast_to(w[start : start + frame_batch, None], d.shape)
        counts += np.histogram(d.reshape(-1), bins=edges, weights=ww.reshape(-1))[0]
    counts[0] = 0.0
    return 100.0 * counts / counts.sum(), _effective_sample_size(log_w)


def _log_weights(energies, t_from, t_to) -> np.ndarray:
    """Normalised log weights (float64 host copy of :mod:`stabie_jax.reweighting`)."""
    e = np.asarray(energies, np.float64)
    ok = np.isfinite(e)
    shifted = np.where(ok, e - e[ok].mean(), 0.0)
    with jax.enable_x64(True):
        lw = reweighting.log_reweighting_weights(
            jnp.asarray(shifted),
            units.kT(float(t_from)),
            units.kT(float(t_to)),
            mask=jnp.asarray(ok),
        )
        return np.asarray(lw, np.float64)


def _effective_sample_size(log_weights: np.ndarray) -> float:
    """:func:`stabie_jax.reweighting.effective_sample_size` of host float64 log weights, computed
    in float64 (the evaluation's numbers are float64)."""
    with jax.enable_x64(True):
        return float(reweighting.effective_sample_size(jnp.asarray(log_weights, jnp.float64)))


def effective_sample_size_vs_temperature(
    potential_energies, temperature_kelvin: float, temperatures_kelvin
) -> tuple[np.ndarray, np.ndarray]:
    """N_eff of reweighting samples from T₁ to each temperature (the paper's Fig. 8).

    See docs/method.md, Temperature transfer and N_eff.

    Args:
      potential_energies: ``[F]`` eV at T₁ (potential only; see
        :func:`reweighted_h_of_r_reference`).
      temperature_kelvin: T₁, K.
      temperatures_kelvin: ``[T]`` target temperatures, K.

    Returns:
      ``(temperatures [T] K, n_eff [T])``; ``n_eff`` is ``F`` at T₁ and decreases away from it.
    """
    temps = np.asarray(temperatures_kelvin, np.float64).reshape(-1)
    n_eff = np.array(
        [
            _effective_sample_size(_log_weights(potential_energies, temperature_kelvin, t))
            for t in temps
        ]
    )
    return temps, n_eff
