"""Temperature reweighting: Gaussian targets, effective sample size, temperature range."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stabie_jax import reweighting as rw
from stabie_jax import units

K_SPRING = 2.0  # eV/Å²
KT1 = 0.05  # eV


def _kl_gaussian(ratio, dims=1):
    """KL(N(0, r·s²) ‖ N(0, s²)) per the d independent Gaussian degrees of freedom."""
    return dims * (-0.5 * np.log(ratio) + 0.5 * ratio - 0.5)


def _samples(n, dims, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, np.sqrt(KT1 / K_SPRING), (n, dims))
    return x, 0.5 * K_SPRING * np.sum(x**2, axis=1)


@pytest.mark.parametrize("ratio", [0.8, 1.25])
def test_reweighting_recovers_gaussian_at_new_temperature(ratio):
    with jax.enable_x64(True):
        x, u = _samples(200_000, 1)
        kt2 = KT1 * ratio
        log_w = rw.log_reweighting_weights(u, KT1, kt2)
        w = jnp.exp(log_w)
        np.testing.assert_allclose(jnp.sum(w), 1.0, rtol=1e-12)
        n_eff = float(rw.effective_sample_size(log_w))
        moments = rw.reweighted_average(np.stack([x[:, 0] ** 2, x[:, 0] ** 4], axis=1), w)
    var2 = kt2 / K_SPRING
    exact = np.array([var2, 3.0 * var2**2])
    # Standard errors from the target-temperature variances of x² and x⁴ and N_eff.
    se = np.sqrt(np.array([2.0 * var2**2, 96.0 * var2**4]) / n_eff)
    np.testing.assert_array_less(np.abs(np.asarray(moments) - exact), 4.0 * se)
    # Without reweighting the T1 moments are off by many standard errors: the test has power.
    assert abs(np.mean(x[:, 0] ** 2) - var2) > 10.0 * se[0]


def test_effective_sample_size_is_n_at_t1_and_follows_kl():
    with jax.enable_x64(True):
        n, dims = 100_000, 3
        _, u = _samples(n, dims, seed=1)
        ratios = np.array([0.6, 0.75, 0.9, 1.0, 1.1, 1.3, 1.6])
        n_eff = np.asarray(rw.effective_sample_size_curve(u, KT1, KT1 * ratios))
    np.testing.assert_allclose(n_eff[3], n, rtol=1e-10)
    # Monotone decrease away from T1 on both sides.
    assert np.all(np.diff(n_eff[:4]) > 0) and np.all(np.diff(n_eff[3:]) < 0)
    # Large-N limit N_eff → N·exp(-KL(P_T2 ‖ P_T1)).
    np.testing.assert_allclose(n_eff / n, np.exp(-_kl_gaussian(ratios, dims)), rtol=0.03)


def test_kinetic_energies_enter_total_energy_weights():
    with jax.enable_x64(True):
        n = 100_000
        x, u = _samples(n, 1, seed=2)
        p = np.random.default_rng(3).normal(0.0, np.sqrt(KT1), n)  # mass 1 amu
        kinetic = 0.5 * p**2
        kt2 = 1.3 * KT1
        log_w_u = rw.log_reweighting_weights(u, KT1, kt2)
        log_w_h = rw.log_reweighting_weights(u, KT1, kt2, kinetic_energies=kinetic)
        n_u = float(rw.effective_sample_size(log_w_u))
        n_h = float(rw.effective_sample_size(log_w_h))
        p2 = float(rw.reweighted_average(p**2, jnp.exp(log_w_h)))
    # Total energy: twice the KL (two quadratic degrees of freedom) and momenta reweighted too.
    np.testing.assert_allclose(n_u / n, np.exp(-_kl_gaussian(1.3)), rtol=0.02)
    np.testing.assert_allclose(n_h / n, np.exp(-_kl_gaussian(1.3, 2)), rtol=0.02)
    assert abs(p2 - kt2) < 4.0 * np.sqrt(2.0 * kt2**2 / n_h)


def test_masked_and_nonfinite_energies_are_excluded():
    with jax.enable_x64(True):
        x, u = _samples(1000, 2, seed=4)
        bad = u.copy()
        bad[[3, 10]] = np.nan
        mask = np.ones(1000, bool)
        mask[20] = False
        keep = np.isfinite(bad) & mask
        log_w = rw.log_reweighting_weights(bad, KT1, 1.2 * KT1, mask=mask)
        ref = rw.log_reweighting_weights(u[keep], KT1, 1.2 * KT1)
        assert np.all(np.isneginf(np.asarray(log_w)[~keep]))
        np.testing.assert_allclose(np.asarray(log_w)[keep], ref, rtol=1e-12)
        np.testing.assert_allclose(
            rw.effective_sample_size(log_w), rw.effective_sample_size(ref), rtol=1e-12
        )
        obs = x[:, 0].copy()
        obs[3] = np.nan  # an excluded sample's observable may be NaN
        avg = rw.reweighted_average(jax.device_put(obs), jnp.exp(log_w))
        np.testing.assert_allclose(avg, jnp.sum(jnp.exp(ref) * x[keep, 0]), rtol=1e-12)


def test_temperature_range_matches_analytic_kl_boundary():
    """60 Gaussian degrees of freedom at 500 K: N_eff ≥ threshold where N·exp(-KL) ≥ threshold."""
    n, dims, threshold = 20_000, 60, 5000.0
    t1 = 500.0
    rng = np.random.default_rng(5)
    x = rng.normal(0.0, np.sqrt(units.kT(t1) / K_SPRING), (n, dims))
    # Absolute energies like aspirin's (≈ -17 638 eV): only differences may matter.
    u = -17638.0 + 0.5 * K_SPRING * np.sum(x**2, axis=1)
    grid = np.arange(300.0, 800.0, 5.0)
    t_low, t_high, n_eff = rw.temperature_range(u, t1, grid, threshold=threshold)
    ratios = np.linspace(0.3, 2.0, 20_001)
    ok = n * np.exp(-_kl_gaussian(ratios, dims)) >= threshold
    exact_low, exact_high = t1 * ratios[ok].min(), t1 * ratios[ok].max()
    # Finite N overestimates N_eff slightly when extrapolating upwards (tails not sampled).
    assert abs(t_low - exact_low) < 10.0 and abs(t_high - exact_high) < 12.0
    # Independent float64 numpy evaluation of N_eff on the grid.
    beta_diff = 1.0 / units.kT(grid)[:, None] - 1.0 / units.kT(t1)
    log_w = -(u - u.mean())[None, :] * beta_diff
    log_w -= np.log(np.sum(np.exp(log_w - log_w.max(1, keepdims=True)), 1))[:, None] + log_w.max(
        1, keepdims=True
    )
    np.testing.assert_allclose(n_eff, np.exp(-np.sum(np.exp(log_w) * log_w, 1)), rtol=2e-3)
    assert t_low < t1 < t_high and n_eff.shape == grid.shape
    assert np.all(n_eff[(grid >= t_low) & (grid <= t_high)] >= threshold)
    with pytest.raises(ValueError, match="threshold"):
        rw.temperature_range(u[:4000], t1, grid, threshold=threshold)
    with pytest.raises(ValueError, match="increasing"):
        rw.temperature_range(u, t1, grid[::-1])
