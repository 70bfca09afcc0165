"""Tests of stabie_jax.evaluation.metrics on analytic inputs and exact distributions."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toy_stabie import energy_fn, initial_positions

from stabie_jax import observables, units
from stabie_jax.evaluation import metrics
from stabie_jax.losses import LabelledFrames
from stabie_jax.models.potential import Potential

STIFF = {"log_k": jnp.log(jnp.float32(20.0))}


def test_h_of_r_errors_analytic():
    ref = np.full(100, 1.0)
    h = ref + np.where(np.arange(100) < 50, 0.2, -0.2)
    err = observables.h_of_r_errors(h, ref)
    assert err["mae"] == pytest.approx(0.2)
    assert err["l1"] == pytest.approx(0.2 * 100 / 100)


def test_vacf_mae_and_reference_vacf_of_harmonic_motion():
    t = np.arange(400) * 0.5  # fs
    omega = 2 * np.pi / 40.0
    phases = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    v = np.cos(omega * t[:, None] + phases[None])  # [T, N]
    v = np.stack([v, np.zeros_like(v), np.zeros_like(v)], -1)
    c = metrics.reference_vacf(v, window=50)
    np.testing.assert_allclose(c, np.cos(omega * t[:50]), atol=0.02)
    assert observables.vacf_mae(c, np.cos(omega * t[:50])) < 0.02
    assert observables.vacf_mae(np.ones(4), np.zeros(4)) == 1.0
    with pytest.raises(ValueError, match="lags differ"):
        observables.vacf_mae(np.ones(4), np.ones(5))


def test_velocities_from_positions_exact_for_quadratic():
    t = np.arange(10) * 2.0
    x = (3.0 * t + 0.5 * t**2)[:, None, None] * np.ones((1, 2, 3))
    v = metrics.velocities_from_positions(x, 2.0)
    np.testing.assert_allclose(v[:, 0, 0], 3.0 + t[1:-1])


def test_rdf_errors_analytic():
    ref = {"rdf_8_8": np.ones(10), "rdf_1_1": np.zeros(10)}
    g = {"rdf_8_8": np.full(10, 1.5), "rdf_1_1": np.full(10, 0.1)}
    err = observables.rdf_errors(g, ref, r_max=6.0)
    assert err["rdf_8_8"]["mae"] == pytest.approx(0.5)
    assert err["rdf_8_8"]["rdf_mae"] == pytest.approx(3.0)
    assert err["max_rdf_mae"] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="missing"):
        observables.rdf_errors({}, ref)
    # A model with no stable frame has NaN RDFs: NaN errors, no exception (jax_debug_nans is on
    # in the tests; this used to raise inside the water evaluation).
    none = observables.rdf_errors({k: np.full(10, np.nan) for k in ref}, ref, r_max=6.0)
    assert np.isnan(none["rdf_8_8"]["rdf_mae"]) and np.isnan(none["max_rdf_mae"])


def test_diffusivity_curve_and_unwrap():
    d_true = 2.3e-9  # m²/s
    lag_ps = np.arange(11) * 1.0
    msd = 6 * d_true / units.ANGSTROM2_PER_PS_IN_M2_PER_S * lag_ps
    curve = metrics.diffusivity_curve_m2_per_s(msd, lag_ps)
    assert np.isnan(curve[0])
    np.testing.assert_allclose(curve[1:], d_true)
    rng = np.random.default_rng(0)
    walk = np.cumsum(rng.normal(scale=0.5, size=(50, 4, 3)), 0)
    box = np.array([5.0, 6.0, 7.0])
    np.testing.assert_allclose(
        metrics.unwrap_positions(walk % box, box) - walk,
        np.broadcast_to((walk % box)[0] - walk[0], walk.shape),
        atol=1e-9,
    )
    lag, m, dcurve = metrics.reference_msd(walk, 1000.0, 5)
    np.testing.assert_allclose(lag, np.arange(6))
    assert m[0] == 0.0 and dcurve.shape == (6,)


def test_pareto_front_mask():
    force = [1.0, 2.0, 1.5, 3.0, 1.0]
    stable = [10.0, 30.0, 5.0, 30.0, 8.0]
    np.testing.assert_array_equal(
        metrics.pareto_front_mask(force, stable), [True, True, False, False, False]
    )


def test_qm_test_errors_known_offsets():
    def e_fn(params, r, neighbor=None):
        return energy_fn(params, r)

    pot = Potential(e_fn, None, None)
    rng = np.random.default_rng(1)
    pos = initial_positions(7) + rng.normal(scale=0.05, size=(7, 2, 3))
    e = np.array([float(e_fn(STIFF, jnp.asarray(p, jnp.float32))) for p in pos])
    f = -np.stack([np.asarray(jax.grad(e_fn, 1)(STIFF, jnp.asarray(p, jnp.float32))) for p in pos])
    signs = np.where(np.arange(7) % 2, 1.0, -1.0)
    frames = LabelledFrames(
        jnp.asarray(pos, jnp.float32), jnp.asarray(e + 0.1 * signs), jnp.asarray(f + 0.2)
    )
    out = metrics.qm_test_errors(pot, STIFF, frames, batch_size=3)
    assert out["n_frames"] == 7
    assert out["energy_mae_ev"] == pytest.approx(0.1, rel=1e-4)
    assert out["energy_mae_kcal_per_mol"] == pytest.approx(0.1 * units.EV_IN_KCAL_PER_MOL, rel=1e-4)
    assert out["forces_mae_ev_per_angstrom"] == pytest.approx(0.2, rel=1e-4)
    assert out["forces_rmse_ev_per_angstrom"] == pytest.approx(0.2, rel=1e-4)
    # predicted - reference = +0.1 on the four even frames, -0.1 on the three odd ones
    assert out["energy_mean_error_ev"] == pytest.approx(0.1 / 7, rel=1e-3)
    assert out["energy_mae_offset_removed_ev"] == pytest.approx(
        (4 * (0.1 - 0.1 / 7) + 3 * (0.1 + 0.1 / 7)) / 7, rel=1e-3
    )


def _maxwell_bin_probabilities(edges, scale):
    x = edges / scale
    cdf = [
        math.erf(v / math.sqrt(2)) - math.sqrt(2 / math.pi) * v * math.exp(-v * v / 2) for v in x
    ]
    return np.diff(cdf)


def test_reweighted_h_of_r_matches_exact_distribution_at_t2():
    """Zero-length harmonic bond: |d| is Maxwell distributed with scale sqrt(kT/k)."""
    k, t1, t2 = 4.0, 500.0, 350.0
    rng = np.random.default_rng(0)
    n = 40_000
    d = rng.normal(scale=math.sqrt(units.kT(t1) / k), size=(n, 3))
    pos = np.stack([np.zeros_like(d), d], 1)
    energies = 0.5 * k * np.sum(d**2, -1) - 17_000.0  # large offset, as in aspirin
    r_max, n_bins = 0.5, 50
    h, n_eff = observables.reweighted_h_of_r_reference(pos, energies, t1, t2, r_max, n_bins)
    assert h.sum() == pytest.approx(100.0)
    edges = np.linspace(observables.H_OF_R_MIN, r_max, n_bins + 1)
    p = _maxwell_bin_probabilities(edges, math.sqrt(units.kT(t2) / k))
    p[0] = 0.0
    exact = 100 * p / p.sum()
    assert np.abs(h - exact).sum() / 100 < 0.03
    h_unweighted = np.asarray(
        observables.h_of_r_reference(jnp.asarray(pos, jnp.float32), r_max, n_bins)
    )
    assert np.abs(h_unweighted - exact).sum() / 100 > 0.15  # the reweighting matters
    # T2 = T1: identical to the unweighted reference histogram.
    h_same, n_same = observables.reweighted_h_of_r_reference(pos, energies, t1, t1, r_max, n_bins)
    np.testing.assert_allclose(h_same, h_unweighted, atol=1e-4)
    assert n_same == pytest.approx(n, rel=1e-9)
    assert 1000 < n_eff < n


def test_effective_sample_size_decreases_away_from_t1():
    rng = np.random.default_rng(0)
    k = 4.0
    energies = (
        0.5
        * k
        * np.sum(rng.normal(scale=math.sqrt(units.kT(500.0) / k), size=(5000, 9, 3)) ** 2, (1, 2))
    )
    temps, n_eff = observables.effective_sample_size_vs_temperature(
        energies, 500.0, np.linspace(300, 800, 11)
    )
    i = int(np.argmax(n_eff))
    assert temps[i] == 500.0 and n_eff[i] == pytest.approx(5000, rel=1e-9)
    assert np.all(np.diff(n_eff[: i + 1]) > 0) and np.all(np.diff(n_eff[i:]) < 0)


def test_exported_by_the_evaluation_package():
    from stabie_jax import evaluation

    for name in metrics.__all__:
        assert getattr(evaluation, name) is getattr(metrics, name)


# ---------------------------------------------------------------------------------------------
# Paired stability comparison


def _hypergeometric_two_sided(a, b, c, d):
    """Fisher's exact p for [[a, b], [c, d]] from the hypergeometric law, written out."""
    from math import comb

    row1, col1, n = a + b, a + c, a + b + c + d

    def prob(x):
        return comb(col1, x) * comb(n - col1, row1 - x) / comb(n, row1)

    lo, hi = max(0, row1 + col1 - n), min(row1, col1)
    p_obs = prob(a)
    return sum(prob(x) for x in range(lo, hi + 1) if prob(x) <= p_obs * (1 + 1e-7))


def test_paired_stability_comparison_counts_and_exact_tests():
    from math import comb

    # 16 ICs, 5 ps: baseline fails 8, the other 2; the other lasts longer in 7 pairs, shorter in 1
    base = np.array([1.0, 2.0, 0.5, 3.0, 4.0, 1.5, 2.5, 4.5] + [5.0] * 8)
    base_c = np.array([False] * 8 + [True] * 8)
    other = np.array([5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 3.5, 4.0] + [5.0] * 8)
    other_c = np.array([True] * 6 + [False] * 2 + [True] * 8)
    c = metrics.paired_stability_comparison(base, base_c, other, other_c)
    assert (c["longer"], c["shorter"], c["tied"]) == (7, 1, 8)
    assert (c["failed_baseline"], c["failed_other"]) == (8, 2)
    np.testing.assert_allclose(c["fisher_p"], _hypergeometric_two_sided(8, 8, 2, 14), rtol=1e-9)
    np.testing.assert_allclose(c["fisher_p"], 0.0537, atol=5e-4)
    sign = 2 * sum(comb(8, k) for k in range(0, 2)) / 2**8  # two-sided, 1 of 8 shorter
    np.testing.assert_allclose(c["sign_test_p"], sign, rtol=1e-9)
    # differences 4, 3, 4.5, 2, 1, 3.5, 1, -0.5 (tied |d| -> normal approximation): W- = 1
    assert c["wilcoxon_p"] is not None and c["wilcoxon_p"] < 0.05
    # all positive, n = 5, no ties: exact two-sided p = 2 / 2^5
    c5 = metrics.paired_stability_comparison(
        np.arange(1.0, 6.0),
        np.zeros(5, bool),
        np.arange(1.0, 6.0) + np.arange(1, 6) * 0.1,
        np.zeros(5, bool),
    )
    np.testing.assert_allclose(c5["wilcoxon_p"], 2 / 2**5, rtol=1e-9)
    # identical models: everything tied, no test defined, Fisher p = 1
    same = metrics.paired_stability_comparison(base, base_c, base, base_c)
    assert same["tied"] == 16 and same["wilcoxon_p"] is None and same["fisher_p"] == 1.0
    with pytest.raises(ValueError, match="four"):
        metrics.paired_stability_comparison(base, base_c, other[:3], other_c[:3])
