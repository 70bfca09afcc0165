"""The reweighted Boltzmann estimator (``log_weights``): identities, an independent numpy
re-implementation, and the harmonic oscillator whose reweighted gradient is known exactly."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stabie_jax import estimator, localized_estimator, reweighting

KT = 0.1


# --- a model linear in its parameters: ∇_θ U(x) = φ(x) exactly, independent of jax ------------
def features(x):
    """``φ(x)``: [3] features of a 2-d sample."""
    return jnp.stack([x[0] ** 2, x[0] * x[1], jnp.sin(x[1])])


def linear_energy(theta, x):
    return jnp.dot(theta, features(x))


def observable(x):
    return jnp.stack([x[0], x[1] ** 2])


def numpy_weighted_jacobian(x, mask, log_w, batch_size):
    """Independent re-implementation: batches of B, weighted means and unbiased weighted
    covariance ``Σ w̃ (g-ḡ)(φ-φ̄)ᵀ / (1-Σw̃²)``, batches averaged with weight Σ_b w."""
    x = np.asarray(x, np.float64)
    g = np.stack([x[:, 0], x[:, 1] ** 2], 1)
    phi = np.stack([x[:, 0] ** 2, x[:, 0] * x[:, 1], np.sin(x[:, 1])], 1)
    w_all = np.where(mask, np.exp(np.asarray(log_w, np.float64) - np.max(log_w[mask])), 0.0)
    jac, total = np.zeros((2, 3)), 0.0
    for start in range(0, len(x), batch_size):
        sl = slice(start, start + batch_size)
        w, gb, pb = w_all[sl], g[sl], phi[sl]
        if (w > 0).sum() < 2:
            continue
        wn = w / w.sum()
        dg = gb - wn @ gb
        dp = pb - wn @ pb
        cov = (wn[:, None] * dg).T @ dp / (1.0 - np.sum(wn**2))
        jac += w.sum() * (-cov / KT)
        total += w.sum()
    return jac / total, (w_all @ g) / w_all.sum()


@pytest.fixture(scope="module")
def weighted_case():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(37, 2)).astype(np.float32)
    mask = rng.random(37) > 0.15
    log_w = rng.normal(scale=0.7, size=37).astype(np.float32) + 5.0  # any additive constant
    theta = jnp.array([0.3, -0.2, 0.5])
    return x, mask, log_w, theta


@pytest.mark.parametrize("batch_size", [None, 8])
def test_weighted_routes_match_numpy(weighted_case, batch_size):
    x, mask, log_w, theta = weighted_case
    want_jac, want_mean = numpy_weighted_jacobian(x, mask, log_w, batch_size or len(x))
    jac_fn = estimator.boltzmann_jacobian(linear_energy, observable, KT, batch_size=batch_size)
    jac = jac_fn(theta, jnp.asarray(x), jnp.asarray(mask), jnp.asarray(log_w))
    np.testing.assert_allclose(np.asarray(jac), want_jac, rtol=2e-4, atol=1e-5)
    expect = estimator.boltzmann_expectation(linear_energy, observable, KT, batch_size=batch_size)
    value = expect(theta, jnp.asarray(x), jnp.asarray(mask), jnp.asarray(log_w))
    np.testing.assert_allclose(np.asarray(value), want_mean, rtol=1e-5)
    v = jnp.array([0.7, -1.3])
    vjp = jax.grad(lambda t: jnp.dot(v, expect(t, x, jnp.asarray(mask), jnp.asarray(log_w))))(theta)
    np.testing.assert_allclose(np.asarray(vjp), np.asarray(v) @ want_jac, rtol=2e-4, atol=1e-5)
    # The weights really act: the unweighted Jacobian differs.
    plain = jac_fn(theta, jnp.asarray(x), jnp.asarray(mask))
    assert np.max(np.abs(np.asarray(plain) - want_jac)) > 0.05 * np.max(np.abs(want_jac))


def test_per_batch_weighted_vjp_matches_numpy(weighted_case):
    """Authors' per-batch form: Σ_b w_b v_bᵀ J_b with each batch's own weighted mean."""
    x, mask, log_w, theta = weighted_case
    B = 8
    means_fn = estimator.boltzmann_batch_means(linear_energy, observable, KT, batch_size=B)
    g_ref = jnp.array([0.1, 0.9])

    def loss(t):
        means, weights = means_fn(t, jnp.asarray(x), jnp.asarray(mask), jnp.asarray(log_w))
        return jnp.sum(weights * jnp.sum((means - g_ref) ** 2, axis=-1))

    want = np.zeros(3)
    w_all = np.where(mask, np.exp(log_w.astype(np.float64) - log_w[mask].max()), 0.0)
    sums = np.array([w_all[s : s + B].sum() for s in range(0, len(x), B)])
    usable = np.array([(w_all[s : s + B] > 0).sum() >= 2 for s in range(0, len(x), B)])
    batch_w = np.where(usable, sums, 0.0) / np.where(usable, sums, 0.0).sum()
    for b, s in enumerate(range(0, len(x), B)):
        if not usable[b]:
            continue
        jac_b, mean_b = numpy_weighted_jacobian(x[s : s + B], mask[s : s + B], log_w[s : s + B], B)
        want += batch_w[b] * (2 * (mean_b - np.asarray(g_ref))) @ jac_b
    np.testing.assert_allclose(np.asarray(jax.grad(loss)(theta)), want, rtol=3e-4, atol=1e-5)


@pytest.mark.parametrize("batch_size", [None, 8])
def test_equal_log_weights_are_the_plain_estimator(weighted_case, batch_size):
    """θ′ = θ gives ℓ_i = 0 (or any constant): the reweighted estimator is the plain one."""
    x, mask, _, theta = weighted_case
    xs, m = jnp.asarray(x), jnp.asarray(mask)
    energies = jax.vmap(linear_energy, (None, 0))(theta, xs)
    zero = reweighting.parameter_log_weights(energies, energies, KT, m)
    for lw in (zero, jnp.full((len(x),), 3.7)):
        for build in (estimator.boltzmann_jacobian, estimator.boltzmann_expectation):
            fn = build(linear_energy, observable, KT, batch_size=batch_size)
            np.testing.assert_allclose(
                np.asarray(fn(theta, xs, m, lw)), np.asarray(fn(theta, xs, m)), rtol=1e-6
            )
        means_fn = estimator.boltzmann_batch_means(
            linear_energy, observable, KT, batch_size=batch_size
        )

        def loss(t, lw=lw, means_fn=means_fn):
            means, weights = means_fn(t, xs, m, lw)
            return jnp.sum(weights * jnp.sum(means**2, axis=-1))

        def plain_loss(t, means_fn=means_fn):
            means, weights = means_fn(t, xs, m)
            return jnp.sum(weights * jnp.sum(means**2, axis=-1))

        np.testing.assert_allclose(
            np.asarray(jax.grad(loss)(theta)), np.asarray(jax.grad(plain_loss)(theta)), rtol=1e-5
        )
    assert float(reweighting.kish_effective_sample_size(zero)) == pytest.approx(mask.sum())


# --- harmonic oscillator: U = k x²/2, ⟨x²⟩ = kT/k, d⟨x²⟩/dk = -kT/k² ---------------------------
def oscillator_energy(k, x):
    return 0.5 * k * x**2


def square(x):
    return jnp.stack([x**2])


@pytest.mark.parametrize("ratio", [1.25, 0.8])
def test_reweighted_oscillator_matches_analytic_derivative(ratio):
    k0, n, repeats = 2.0, 20_000, 16
    k1 = ratio * k0
    expect = estimator.boltzmann_expectation(oscillator_energy, square, KT, batch_size=40)
    grad_fn = jax.jit(jax.grad(lambda k, x, lw: expect(k, x, None, lw)[0]))
    value_fn = jax.jit(lambda k, x, lw: expect(k, x, None, lw)[0])
    grads, plain, values = [], [], []
    for seed in range(repeats):
        x = jax.random.normal(jax.random.key(seed), (n,)) * np.sqrt(KT / k0)  # drawn at k0
        lw = reweighting.parameter_log_weights(
            oscillator_energy(k1, x), oscillator_energy(k0, x), KT
        )
        grads.append(float(grad_fn(k1, x, lw)))
        values.append(float(value_fn(k1, x, lw)))
        plain.append(float(grad_fn(k1, x, None)))  # unweighted samples of k0
    grads, values, plain = map(np.asarray, (grads, values, plain))
    sem = grads.std(ddof=1) / np.sqrt(repeats)
    exact = -KT / k1**2
    assert abs(grads.mean() - exact) < 4 * sem + 1e-3 * abs(exact)
    assert values.mean() == pytest.approx(KT / k1, rel=5e-3)
    # The test exercises the weights: without them the estimate is -kT/k0², many errors away.
    assert abs(plain.mean() - exact) > 10 * sem
    assert plain.mean() == pytest.approx(-KT / k0**2, rel=0.02)


def test_kish_neff_falls_as_parameters_move_away():
    """For Gaussian samples at k0 reweighted to k1 = r·k0, N_eff/N → sqrt(2r-1)/r."""
    k0, n = 2.0, 200_000
    x = jax.random.normal(jax.random.key(0), (n,)) * np.sqrt(KT / k0)
    e0 = oscillator_energy(k0, x)
    fractions = []
    for r in (1.0, 1.05, 1.2, 1.5, 2.0):
        lw = reweighting.parameter_log_weights(oscillator_energy(r * k0, x), e0, KT)
        frac = float(reweighting.kish_effective_sample_size(lw)) / n
        fractions.append(frac)
        assert frac == pytest.approx(np.sqrt(2 * r - 1) / r, abs=0.01)
    assert fractions[0] == pytest.approx(1.0, abs=1e-6)
    assert all(a > b for a, b in zip(fractions, fractions[1:], strict=False))


def test_localized_log_weights_match_global_for_one_neighbourhood():
    """One neighbourhood covering the whole frame: localized = global, weights included."""
    rng = np.random.default_rng(1)
    frames = rng.normal(size=(12, 2, 3)).astype(np.float32)
    log_w = rng.normal(size=12).astype(np.float32)
    k = jnp.array(1.3)

    def per_atom(kk, pos):
        return 0.5 * kk * jnp.sum(pos**2, axis=-1)

    def local_obs(sample):
        return jnp.stack([jnp.sum(sample.positions[sample.atoms] ** 2)])

    loc = localized_estimator.localized_expectation(per_atom, local_obs, KT, batch_size=4)
    glob = estimator.boltzmann_expectation(
        lambda kk, pos: jnp.sum(per_atom(kk, pos)),
        lambda pos: jnp.stack([jnp.sum(pos**2)]),
        KT,
        batch_size=4,
    )
    atoms = jnp.tile(jnp.arange(2), (12, 1))
    idx = jnp.arange(12)
    f_loc = lambda kk: loc(kk, frames, idx, atoms, None, log_w)[0]
    f_glob = lambda kk: glob(kk, frames, None, log_w)[0]
    assert float(f_loc(k)) == pytest.approx(float(f_glob(k)), rel=1e-5)
    assert float(jax.grad(f_loc)(k)) == pytest.approx(float(jax.grad(f_glob)(k)), rel=1e-4)
    assert float(jax.grad(f_glob)(k)) != pytest.approx(
        float(jax.grad(lambda kk: glob(kk, frames)[0])(k)), rel=1e-2
    )
