"""StABlE driver: the method works on a toy, resumes exactly after SIGKILL, survives faults,
and gives the same result on 4 (fake) devices as on one."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import toy_stabie as toy

from stabie_jax import metrics_log, observables, stabie, trajectory_losses

TOY_SCRIPT = pathlib.Path(__file__).with_name("toy_stabie.py")


def _run_toy(workdir, n_epochs, *extra, env=None, wait=True):
    cmd = [sys.executable, str(TOY_SCRIPT), str(workdir), str(n_epochs), *extra]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
    if wait:
        subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=900)
        return np.load(pathlib.Path(workdir) / "final_params.npy")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    sim = toy.make_simulator()
    h_ref = toy.reference_h(sim)
    problem = toy.make_problem(sim, h_ref)
    params0 = {"log_k": jnp.asarray(toy.LOG_K_PRETRAINED, jnp.float32)}
    settings = dataclasses.replace(toy.SETTINGS, max_epochs=12)
    state = stabie.init_state(
        problem, settings, params0, toy.initial_positions(8), jax.random.PRNGKey(0)
    )
    workdir = tmp_path_factory.mktemp("toy")
    final, records = stabie.run_stabie(problem, settings, state, workdir, progress=False)
    return sim, h_ref, params0, final, records, workdir


def test_toy_stabie_raises_stability_and_lowers_observable_error(toy_run):
    sim, h_ref, params0, final, records, _ = toy_run
    phases = [r["phase"] for r in records]
    assert phases[0] == "simulation" and "learning" in phases
    assert any(r.get("learning_end") == "unstable fraction <= f_min" for r in records)
    # The bond got stiffer, towards the true 20 eV/Å².
    k_final = float(np.exp(final.train.params["log_k"]))
    assert k_final > 4 * float(np.exp(toy.LOG_K_PRETRAINED))
    # Same initial conditions and seeds: stable time before vs after, eval threshold 0.5 Å.
    key = jax.random.PRNGKey(7)
    before = toy.stable_steps(sim, params0, 16, 10, key)
    after = toy.stable_steps(sim, final.train.params, 16, 10, key)
    assert np.median(after) > 4 * max(np.median(before), 100)

    # Observable error against the true potential's h(r).
    def h_error(params):
        state = sim.init(params, key, toy.initial_positions(16), rescale_velocities=True)
        _, traj = sim.simulate(params, state, 1000, 10)
        h = jnp.mean(toy.observable_fn(traj.positions), axis=(0, 1))
        return float(jnp.mean(jnp.abs(h - h_ref)))

    assert h_error(final.train.params) < 0.5 * h_error(params0)


def test_metrics_log_and_checkpoints_written(toy_run):
    *_, final, records, workdir = toy_run
    logged = metrics_log.read_records(workdir / stabie.METRICS_FILE)
    assert [r["epoch"] for r in logged] == list(range(1, 13))
    learning = [r for r in logged if r["phase"] == "learning"]
    for key in ("unstable_fraction", "obs_loss", "grad_norm", "learning_rate", "simulated_ps"):
        assert all(np.isfinite(r[key]) for r in learning), key
    # Only simulation epochs advance the simulated-time budget: t·dt each.
    n_sim = sum(r["phase"] == "simulation" for r in logged)
    assert logged[-1]["simulated_ps"] == pytest.approx(n_sim * 100 * 1.0 / 1000.0, rel=1e-6)
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 12


def test_learning_rate_is_zero_while_simulating_and_alpha_when_learning(toy_run):
    *_, records, _ = toy_run
    for r in records:
        if r["phase"] == "simulation":
            assert r["learning_rate"] == 0.0
    first_learning = next(r for r in records if r["phase"] == "learning")
    assert first_learning["learning_rate"] == toy.SETTINGS.learning_rate


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    reference = _run_toy(tmp_path / "uninterrupted", 10)
    workdir = tmp_path / "killed"
    proc = _run_toy(workdir, 10, wait=False)
    # Kill once at least one checkpoint exists, at a random point after that.
    deadline = time.time() + 600
    ckpt = workdir / "checkpoints"
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and any(p.name.isdigit() for p in ckpt.iterdir()):
            break
        time.sleep(0.2)
    time.sleep(random.uniform(0.0, 3.0))
    killed_early = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = _run_toy(workdir, 10)
    np.testing.assert_array_equal(resumed, reference)
    epochs = [r["epoch"] for r in metrics_log.read_records(workdir / stabie.METRICS_FILE)]
    assert epochs == list(range(1, 11)), (killed_early, epochs)


def test_nonfinite_gradient_step_is_skipped(tmp_path):
    sim = toy.make_simulator()
    h_ref = toy.reference_h(sim)
    problem = toy.make_problem(sim, h_ref)._replace(
        qm_loss_fn=lambda params, key: jnp.sqrt(-1.0 - params["log_k"] ** 2)
    )
    settings = dataclasses.replace(toy.SETTINGS, qm_weight=1.0, max_epochs=3)
    params0 = {"log_k": jnp.asarray(toy.LOG_K_PRETRAINED, jnp.float32)}
    state = stabie.init_state(
        problem, settings, params0, toy.initial_positions(8), jax.random.PRNGKey(0)
    )
    with jax.debug_nans(False):
        final, records = stabie.run_stabie(problem, settings, state, tmp_path, progress=False)
    learning = [r for r in records if r["phase"] == "learning"]
    assert learning and all(not r["step_applied"] for r in learning)
    assert all(r["skipped"] == "non-finite loss or gradient" for r in learning)
    assert float(final.train.params["log_k"]) == pytest.approx(toy.LOG_K_PRETRAINED)
    assert int(final.train.counters.optimizer_steps) == 0


def test_resume_with_another_replica_count_is_refused_and_keeps_the_checkpoints(tmp_path):
    sim = toy.make_simulator()
    problem = toy.make_problem(sim, toy.reference_h(sim))
    settings = dataclasses.replace(toy.SETTINGS, max_epochs=1)
    params0 = {"log_k": jnp.asarray(toy.LOG_K_PRETRAINED, jnp.float32)}
    state8 = stabie.init_state(
        problem, settings, params0, toy.initial_positions(8), jax.random.PRNGKey(0)
    )
    stabie.run_stabie(problem, settings, state8, tmp_path, progress=False)
    saved = sorted(p.name for p in (tmp_path / stabie.CHECKPOINT_DIR).iterdir())
    state4 = stabie.init_state(
        problem, settings, params0, toy.initial_positions(4), jax.random.PRNGKey(0)
    )
    with pytest.raises(ValueError, match="written for a different state"):
        stabie.run_stabie(problem, settings, state4, tmp_path, progress=False)
    assert sorted(p.name for p in (tmp_path / stabie.CHECKPOINT_DIR).iterdir()) == saved


def test_learning_step_without_estimator_samples_is_not_applied():
    """No valid sample (every replica frozen or non-finite): no covariance, so no step, even
    when the QM term alone would give a gradient."""

    def observable_loss(params, trajectory, key, n=0):
        return 0.0 * params["a"], {"n_samples": jnp.asarray(n)}

    qm = lambda params, key: (params["a"] - 1.0) ** 2
    settings = dataclasses.replace(toy.SETTINGS, qm_weight=1.0)
    params = {"a": jnp.asarray(0.0)}
    opt_state = stabie.make_optimizer(settings).init(params)
    for n, applied in ((0, False), (1, False), (2, True)):
        loss = lambda p, t, k, n=n: observable_loss(p, t, k, n)
        step = stabie.make_learning_step(stabie.StabieProblem(None, None, loss, qm), settings)
        out = step(params, opt_state, None, jax.random.key(0), 0.1)
        assert out.applied is applied, n
        if applied:
            assert out.skipped == "" and float(out.params["a"]) > 0.0
        else:
            assert "valid estimator samples" in out.skipped
            assert float(out.params["a"]) == 0.0 and float(out.metrics["update_norm"]) == 0.0


def test_nan_replica_is_frozen_and_never_reaches_the_gradient(tmp_path):
    def energy_fn(params, positions, neighbor=None):
        r = jnp.sqrt(jnp.sum((positions[1] - positions[0]) ** 2))
        e = 0.5 * jnp.exp(params["log_k"]) * (r - toy.R0) ** 2
        return jnp.where(r > 4.0, jnp.nan, e)  # a potential that "explodes" far out

    from stabie_jax import md, units

    sim = md.make_simulator(
        energy_fn,
        toy.MASSES,
        dt=units.fs_to_internal(1.0),
        kT=units.kT(toy.TEMPERATURE_K),
        space=md.free_space(),
        history_every=100,
        history_length=4,
    )
    h_ref = toy.reference_h(toy.make_simulator())
    loss_fn = trajectory_losses.global_observable_loss(energy_fn, toy.observable_fn, h_ref, sim.kT)
    problem = stabie.StabieProblem(sim, toy.stable_fn(0.25), loss_fn, None)
    positions = toy.initial_positions(8)
    positions[0, 1, 0] = 6.0  # replica 0 starts in the NaN region
    settings = dataclasses.replace(toy.SETTINGS, max_epochs=4)
    params0 = {"log_k": jnp.asarray(toy.LOG_K_PRETRAINED, jnp.float32)}
    with jax.debug_nans(False):
        state = stabie.init_state(problem, settings, params0, positions, jax.random.PRNGKey(1))
        final, records = stabie.run_stabie(problem, settings, state, tmp_path, progress=False)
    # Replica 0 never moved from its start: its NaN steps were discarded every time.
    np.testing.assert_array_equal(np.asarray(final.replicas.positions[0]), positions[0])
    assert records[0]["newly_unstable"] >= 1
    assert bool(jnp.all(jnp.isfinite(final.replicas.positions)))
    learning = [r for r in records if r["phase"] == "learning"]
    assert learning and all(r["step_applied"] for r in learning)
    assert all(r["n_samples"] <= 7 * 20 for r in learning)  # replica 0 contributes nothing
    assert np.isfinite(float(final.train.params["log_k"]))


def test_four_fake_devices_match_one_device(tmp_path):
    flags = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    one = _run_toy(tmp_path / "one", 6, env=flags)
    four = _run_toy(tmp_path / "four", 6, "shard", env=flags)
    np.testing.assert_allclose(four, one, rtol=1e-5)


def test_observable_is_normalised():
    positions = jnp.asarray(toy.initial_positions(1)[0])
    assert float(jnp.sum(toy.observable_fn(positions))) == pytest.approx(100.0, rel=1e-5)
    assert observables.h_of_r_centers(3.0, 150).shape == (150,)


def test_project_conflict_is_logged_per_learning_epoch(tmp_path):
    # One parameter: the two gradients are parallel (cosine ±1), so a conflicting observable
    # gradient is projected to zero and the step is the QM term's alone. A QM optimum on
    # either side of the start gives both cases.
    sim = toy.make_simulator()
    h_ref = toy.reference_h(sim)
    seen = set()
    for offset in (-1.0, 1.0):
        target = toy.LOG_K_PRETRAINED + offset
        problem = toy.make_problem(sim, h_ref)._replace(
            qm_loss_fn=lambda params, key, target=target: (params["log_k"] - target) ** 2
        )
        settings = dataclasses.replace(
            toy.SETTINGS, qm_weight=0.1, max_epochs=4, project_conflict=True
        )
        params0 = {"log_k": jnp.asarray(toy.LOG_K_PRETRAINED, jnp.float32)}
        state = stabie.init_state(
            problem, settings, params0, toy.initial_positions(8), jax.random.PRNGKey(0)
        )
        workdir = tmp_path / str(offset)
        _, records = stabie.run_stabie(problem, settings, state, workdir, progress=False)
        learning = [r for r in records if r["phase"] == "learning" and r["step_applied"]]
        assert learning
        for r in learning:
            conflict = r["grad_cosine"] < 0
            seen.add(conflict)
            assert r["obs_projected"] == float(conflict)
            removed = max(0.0, -r["grad_cosine"])
            assert r["obs_removed_fraction"] == pytest.approx(removed, abs=1e-6)
            if conflict:  # nothing of the observable term is left (float32 round-off)
                assert abs(r["obs_share"]) < 1e-3
        logged = metrics_log.read_records(workdir / stabie.METRICS_FILE)
        assert all("obs_projected" in r for r in logged if r["phase"] == "learning")
    assert seen == {True, False}
