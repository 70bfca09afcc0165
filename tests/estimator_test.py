"""Boltzmann estimators (global, localized, authors' scale): analytic, quadrature, cross-route
and masking checks, and the re-exports of :mod:`stabie_jax.estimator`."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from stabie_jax import estimator as est
from stabie_jax import hyperparameters as hp
from stabie_jax import localized_estimator as loc
from stabie_jax import units


def assert_trees_close(actual, expected, rtol):
    """Leaf-wise ``|a - e| <= rtol * (|e| + max_tree |e|)``: zero-gradient leaves (a bias that
    shifts every energy equally) are compared at the scale of the whole gradient."""
    a_leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(actual)]
    e_leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(expected)]
    assert len(a_leaves) == len(e_leaves)
    scale = max(float(np.max(np.abs(e))) for e in e_leaves)
    assert scale > 0
    for a, e in zip(a_leaves, e_leaves, strict=True):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * scale)


# ---------------------------------------------------------------------------------------------
# (a) 1-D harmonic oscillator U = θx²/2, x ~ N(0, kT/θ): d⟨x²⟩/dθ = -kT/θ².

KT = 0.6
THETA = 1.7


def _harmonic_energy(params, x):
    return 0.5 * params["theta"] * x**2


def _square(x):
    return jnp.stack([x**2])


def _harmonic_samples(key, shape):
    return jax.random.normal(key, shape, dtype=jnp.float64) * jnp.sqrt(KT / THETA)


def test_harmonic_large_n_matches_analytic_within_statistical_error():
    with jax.enable_x64(True):
        x = _harmonic_samples(jax.random.key(0), (400_000,))
        jac = est.boltzmann_jacobian(_harmonic_energy, _square, KT)({"theta": THETA}, x)
        value = float(jac["theta"][0])
        # Standard error of -Cov(x², x²/2)/kT from the per-sample products.
        g, u = x**2, 0.5 * x**2
        prod = (g - g.mean()) * (u - u.mean()) / KT
        se = float(jnp.std(prod) / jnp.sqrt(x.size))
    exact = -KT / THETA**2
    assert jac["theta"].shape == (1,)
    assert se < 0.02 * abs(exact)
    assert abs(value - exact) < 4.0 * se


def test_harmonic_small_n_estimator_is_unbiased_and_authors_scale_is_not():
    """Mean over 20 000 seeds of N = 5 estimates: unbiased only with the N/(N-1) factor."""
    n, seeds = 5, 20_000
    with jax.enable_x64(True):
        xs = _harmonic_samples(jax.random.key(1), (seeds, n))
        jac_fn = est.boltzmann_jacobian(_harmonic_energy, _square, KT)
        values = jax.vmap(lambda x: jac_fn({"theta": THETA}, x)["theta"][0])(xs)
        values = np.asarray(values)
    exact = -KT / THETA**2
    se = values.std(ddof=1) / np.sqrt(seeds)
    z = (values.mean() - exact) / se
    assert abs(z) < 4.0
    # Dropping N/(N-1) biases by a factor (N-1)/N = 0.8: that must be resolvable here.
    z_biased = (values.mean() * (n - 1) / n - exact) / (se * (n - 1) / n)
    assert abs(z_biased) > 6.0


def test_harmonic_minibatched_estimator_is_unbiased_with_remainder_batch():
    """N = 22, B = 5: four full batches and a remainder batch of 2, all unbiased."""
    n, seeds = 22, 10_000
    with jax.enable_x64(True):
        xs = _harmonic_samples(jax.random.key(2), (seeds, n))
        jac_fn = est.boltzmann_jacobian(_harmonic_energy, _square, KT, batch_size=5)
        values = np.asarray(jax.vmap(lambda x: jac_fn({"theta": THETA}, x)["theta"][0])(xs))
    exact = -KT / THETA**2
    z = (values.mean() - exact) / (values.std(ddof=1) / np.sqrt(seeds))
    assert abs(z) < 4.0


# ---------------------------------------------------------------------------------------------
# (b) double well U = a(x²-1)² + b·x: ⟨g⟩(a, b) by quadrature, derivative by finite differences.

DW_KT = 0.5
DW_PARAMS = {"a": 1.2, "b": 0.3}
GRID = np.linspace(-3.0, 3.0, 60_001)


def _dw_energy(params, x):
    return params["a"] * (x**2 - 1.0) ** 2 + params["b"] * x


def _dw_observable(x):
    return jnp.stack([x, x**2, jnp.tanh(2.0 * x)])


def _dw_quadrature(a, b):
    u = a * (GRID**2 - 1.0) ** 2 + b * GRID
    p = np.exp(-(u - u.min()) / DW_KT)
    p /= p.sum()
    g = np.stack([GRID, GRID**2, np.tanh(2.0 * GRID)])
    return (g * p).sum(axis=1), p


def test_double_well_matches_quadrature_finite_differences():
    h = 1e-5
    fd = {}
    for name in ("a", "b"):
        plus, minus = dict(DW_PARAMS), dict(DW_PARAMS)
        plus[name] += h
        minus[name] -= h
        fd[name] = (_dw_quadrature(**plus)[0] - _dw_quadrature(**minus)[0]) / (2 * h)

    # Exact samples by inverse CDF of the grid density (linear within cells).
    _, p = _dw_quadrature(**DW_PARAMS)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]))])
    cdf /= cdf[-1]
    uniform = np.random.default_rng(7).uniform(size=400_000)
    x_np = np.interp(uniform, cdf, GRID)

    with jax.enable_x64(True):
        x = jnp.asarray(x_np)
        params = {k: jnp.float64(v) for k, v in DW_PARAMS.items()}
        jac = est.boltzmann_jacobian(_dw_energy, _dw_observable, DW_KT)(params, x)
        g = np.asarray(jax.vmap(_dw_observable)(x))
    du = {"a": (x_np**2 - 1.0) ** 2, "b": x_np}
    for name in ("a", "b"):
        prod = (g - g.mean(0)) * (du[name] - du[name].mean())[:, None] / DW_KT
        se = prod.std(axis=0) / np.sqrt(x_np.size)
        assert np.all(se < 0.05 * np.abs(fd[name]) + 1e-12), (name, se, fd[name])
        np.testing.assert_array_less(np.abs(np.asarray(jac[name]) - fd[name]), 4.5 * se)


# ---------------------------------------------------------------------------------------------
# (c) a small Flax model with a histogram observable: all routes agree to float tolerance.


class PairMLP(nn.Module):
    """Per-atom energies (eV) from a pairwise MLP of Gaussian-expanded distances."""

    @nn.compact
    def __call__(self, positions):
        n = positions.shape[0]
        d = positions[:, None, :] - positions[None, :, :]
        r = jnp.sqrt(jnp.sum(d**2, axis=-1) + jnp.eye(n))
        rbf = jnp.exp(-((r[..., None] - jnp.linspace(0.5, 3.0, 6)) ** 2) / 0.3)
        pair = nn.Dense(1)(jnp.tanh(nn.Dense(8)(rbf)))[..., 0]
        return 0.5 * jnp.sum(pair * (1.0 - jnp.eye(n)), axis=1)


def _histogram(positions):
    """Gaussian-smeared distance histogram, [10] (dimensionless, sums to n_pairs)."""
    i, j = np.triu_indices(positions.shape[0], k=1)
    r = jnp.sqrt(jnp.sum((positions[i] - positions[j]) ** 2, axis=-1))
    centres = jnp.linspace(0.8, 2.8, 10)
    return jnp.sum(jnp.exp(-0.5 * ((r[:, None] - centres) / 0.2) ** 2), axis=0)


_histograms = jax.jit(jax.vmap(_histogram))


def _mlp_setup(n_samples=14, n_atoms=5, seed=0):
    x64 = jax.dtypes.canonicalize_dtype(jnp.float64) == jnp.float64
    return _cached_mlp_setup(n_samples, n_atoms, seed, x64)


@functools.cache
def _cached_mlp_setup(n_samples, n_atoms, seed, x64):
    dtype = jnp.float64 if x64 else jnp.float32  # x64 is also part of the cache key
    model = PairMLP()
    key_init, key_x = jax.random.split(jax.random.key(seed))
    base = jnp.asarray(np.random.default_rng(seed).uniform(0.0, 2.0, (n_atoms, 3)))
    params = jax.jit(model.init)(key_init, base)["params"]  # eager init is slow
    params = jax.tree_util.tree_map(lambda p: p.astype(dtype), params)
    samples = base + 0.15 * jax.random.normal(key_x, (n_samples, n_atoms, 3), dtype)
    per_atom = lambda p, x: model.apply({"params": p}, x)
    energy = lambda p, x: jnp.sum(per_atom(p, x))
    return params, samples, per_atom, energy


def _naive_jacobian(energy, observable, kT, params, samples, mask=None, batch_size=None):
    """Independent reference: Python loop of jax.grad, numpy float64 covariance."""
    n = samples.shape[0]
    mask = np.ones(n, bool) if mask is None else np.asarray(mask)
    b = n if batch_size is None else batch_size
    total, weight_sum = 0.0, 0.0
    grad_fn = jax.jit(jax.grad(energy))
    obs_fn = jax.jit(observable)
    samples = np.asarray(samples)
    for start in range(0, n, b):
        idx = [i for i in range(start, min(start + b, n)) if mask[i]]
        if len(idx) < 2:
            continue
        grads = np.stack([np.asarray(ravel_pytree(grad_fn(params, samples[i]))[0]) for i in idx])
        g = np.stack([np.asarray(obs_fn(samples[i])).reshape(-1) for i in idx])
        cov = (g - g.mean(0)).T @ (grads - grads.mean(0)) / (len(idx) - 1)
        total = total + len(idx) * (-cov / kT)
        weight_sum += len(idx)
    return total / weight_sum


def _flat_jacobian(jac_tree, n_obs):
    leaves = jax.tree_util.tree_leaves(jac_tree)
    return np.concatenate([np.asarray(x).reshape(n_obs, -1) for x in leaves], axis=1)


@pytest.mark.parametrize("batch_size", [None, 14, 4])
def test_flax_histogram_jacobian_equals_naive_reference(batch_size):
    with jax.enable_x64(True):
        params, samples, _, energy = _mlp_setup()
        kT = units.kT(500.0)
        jac = est.boltzmann_jacobian(energy, _histogram, kT, batch_size=batch_size)(params, samples)
        ref = _naive_jacobian(energy, _histogram, kT, params, samples, batch_size=batch_size)
        # Jacobian leaves: [n_obs, *param_shape].
        for leaf, p in zip(
            jax.tree_util.tree_leaves(jac), jax.tree_util.tree_leaves(params), strict=True
        ):
            assert leaf.shape == (10,) + p.shape
        # ravel_pytree orders leaves like tree_leaves.
        assert_trees_close(_flat_jacobian(jac, 10), ref, rtol=1e-9)
        assert np.abs(ref).max() > 1e-3


@pytest.mark.parametrize("batch_size,chunk_size", [(None, None), (14, None), (4, 3), (5, 64)])
def test_flax_histogram_flat_route_equals_jacobian_route(batch_size, chunk_size):
    with jax.enable_x64(True):
        params, samples, _, energy = _mlp_setup()
        kT = units.kT(500.0)
        g_ref = jnp.linspace(0.0, 1.0, 10)
        jac = est.boltzmann_jacobian(energy, _histogram, kT, batch_size=batch_size)(params, samples)
        expect = est.boltzmann_expectation(
            energy, _histogram, kT, batch_size=batch_size, chunk_size=chunk_size
        )

        def loss(p):
            return jnp.sum((expect(p, samples) - g_ref) ** 2)

        value, grad = jax.value_and_grad(loss)(params)
        mean_g = jnp.mean(_histograms(samples), axis=0)
        np.testing.assert_allclose(value, jnp.sum((mean_g - g_ref) ** 2), rtol=1e-12)
        v = 2.0 * (mean_g - g_ref)
        expected = jax.tree_util.tree_map(lambda j: jnp.tensordot(v, j, axes=1), jac)
        assert_trees_close(grad, expected, rtol=1e-9)


def test_minibatch_b_equal_n_is_the_full_estimator_float32():
    params, samples, _, energy = _mlp_setup(n_samples=12)
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float32), params)
    samples = samples.astype(jnp.float32)
    kT = units.kT(300.0)
    full = est.boltzmann_jacobian(energy, _histogram, kT)(params, samples)
    batched = est.boltzmann_jacobian(energy, _histogram, kT, batch_size=12)(params, samples)
    flat = jax.grad(
        lambda p: est.boltzmann_expectation(energy, _histogram, kT, batch_size=12)(p, samples)[3]
    )(params)
    assert_trees_close(batched, full, rtol=1e-5)
    assert_trees_close(flat, jax.tree_util.tree_map(lambda j: j[3], full), rtol=1e-4)


def test_jacobian_matches_jacrev_of_reweighted_expectation():
    """At θ0, ∂/∂θ of the self-normalised reweighted mean equals -Cov/kT (N-1 → N)."""
    with jax.enable_x64(True):
        params, samples, _, energy = _mlp_setup(n_samples=9)
        kT = 0.05
        energies0 = jax.jit(jax.vmap(energy, (None, 0)))(params, samples)

        def reweighted_mean(p):
            log_w = -(jax.vmap(energy, (None, 0))(p, samples) - energies0) / kT
            w = jax.nn.softmax(log_w)
            return jnp.sum(w[:, None] * _histograms(samples), axis=0)

        exact_plugin = jax.jacrev(reweighted_mean)(params)
        jac = est.boltzmann_jacobian(energy, _histogram, kT)(params, samples)
        n = samples.shape[0]
        scaled = jax.tree_util.tree_map(lambda j: j * (n - 1) / n, jac)
        assert_trees_close(scaled, exact_plugin, rtol=1e-9)


# ---------------------------------------------------------------------------------------------
# (d) localized estimator.


def test_localized_full_neighbourhood_equals_global():
    with jax.enable_x64(True):
        params, samples, per_atom, energy = _mlp_setup(n_samples=8, n_atoms=6)
        kT = units.kT(300.0)
        n = samples.shape[0]
        atoms = jnp.broadcast_to(jnp.arange(6), (n, 6))
        local = loc.gather_local_samples(samples, jnp.arange(n), atoms)
        local_obs = lambda s: _histogram(s.positions[s.atoms])
        jac_local = est.boltzmann_jacobian(loc.local_energy_fn(per_atom), local_obs, kT)(
            params, local
        )
        jac_global = est.boltzmann_jacobian(energy, _histogram, kT)(params, samples)
        assert_trees_close(jac_local, jac_global, rtol=1e-10)

        # The frame-grouped flat route agrees as well.
        expect = loc.localized_expectation(per_atom, local_obs, kT)
        grad = jax.grad(lambda p: expect(p, samples, jnp.arange(n), atoms)[2])(params)
        assert_trees_close(grad, jax.tree_util.tree_map(lambda j: j[2], jac_global), rtol=1e-9)


@pytest.mark.parametrize("batch_size,chunk_size", [(None, None), (4, 2)])
def test_localized_flat_route_equals_per_sample_jacobian(batch_size, chunk_size):
    """Molecules (3 atoms) as neighbourhoods, several per frame: frame-grouped = generic."""
    with jax.enable_x64(True):
        params, frames, per_atom, _ = _mlp_setup(n_samples=4, n_atoms=9, seed=3)
        neigh = loc.molecule_neighbourhoods([8, 1, 1] * 3)
        frame_index = jnp.array([0, 0, 1, 2, 2, 2, 3, 1, 3, 0])
        which = jnp.array([0, 2, 1, 0, 1, 2, 2, 0, 0, 1])
        atoms = jnp.asarray(neigh)[which]
        kT = units.kT(300.0)
        obs = lambda s: loc.neighbourhood_bond_lengths(s.positions, s.atoms)
        v = jnp.array([0.7, -1.3])
        jac = est.boltzmann_jacobian(loc.local_energy_fn(per_atom), obs, kT, batch_size=batch_size)(
            params, loc.gather_local_samples(frames, frame_index, atoms)
        )
        expect = loc.localized_expectation(
            per_atom, obs, kT, batch_size=batch_size, chunk_size=chunk_size
        )
        value, grad = jax.value_and_grad(lambda p: expect(p, frames, frame_index, atoms) @ v)(
            params
        )
        lengths = jnp.linalg.norm(
            frames[frame_index[:, None], atoms[:, 1:]] - frames[frame_index, atoms[:, 0]][:, None],
            axis=-1,
        )
        np.testing.assert_allclose(value, jnp.mean(lengths, axis=0) @ v, rtol=1e-12)
        expected = jax.tree_util.tree_map(lambda j: jnp.tensordot(v, j, axes=1), jac)
        assert_trees_close(grad, expected, rtol=1e-9)


def test_molecule_neighbourhoods_and_bad_pattern():
    np.testing.assert_array_equal(
        loc.molecule_neighbourhoods([8, 1, 1, 8, 1, 1]), [[0, 1, 2], [3, 4, 5]]
    )
    with pytest.raises(ValueError, match="pattern"):
        loc.molecule_neighbourhoods([8, 1, 8, 1, 1, 1])


def test_select_neighbourhoods_balances_bins_and_is_seeded():
    rng = np.random.default_rng(0)
    # Mostly small deviations, a sparse tail: the bins of the tail have fewer than per_bin.
    dev = np.abs(rng.normal(0.0, 0.02, (40, 16)))
    dev[3, 5], dev[7, 1] = 0.9, 1.0
    dev[5, 2] = np.nan  # a frozen replica
    valid = np.ones_like(dev, bool)
    valid[9] = False
    sel = loc.select_neighbourhoods(jax.random.key(1), dev, n_bins=10, per_bin=5, valid=valid)
    assert sel.mask.shape == (50,)
    chosen = (
        np.asarray(sel.frame_index)[np.asarray(sel.mask)],
        np.asarray(sel.neighbourhood_index)[np.asarray(sel.mask)],
    )
    values = dev[chosen]
    assert np.all(np.isfinite(values)) and not np.any(chosen[0] == 9)
    assert len(set(zip(*chosen, strict=True))) == len(values)  # without replacement
    ok = np.isfinite(dev) & valid
    lo, hi = dev[ok].min(), dev[ok].max()
    bins = np.clip(np.floor((np.nan_to_num(dev) - lo) / ((hi - lo) / 10)), 0, 9).astype(int)
    expected_counts = np.minimum(np.bincount(bins[ok], minlength=10), 5)
    got_bins = bins[chosen]
    np.testing.assert_array_equal(np.bincount(got_bins, minlength=10), expected_counts)
    np.testing.assert_array_equal(got_bins, np.asarray(sel.bin_index)[np.asarray(sel.mask)])
    # The two outliers sit alone in the top bins and are always chosen.
    assert {(3, 5), (7, 1)} <= set(zip(*chosen, strict=True))
    again = loc.select_neighbourhoods(jax.random.key(1), dev, n_bins=10, per_bin=5, valid=valid)
    other = loc.select_neighbourhoods(jax.random.key(2), dev, n_bins=10, per_bin=5, valid=valid)
    np.testing.assert_array_equal(again.frame_index, sel.frame_index)
    assert not np.array_equal(np.asarray(other.frame_index), np.asarray(sel.frame_index))


# ---------------------------------------------------------------------------------------------
# (f) NaN samples from frozen replicas are masked out, not propagated.


def test_nan_samples_are_masked_not_propagated():
    with jax.enable_x64(True):
        params, samples, per_atom, energy = _mlp_setup(n_samples=10)
        bad = np.asarray(samples).copy()
        bad[[2, 7]] = np.nan
        bad[4, 1, 0] = np.inf
        bad = jax.device_put(bad)  # jnp.asarray of NaN raises under jax_debug_nans
        mask = est.finite_sample_mask(bad)
        np.testing.assert_array_equal(mask, [i not in (2, 4, 7) for i in range(10)])
        keep = np.asarray(mask)
        kT = units.kT(500.0)
        for b in (None, 4):
            jac = est.boltzmann_jacobian(energy, _histogram, kT, batch_size=b)(params, bad, mask)
            ref = _naive_jacobian(energy, _histogram, kT, params, samples, keep, batch_size=b)
            assert_trees_close(_flat_jacobian(jac, 10), ref, rtol=1e-9)
            if b is None:  # without batches, masking = dropping the samples
                clean = est.boltzmann_jacobian(energy, _histogram, kT)(params, samples[keep])
                assert_trees_close(jac, clean, rtol=1e-10)
            expect = est.boltzmann_expectation(energy, _histogram, kT, batch_size=b)

            def loss(p, expect=expect):
                return jnp.sum(expect(p, bad, mask) ** 2)

            value, grad = jax.value_and_grad(loss)(params)
            assert np.isfinite(value)
            v = 2.0 * jnp.mean(_histograms(samples[keep]), axis=0)
            np.testing.assert_allclose(value, jnp.sum((v / 2) ** 2), rtol=1e-12)
            flat_ref = v @ ref
            assert_trees_close(ravel_pytree(grad)[0], flat_ref, rtol=1e-9)

        # Localized: a NaN frame referenced only by masked samples is never evaluated.
        atoms = jnp.broadcast_to(jnp.arange(3), (10, 3))
        frame_index = jnp.arange(10)
        obs = lambda s: loc.neighbourhood_bond_lengths(s.positions, s.atoms)
        expect = loc.localized_expectation(per_atom, obs, kT)
        grad = jax.grad(lambda p: jnp.sum(expect(p, bad, frame_index, atoms, mask)))(params)
        assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(grad))


def test_all_masked_gives_zero_not_nan():
    energy = lambda p, x: 0.5 * p * jnp.sum(x**2)
    jac_fn = est.boltzmann_jacobian(energy, lambda x: x, 1.0)
    x = jax.device_put(np.full((4, 2), np.nan))
    jac = jac_fn(jnp.float32(1.0), x, jnp.zeros(4, bool))
    np.testing.assert_array_equal(jac, np.zeros(2))


def test_bad_inputs_raise_value_errors():
    jac_fn = est.boltzmann_jacobian(_harmonic_energy, _square, 1.0, batch_size=1)
    with pytest.raises(ValueError, match="batch_size"):
        jac_fn({"theta": 1.0}, jnp.ones(4))
    jac_fn = est.boltzmann_jacobian(_harmonic_energy, _square, 1.0)
    with pytest.raises(ValueError, match="mask"):
        jac_fn({"theta": 1.0}, jnp.ones(4), jnp.ones(3, bool))
    with pytest.raises(ValueError, match="leading"):
        jac_fn({"theta": 1.0}, (jnp.ones(4), jnp.ones(5)))


# ---------------------------------------------------------------------------------------------
# Authors' learning-rate conversion.


def test_authors_learning_rate_reproduces_their_step():
    """α × (authors' estimator, no 1/kT, no N/(N-1)) == converted lr × exact estimator."""
    with jax.enable_x64(True):
        params, samples, _, energy = _mlp_setup(n_samples=8)
        kT, alpha, v = units.kT(500.0), 1e-3, jnp.linspace(-1.0, 1.0, 10)
        n = samples.shape[0]
        grads = jax.jit(jax.vmap(lambda x: ravel_pytree(jax.grad(energy)(params, x))[0]))(samples)
        g = _histograms(samples)
        authors = jnp.outer(g.mean(0), grads.mean(0)) - (g.T @ grads) / n
        exact = _flat_jacobian(est.boltzmann_jacobian(energy, _histogram, kT)(params, samples), 10)
        lr = hp.authors_learning_rate_to_exact(alpha, kT, n)
        assert_trees_close(lr * (v @ exact), alpha * (v @ authors), rtol=1e-10)
    assert lr == pytest.approx(alpha * kT * 7 / 8)
    with pytest.raises(ValueError):
        hp.authors_learning_rate_to_exact(alpha, kT, 1)


def test_water_pipeline_with_frozen_frame():
    """Deviation → balanced selection → localized gradient; a NaN frame is never used."""
    rng = np.random.default_rng(11)
    n_frames, n_mol, r0 = 3, 4, 0.96
    oxygens = 3.0 * np.arange(n_mol)[None, :, None] * np.array([1.0, 0.0, 0.0])
    oxygens = oxygens + 0.1 * rng.normal(size=(n_frames, n_mol, 3))
    lengths = r0 + 0.05 * rng.normal(size=(n_frames, n_mol, 2))
    dirs = rng.normal(size=(n_frames, n_mol, 2, 3))
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    hydrogens = oxygens[:, :, None, :] + lengths[..., None] * dirs
    frames = np.concatenate([oxygens[:, :, None, :], hydrogens], axis=2).reshape(n_frames, -1, 3)
    frames[1] = np.nan  # frozen replica
    frames_dev = jax.device_put(frames)
    neigh = loc.molecule_neighbourhoods([8, 1, 1] * n_mol)
    dev = np.asarray(loc.neighbourhood_max_deviation(frames_dev, neigh, r0))
    expected = np.max(np.abs(lengths - r0), axis=-1)
    np.testing.assert_allclose(dev[[0, 2]], expected[[0, 2]], rtol=1e-5)
    assert np.all(np.isposinf(dev[1]))

    sel = loc.select_neighbourhoods(jax.random.key(0), dev, n_bins=4, per_bin=2)
    chosen_frames = np.asarray(sel.frame_index)[np.asarray(sel.mask)]
    assert chosen_frames.size >= 4 and not np.any(chosen_frames == 1)

    with jax.enable_x64(True):
        params, _, per_atom, _ = _mlp_setup(n_samples=2, n_atoms=3 * n_mol)
        frames64 = jax.device_put(frames.astype(np.float64))
        atoms = jnp.asarray(neigh)[sel.neighbourhood_index]
        obs = lambda s: loc.neighbourhood_bond_lengths(s.positions, s.atoms)
        kT = units.kT(300.0)
        v = jnp.array([1.0, -0.5])
        expect = loc.localized_expectation(per_atom, obs, kT, batch_size=4)
        grad = jax.grad(lambda p: expect(p, frames64, sel.frame_index, atoms, sel.mask) @ v)(params)
        # Same estimator via per-sample gradients on gathered samples, same mask and batching
        # (frame 1 is only referenced by masked slots; zero it so the copy is finite).
        clean = frames.copy()
        clean[1] = 0.0
        local_all = loc.gather_local_samples(jnp.asarray(clean), sel.frame_index, atoms)
        jac_b = est.boltzmann_jacobian(loc.local_energy_fn(per_atom), obs, kT, batch_size=4)(
            params, local_all, sel.mask
        )
        expected = jax.tree_util.tree_map(lambda j: jnp.tensordot(v, j, 1), jac_b)
        assert_trees_close(grad, expected, 1e-9)


def test_neighbourhood_bond_lengths_batched_and_periodic():
    from jax_md import space

    box = 5.0
    displacement_fn, _ = space.periodic(box)
    # Molecule 0 straddles the box edge: O at x = 4.9, H at x = 0.85 → minimum image 0.95 Å.
    positions = jnp.array(
        [
            [4.9, 1.0, 1.0],
            [0.85, 1.0, 1.0],
            [4.9, 1.96, 1.0],
            [2.0, 2.0, 2.0],
            [2.9, 2.0, 2.0],
            [2.0, 2.0, 3.1],
        ]
    )
    neigh = loc.molecule_neighbourhoods([8, 1, 1, 8, 1, 1])
    batched = loc.neighbourhood_bond_lengths(positions, neigh, displacement_fn)
    single = jnp.stack(
        [loc.neighbourhood_bond_lengths(positions, a, displacement_fn) for a in neigh]
    )
    np.testing.assert_allclose(batched, single, rtol=1e-6)
    np.testing.assert_allclose(batched, [[0.95, 0.96], [0.9, 1.1]], rtol=1e-5)
    free = loc.neighbourhood_bond_lengths(positions, neigh)
    np.testing.assert_allclose(free[0, 0], 4.05, rtol=1e-5)  # no minimum image in free space


def test_estimator_reexports_the_split_modules_public_names():
    """Every name moved out of stabie_jax.estimator is still importable from it, as the same
    object (callers written against the old single module keep working)."""
    for module in (loc, hp):
        for name in module.__all__:
            assert name in est.__all__, name
            assert getattr(est, name) is getattr(module, name), name
    for name in est.__all__:
        assert hasattr(est, name), name
