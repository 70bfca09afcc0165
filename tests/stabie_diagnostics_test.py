"""Estimator diagnostics of the learning epoch: the split-half gradient cosine and the spread of
the frames' energies (``StabieSettings.split_cosine_every``)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import toy_stabie as toy

from stabie_jax import stabie, trajectory_losses

R_REPLICAS = 8


def _energy_two_params(params, positions, neighbor=None):
    """A harmonic bond with stiffness and rest length both learned (two gradient components)."""
    r = jnp.sqrt(jnp.sum((positions[1] - positions[0]) ** 2))
    return 0.5 * jnp.exp(params["log_k"]) * (r - params["r0"]) ** 2


@pytest.fixture(scope="module")
def setup():
    sim = toy.make_simulator()
    h_ref = toy.reference_h(sim)
    loss_fn = trajectory_losses.global_observable_loss(
        _energy_two_params, toy.observable_fn, h_ref, sim.kT
    )
    problem = stabie.StabieProblem(sim, toy.stable_fn(0.25), loss_fn, None)
    p_sim = {"log_k": jnp.asarray(toy.LOG_K_PRETRAINED, jnp.float32)}
    state = sim.init(p_sim, jax.random.PRNGKey(0), toy.initial_positions(R_REPLICAS))
    _, traj = sim.simulate(p_sim, state, 200, 5, record_energy=True)
    params = {"log_k": jnp.asarray(toy.LOG_K_PRETRAINED), "r0": jnp.asarray(toy.R0)}
    return problem, traj, params


def _grad(problem, params, traj, keep, key):
    masked = traj._replace(alive=traj.alive & jnp.asarray(keep)[None, :])
    (_, _), g = jax.value_and_grad(problem.observable_loss_fn, has_aux=True)(params, masked, key)
    return np.array([float(g["log_k"]), float(g["r0"])])


def test_identical_halves_give_cosine_one(setup):
    """Replicas 4..7 copy replicas 0..3, so both halves hold the same frames: cosine 1."""
    problem, traj, params = setup
    half = R_REPLICAS // 2
    dup = jax.tree.map(
        lambda x: None if x is None else jnp.concatenate([x[:, :half], x[:, :half]], axis=1), traj
    )
    first = np.arange(R_REPLICAS) < half
    out = stabie.make_split_cosine_fn(problem)(params, dup, jax.random.PRNGKey(1), first)
    assert out["obs_split_norm_a"] > 0, "zero gradient: the cosine would be vacuous"
    np.testing.assert_allclose(float(out["obs_split_cosine"]), 1.0, atol=1e-5)
    np.testing.assert_allclose(float(out["obs_split_loss_a"]), float(out["obs_split_loss_b"]))


def test_split_cosine_matches_the_two_gradients_taken_by_hand(setup):
    problem, traj, params = setup
    half = np.asarray(stabie.random_half(jax.random.PRNGKey(3), R_REPLICAS))
    assert half.sum() == R_REPLICAS // 2
    key = jax.random.PRNGKey(4)
    out = stabie.make_split_cosine_fn(problem)(params, traj, key, jnp.asarray(half))
    k_a, k_b = jax.random.split(key)
    g_a = _grad(problem, params, traj, half, k_a)
    g_b = _grad(problem, params, traj, ~half, k_b)
    expected = g_a @ g_b / (np.linalg.norm(g_a) * np.linalg.norm(g_b))
    # two components, so the cosine is not forced to +-1 as in one dimension
    assert abs(expected) < 1 - 1e-4
    np.testing.assert_allclose(float(out["obs_split_cosine"]), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(out["obs_split_norm_a"]), np.linalg.norm(g_a), rtol=1e-5)


def test_learning_epochs_log_the_diagnostics(tmp_path):
    sim = toy.make_simulator()
    problem = toy.make_problem(sim, toy.reference_h(sim))
    settings = dataclasses.replace(toy.SETTINGS, max_epochs=8, split_cosine_every=2)
    params0 = {"log_k": jnp.asarray(toy.LOG_K_PRETRAINED, jnp.float32)}
    state = stabie.init_state(
        problem, settings, params0, toy.initial_positions(8), jax.random.PRNGKey(0)
    )
    _, records = stabie.run_stabie(problem, settings, state, tmp_path, progress=False)
    learning = [r for r in records if r["phase"] == "learning"]
    assert len(learning) >= 3, "too few learning epochs to see the every-2 pattern"
    for r in learning:
        assert r["sample_energy_above_median_kT"] >= 0
        assert r["sample_energy_below_median_kT"] >= 0
        # phase_epoch counts from 0 in each learning phase; the first one is measured
        assert ("obs_split_cosine" in r) == (r["phase_epoch"] % 2 == 0), r
        if "obs_split_cosine" in r:
            # one parameter: the two half-gradients are parallel or antiparallel
            assert abs(abs(r["obs_split_cosine"]) - 1.0) < 1e-5
    assert not any("obs_split_cosine" in r for r in records if r["phase"] == "simulation")


def test_split_cosine_every_must_be_non_negative():
    with pytest.raises(ValueError, match="split_cosine_every"):
        dataclasses.replace(toy.SETTINGS, split_cosine_every=-1)
