"""Sample reuse by reweighting in the StABlE driver (``StabieSettings.reuse_min_neff``)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import toy_stabie as toy

from stabie_jax import reweighting, stabie


@pytest.fixture(scope="module")
def toy_setup():
    sim = toy.make_simulator()
    h_ref = toy.reference_h(sim)
    return sim, toy.make_problem(sim, h_ref)


def _run(problem, settings, workdir):
    params0 = {"log_k": jnp.asarray(toy.LOG_K_PRETRAINED, jnp.float32)}
    state = stabie.init_state(
        problem, settings, params0, toy.initial_positions(8), jax.random.PRNGKey(0)
    )
    return stabie.run_stabie(problem, settings, state, workdir, progress=False)


def test_reuse_takes_extra_steps_while_neff_holds_and_logs_them(toy_setup, tmp_path):
    _, problem = toy_setup
    settings = dataclasses.replace(
        toy.SETTINGS, max_epochs=6, reuse_min_neff=0.5, max_reuse_steps=3
    )
    final, records = _run(problem, settings, tmp_path)
    learning = [r for r in records if r["phase"] == "learning"]
    assert learning, "the toy never reached a learning phase: the test exercises nothing"
    n_steps = 0
    for r in learning:
        steps, fractions = r["reuse_steps"], r["reuse_n_eff_fraction"]
        assert 0 <= steps <= 3 and len(r["reuse_obs_loss"]) == steps
        assert all(0.0 < f <= 1.0 + 1e-6 for f in fractions)
        # every applied reuse step had N_eff/N above the threshold when it was taken
        assert all(f >= 0.5 for f in fractions[:steps])
        if r["reuse_end"] == "n_eff":
            assert len(fractions) == steps + 1 and fractions[-1] < 0.5
        else:
            assert r["reuse_end"] == "max_reuse_steps" and steps == 3
        n_steps += int(r["step_applied"]) + steps
    assert sum(r["reuse_steps"] for r in learning) > 0, "no sample was ever reused"
    assert int(final.train.counters.optimizer_steps) == n_steps
    assert records[-1]["optimizer_steps"] == n_steps


def test_neff_threshold_one_is_the_authors_rule(toy_setup, tmp_path):
    """A moved parameter always has N_eff/N < 1, so threshold 1 never reuses: bit-identical."""
    _, problem = toy_setup
    base = dataclasses.replace(toy.SETTINGS, max_epochs=5)
    plain, plain_records = _run(problem, base, tmp_path / "plain")
    one, one_records = _run(
        problem, dataclasses.replace(base, reuse_min_neff=1.0), tmp_path / "one"
    )
    assert any(r["phase"] == "learning" for r in plain_records)
    assert float(one.train.params["log_k"]) == float(plain.train.params["log_k"])
    assert [r["unstable_fraction"] for r in one_records] == [
        r["unstable_fraction"] for r in plain_records
    ]
    assert all(r["reuse_steps"] == 0 for r in one_records if r["phase"] == "learning")


def test_reuse_step_uses_the_reweighted_estimator(toy_setup):
    """The reuse step's gradient is the weighted one: it equals a step taken by hand with
    ℓ = -(U_θ′ - U_θ)/kT, and differs from the unweighted step on the same frames."""
    sim, problem = toy_setup
    # no clipping: in one dimension a clipped step keeps only the gradient's sign
    settings = dataclasses.replace(
        toy.SETTINGS, reuse_min_neff=0.01, max_reuse_steps=1, grad_clip_norm=None
    )
    p0 = {"log_k": jnp.asarray(toy.LOG_K_PRETRAINED, jnp.float32)}
    state = sim.init(p0, jax.random.PRNGKey(3), toy.initial_positions(8), rescale_velocities=True)
    _, traj = sim.simulate(p0, state, 100, 5, record_energy=True)
    step = stabie.make_learning_step(problem, settings)
    opt = stabie.make_optimizer(settings).init(p0)
    first = step(p0, opt, traj, jax.random.key(0), 0.02)
    assert first.applied
    energies = stabie.make_frame_energies(problem)
    key = jax.random.key(7)
    out = stabie.reuse_samples(
        step, energies, settings, sim.kT, p0, first.params, first.opt_state, traj, key, 0.02, 1
    )
    assert out.steps == 1 and out.end == "max_reuse_steps"
    u0, ok0 = energies(p0, traj)
    u1, ok1 = energies(first.params, traj)
    log_w = reweighting.parameter_log_weights(u1, u0, sim.kT, ok0 & ok1)
    by_hand = step(first.params, first.opt_state, traj, jax.random.fold_in(key, 0), 0.02, log_w)
    unweighted = step(first.params, first.opt_state, traj, jax.random.fold_in(key, 0), 0.02)
    got = float(out.params["log_k"])
    assert got == pytest.approx(float(by_hand.params["log_k"]), abs=1e-7)
    moved = got - float(first.params["log_k"])
    assert abs(got - float(unweighted.params["log_k"])) > 0.01 * abs(moved) > 0
    frac = float(reweighting.kish_effective_sample_size(log_w)) / int(np.asarray(ok0).sum())
    assert out.n_eff_fraction == [pytest.approx(frac)]
    assert frac < 1.0


def test_reuse_needs_the_energy_fn():
    with pytest.raises(ValueError, match="energy_fn"):
        stabie.make_frame_energies(stabie.StabieProblem(None, None, None))
    with pytest.raises(ValueError, match="reuse_min_neff"):
        dataclasses.replace(toy.SETTINGS, reuse_min_neff=1.5)
