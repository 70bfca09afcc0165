"""Which recorded frames feed a learning step (``StabieSettings.learning_samples``).

``"within_criterion"`` keeps each replica's frames before its first failure of the training
criterion; checked against a numpy re-computation of the bond deviation per frame, for a
per-frame criterion and for one over a window of frames, and through a learning epoch whose loss,
sample count and gradient are recomputed by hand on the masked frames.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import toy_stabie as toy

from stabie_jax import stabie, stability

R_REPLICAS = 8
THRESHOLD = 0.25


@pytest.fixture(scope="module")
def soft_trajectory():
    """A too-soft bond: most replicas leave the 0.25-Å band part-way through 200 steps."""
    sim = toy.make_simulator()
    params = {"log_k": jnp.asarray(toy.LOG_K_PRETRAINED, jnp.float32)}
    state = sim.init(params, jax.random.PRNGKey(0), toy.initial_positions(R_REPLICAS))
    _, traj = sim.simulate(params, state, 200, 5, record_energy=True)
    return sim, params, state, traj


def _deviation(traj) -> np.ndarray:
    """``[F, R]`` |r − r0| in float64, independent of stabie_jax.stability."""
    x = np.asarray(traj.positions, np.float64)
    return np.abs(np.linalg.norm(x[:, :, 1] - x[:, :, 0], axis=-1) - toy.R0)


def _first_failure_mask(failed: np.ndarray) -> np.ndarray:
    """``[F, R]``: True before the first True of ``failed`` along the frames."""
    n_frames = failed.shape[0]
    first = np.where(failed.any(axis=0), failed.argmax(axis=0), n_frames)
    return np.arange(n_frames)[:, None] < first[None, :]


def test_per_frame_criterion_cuts_each_replica_at_its_first_failure(soft_trajectory):
    _, _, _, traj = soft_trajectory
    expected = _first_failure_mask(_deviation(traj) > THRESHOLD)
    n_frames = expected.shape[0]
    kept = expected.sum(axis=0)
    # not vacuous: some replicas fail part-way, at least one never fails or fails late
    assert np.any((kept > 0) & (kept < n_frames)), kept
    assert np.any(kept > n_frames // 2), kept
    got = stabie.frames_within_criterion(toy.stable_fn(THRESHOLD), traj)
    assert got.shape == (n_frames, R_REPLICAS)
    np.testing.assert_array_equal(got, expected)


def test_window_criterion_is_applied_to_every_prefix(soft_trajectory):
    """A criterion on the mean deviation over the frames seen so far (not per frame)."""
    _, _, _, traj = soft_trajectory
    dev = _deviation(traj)
    threshold = float(np.median(dev.mean(axis=0)))

    def running_mean_ok(t):
        x = t.positions
        d = jnp.abs(jnp.linalg.norm(x[:, :, 1] - x[:, :, 0], axis=-1) - toy.R0)
        return jnp.mean(d, axis=0) <= threshold

    running = np.cumsum(dev, axis=0) / np.arange(1, dev.shape[0] + 1)[:, None]
    expected = _first_failure_mask(running > threshold)
    assert expected.any() and not expected.all()
    # a frame-wise reading would differ: the running mean can come back under the threshold
    got = stabie.frames_within_criterion(running_mean_ok, traj)
    np.testing.assert_array_equal(got, expected)


def test_learning_epoch_steps_on_the_frames_within_the_criterion(soft_trajectory):
    sim, params, state0, traj = soft_trajectory
    h_ref = toy.reference_h(sim)
    problem = stabie.StabieProblem(
        sim,
        toy.stable_fn(THRESHOLD),
        toy.make_problem(sim, h_ref).observable_loss_fn,
        None,
        energy_fn=toy.energy_fn,
    )
    settings = dataclasses.replace(
        toy.SETTINGS, steps_per_epoch=200, sample_every=5, grad_clip_norm=None
    )
    state = stabie.init_state(
        problem, settings, params, toy.initial_positions(R_REPLICAS), jax.random.PRNGKey(0)
    )
    state = state._replace(replicas=state0, anchors=state0)
    within = _first_failure_mask(_deviation(traj) > THRESHOLD)
    valid = np.asarray(traj.alive) & np.isfinite(np.asarray(traj.potential_energy))

    records = {}
    for choice in stabie.LEARNING_SAMPLES:
        s = dataclasses.replace(settings, learning_samples=choice)
        _, records[choice] = stabie.make_learning_epoch(problem, s)(state, jax.random.PRNGKey(1))
    rec_all, rec_cut = records["all"], records["within_criterion"]
    assert rec_all["n_samples"] == valid.sum()
    assert rec_cut["n_samples"] == (within & valid).sum() < rec_all["n_samples"]
    np.testing.assert_allclose(
        rec_cut["within_criterion_fraction"], (within & valid).sum() / valid.sum()
    )
    assert "within_criterion_fraction" not in rec_all
    # the unstable fraction is measured on all frames either way
    assert rec_cut["unstable_fraction"] == rec_all["unstable_fraction"]
    np.testing.assert_allclose(rec_all["unstable_fraction"], 1.0 - within[-1].mean())

    masked = traj._replace(alive=traj.alive & jnp.asarray(within))
    (loss, _), grad = jax.value_and_grad(problem.observable_loss_fn, has_aux=True)(
        params, masked, jax.random.PRNGKey(2)
    )
    np.testing.assert_allclose(rec_cut["obs_loss"], float(loss), rtol=1e-5)
    np.testing.assert_allclose(rec_cut["obs_grad_norm"], abs(float(grad["log_k"])), rtol=1e-4)
    assert abs(rec_cut["obs_loss"] - rec_all["obs_loss"]) > 1e-3 * rec_all["obs_loss"]


def test_unknown_learning_samples_is_refused():
    with pytest.raises(ValueError, match="learning_samples"):
        dataclasses.replace(toy.SETTINGS, learning_samples="stable")


def test_criterion_threshold_matches_the_library_deviation(soft_trajectory):
    """The numpy deviation above is the one the library criterion thresholds."""
    _, _, _, traj = soft_trajectory
    _, dev = stability.bond_length_deviation(
        traj.positions, toy.BONDS, np.array([toy.R0]), threshold=THRESHOLD
    )
    np.testing.assert_allclose(np.asarray(dev), _deviation(traj), rtol=1e-5, atol=1e-6)
