"""Tests of stabie_jax.evaluation on the diatomic toy (tests/toy_stabie.py) and analytic inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toy_stabie import (
    MASSES,
    R0,
    TEMPERATURE_K,
    energy_fn,
    initial_positions,
    stable_fn,
    stable_steps,
)

from stabie_jax import checkpoint, evaluation, md, metrics_log, observables, units
from stabie_jax.md import thermostat

SOFT = {"log_k": jnp.log(jnp.float32(0.5))}
STIFF = {"log_k": jnp.log(jnp.float32(20.0))}
N_REP = 12
CHUNK = 100
SAMPLE = 5
H_KW = dict(r_max=3.0, n_bins=150, sigma=0.05)


def make_sim(temperature_k=TEMPERATURE_K):
    return md.make_simulator(
        energy_fn,
        MASSES,
        dt=units.fs_to_internal(1.0),
        kT=units.kT(temperature_k),
        space=md.free_space(),
    )


SIM = make_sim()


def run(params, n_chunks=20, key=0, **kw):
    kw.setdefault("stop_fraction", 1.0)
    return evaluation.evaluate_stability(
        SIM,
        params,
        initial_positions(N_REP),
        jax.random.PRNGKey(key),
        stable_fn=stable_fn(0.5),
        total_steps=n_chunks * CHUNK,
        check_every_steps=CHUNK,
        sample_every=SAMPLE,
        progress=False,
        **kw,
    )


@pytest.fixture(scope="module")
def soft():
    return run(SOFT, frame_observables={"h_of_r": evaluation.h_of_r_observable(**H_KW)})


@pytest.fixture(scope="module")
def stiff():
    return run(STIFF, frame_observables={"h_of_r": evaluation.h_of_r_observable(**H_KW)})


def test_soft_bond_fails_and_stiff_bond_survives(soft, stiff):
    chunk_ps = CHUNK * 1e-3
    assert soft.chunk_ps == pytest.approx(chunk_ps)
    assert soft.median_stable_time_ps < 1.0  # of 2 ps
    assert soft.fraction_unstable[-1] >= 0.5
    assert not stiff.censored.sum() < N_REP
    np.testing.assert_allclose(stiff.stable_time_ps, 20 * chunk_ps)
    assert stiff.fraction_unstable.max() == 0.0
    assert stiff.median_stable_time_ps == pytest.approx(2.0)
    assert stiff.observable_frames.tolist() == [20 * CHUNK // SAMPLE] * N_REP


def test_stable_times_match_independent_loop(soft):
    """tests/toy_stabie.stable_steps: same key, same chunks, its own bookkeeping."""
    steps = stable_steps(SIM, SOFT, N_REP, 20, jax.random.PRNGKey(0), threshold=0.5)
    np.testing.assert_allclose(soft.stable_time_ps, steps * 1e-3, atol=1e-9)


def test_paired_initial_conditions(soft, stiff):
    np.testing.assert_array_equal(soft.initial_momenta, stiff.initial_momenta)
    dof = thermostat.degrees_of_freedom(2)
    direct = thermostat.maxwell_boltzmann_momenta(
        jax.random.PRNGKey(0),
        jnp.asarray(MASSES, jnp.float32),
        SIM.kT,
        (N_REP,),
        dof=dof,
        rescale=True,
    )
    np.testing.assert_allclose(soft.initial_momenta, direct, rtol=1e-6)
    other = run(STIFF, n_chunks=1, key=1)
    assert not np.allclose(other.initial_momenta, soft.initial_momenta)


def test_fraction_curve_consistent_with_stable_times(soft):
    f = soft.fraction_unstable
    assert f[0] == 0.0 and np.all(np.diff(f) >= 0)
    assert soft.times_ps.shape == f.shape
    for t, fk in zip(soft.times_ps, f, strict=True):
        expected = np.mean((soft.stable_time_ps < t - 1e-9) & ~soft.censored)
        assert fk == pytest.approx(expected)
    assert soft.median_stable_time_ps == pytest.approx(np.median(soft.stable_time_ps))


def test_early_stop_at_stop_fraction():
    res = run(SOFT, n_chunks=40, stop_fraction=0.5)
    assert res.stopped_early
    assert res.fraction_unstable[-1] >= 0.5
    assert res.fraction_unstable[-2] < 0.5
    assert res.simulated_ps < 4.0
    np.testing.assert_allclose(res.stable_time_ps[res.censored], res.simulated_ps)


_H_JIT = jax.jit(lambda pos: observables.h_of_r(pos, **H_KW))


def _manual(params, n_chunks, vacf_window=None):
    """Second route: plain loop over chunks, observables of stable chunks summed by hand."""
    state = SIM.init(
        params, jax.random.PRNGKey(0), initial_positions(N_REP), rescale_velocities=True
    )
    alive = np.ones(N_REP, bool)
    h_sum, frames = 0.0, np.zeros(N_REP)
    vacf_sum, vacf_n = 0.0, np.zeros(N_REP)
    msd_frames = [np.asarray(state.positions)]
    check = stable_fn(0.5)
    for _ in range(n_chunks):
        sampled = []
        if vacf_window:
            state, dense = SIM.simulate(params, state, vacf_window, 1)
            sampled.append(dense.positions[SAMPLE - 1 :: SAMPLE])
        state, traj = SIM.simulate(params, state, CHUNK - (vacf_window or 0), SAMPLE)
        pos = jnp.concatenate(sampled + [traj.positions], 0)
        ok = alive & np.asarray(check(traj._replace(positions=pos)))
        h = np.asarray(_H_JIT(pos))  # [F, R, K]
        h_sum = h_sum + (h * ok[None, :, None]).sum(0)
        frames += ok * pos.shape[0]
        if vacf_window:
            c = np.asarray(observables.vacf(dense.velocities, vacf_window))
            vacf_sum = vacf_sum + c * ok[:, None]
            vacf_n += ok
        msd_frames.append(np.asarray(pos[-1]))
        alive = ok
        state = state._replace(alive=state.alive & jnp.asarray(alive))
    return h_sum / frames[:, None], vacf_sum / vacf_n[:, None], np.stack(msd_frames, 1)


def test_observables_only_from_stable_frames(soft):
    h_manual, _, _ = _manual(SOFT, 20)
    got = soft.observables_per_replica["h_of_r"]
    some = soft.observable_frames > 0
    assert some.any() and (~some).any() or soft.fraction_unstable[-1] < 1
    np.testing.assert_allclose(got[some], h_manual[some], rtol=2e-4, atol=1e-5)
    assert np.all(np.isnan(got[~some]))
    pooled = (got[some] * soft.observable_frames[some, None]).sum(0) / soft.observable_frames.sum()
    np.testing.assert_allclose(soft.observables["h_of_r"], pooled, rtol=1e-5)
    # Unstable frames would put weight beyond R0 + 0.5 Å; stable frames cannot.
    centres = observables.h_of_r_centers(H_KW["r_max"], H_KW["n_bins"])
    far = centres > R0 + 0.5 + 4 * H_KW["sigma"]
    assert soft.observables["h_of_r"][far].sum() < 1e-3


def test_vacf_and_msd_match_manual_route():
    res = run(
        STIFF,
        n_chunks=6,
        frame_observables={"h_of_r": evaluation.h_of_r_observable(**H_KW)},
        vacf_window=20,
        msd_atoms=np.array([0, 1]),
        msd_max_lag=4,
    )
    h_manual, vacf_manual, msd_pos = _manual(STIFF, 6, vacf_window=20)
    np.testing.assert_allclose(
        res.observables_per_replica["h_of_r"], h_manual, rtol=2e-4, atol=1e-5
    )
    np.testing.assert_allclose(res.vacf_per_replica, vacf_manual, rtol=1e-5, atol=1e-6)
    assert res.vacf[0] == pytest.approx(1.0)
    np.testing.assert_allclose(res.vacf_lag_fs, np.arange(20) * 1.0, rtol=1e-6)
    msd = np.stack(
        [
            np.asarray(observables.mean_squared_displacement(msd_pos[r], 4, masses=MASSES))
            for r in range(N_REP)
        ]
    )
    np.testing.assert_allclose(res.msd, msd, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(res.msd_lag_ps, np.arange(5) * 0.1)
    d = msd[:, 4] / (6 * 0.4) * units.ANGSTROM2_PER_PS_IN_M2_PER_S
    np.testing.assert_allclose(res.diffusivity_m2_per_s, d, rtol=1e-4)


class _Killed(RuntimeError):
    pass


def _kill_after(n):
    def on_chunk(state):
        if int(state.chunk) == n:
            raise _Killed(n)

    return on_chunk


def test_killed_run_resumes_from_its_checkpoint_bit_identically(soft, tmp_path):
    kw = dict(
        frame_observables={"h_of_r": evaluation.h_of_r_observable(**H_KW)},
        checkpoint_dir=tmp_path / "eval",
        checkpoint_every_seconds=0.0,
    )
    with pytest.raises(_Killed):
        run(SOFT, n_chunks=20, on_chunk=_kill_after(2), **kw)
    # The kill came after chunk 2's checkpoint, well before the end: the resume has work to do.
    assert checkpoint.latest_step(tmp_path / "eval" / "checkpoints") == 2
    n_chunks = round(soft.simulated_ps / soft.chunk_ps)
    assert n_chunks >= 5 and np.sum(~soft.censored) >= 2
    chunks_after = []
    resumed = run(SOFT, n_chunks=20, key=123, on_chunk=chunks_after.append, **kw)
    assert [int(s.chunk) for s in chunks_after] == list(range(3, n_chunks + 1))  # key unused
    np.testing.assert_array_equal(resumed.stable_time_ps, soft.stable_time_ps)
    np.testing.assert_array_equal(resumed.initial_momenta, soft.initial_momenta)
    np.testing.assert_array_equal(resumed.observable_frames, soft.observable_frames)
    np.testing.assert_array_equal(resumed.observables["h_of_r"], soft.observables["h_of_r"])
    logged = metrics_log.read_records(tmp_path / "eval" / "metrics.jsonl")
    assert [r["chunk"] for r in logged] == list(range(1, n_chunks + 1))
    assert logged[-1]["unstable_fraction"] == pytest.approx(float(np.mean(~soft.censored)))


def test_resume_with_vacf_and_msd_accumulators(tmp_path):
    kw = dict(vacf_window=20, msd_atoms=[0, 1], msd_every_steps=50, msd_max_lag=4)
    whole = run(STIFF, n_chunks=6, **kw)
    kw.update(checkpoint_dir=tmp_path / "eval", checkpoint_every_seconds=0.0)
    with pytest.raises(_Killed):
        run(STIFF, n_chunks=6, on_chunk=_kill_after(2), **kw)
    resumed = run(STIFF, n_chunks=6, **kw)
    np.testing.assert_array_equal(resumed.vacf_per_replica, whole.vacf_per_replica)
    np.testing.assert_array_equal(resumed.msd, whole.msd)
    np.testing.assert_array_equal(resumed.stable_time_ps, whole.stable_time_ps)


def test_rdf_observables_match_direct_rdf():
    rng = np.random.default_rng(0)
    box = np.array([8.0, 8.0, 8.0])
    species = np.array([8, 1, 1] * 4)
    pos = jnp.asarray(rng.uniform(0, 8, size=(2, 3, 12, 3)), jnp.float32)
    fns = evaluation.rdf_observables(species, box, r_max=4.0, n_bins=40)
    assert list(fns) == ["rdf_8_8", "rdf_8_1", "rdf_1_1"]
    for (a, b), name in zip(((8, 8), (8, 1), (1, 1)), fns, strict=True):
        direct = observables.rdf(pos, species, (a, b), box, r_max=4.0, n_bins=40)
        np.testing.assert_allclose(fns[name](pos), direct, rtol=1e-6)
    assert evaluation.rdf_name((8, 1)) == "rdf_8_1"


def test_h_of_r_observable_is_shared_and_matches_h_of_r():
    fn = evaluation.h_of_r_observable(3.0, 150, 0.05)
    assert fn is evaluation.h_of_r_observable(r_max=3, n_bins=150, sigma=0.05)  # one compilation
    pos = jnp.asarray(initial_positions(3), jnp.float32)
    np.testing.assert_allclose(fn(pos), observables.h_of_r(pos, 3.0, 150, 0.05), rtol=1e-6)
    default = evaluation.h_of_r_observable()
    assert default.keywords == {"r_max": 10.0, "n_bins": 500, "sigma": observables.H_OF_R_SIGMA}


def test_bad_settings_raise():
    def call(**kw):
        args = dict(total_steps=200, check_every_steps=100, sample_every=5, progress=False)
        args.update(kw)
        return evaluation.evaluate_stability(
            SIM,
            STIFF,
            initial_positions(2),
            jax.random.PRNGKey(0),
            stable_fn=stable_fn(0.5),
            **args,
        )

    with pytest.raises(ValueError, match="multiple of check_every_steps"):
        call(total_steps=250)
    with pytest.raises(ValueError, match="must divide"):
        call(sample_every=7)
    with pytest.raises(ValueError, match="VACF window"):
        call(vacf_window=3)
    with pytest.raises(ValueError, match="msd_every_steps"):
        call(msd_atoms=[0], msd_every_steps=30)


def test_median_improvement_replica(soft, stiff):
    idx = evaluation.median_improvement_replica(soft, stiff)
    gain = stiff.stable_time_ps - soft.stable_time_ps
    assert gain[idx] == np.sort(gain)[(N_REP - 1) // 2]
    other = run(STIFF, n_chunks=1, key=1)
    with pytest.raises(ValueError, match="not paired"):
        evaluation.median_improvement_replica(soft, other)


def test_temperature_transfer_helper():
    """True potential at 700 K against the reweighted 500 K reference beats the raw 500 K one."""
    sim500 = SIM
    state = sim500.init(
        STIFF, jax.random.PRNGKey(5), initial_positions(16), rescale_velocities=True
    )
    frames = []
    for i in range(14):  # the evaluation's (CHUNK, SAMPLE) shapes: no new compilation
        state, traj = sim500.simulate(STIFF, state, CHUNK, SAMPLE)
        if i >= 2:
            frames.append(np.asarray(traj.positions[1::2]))
    ref_pos = np.concatenate(frames).reshape(-1, 2, 3)
    ref_e = np.asarray(jax.vmap(lambda r: energy_fn(STIFF, r))(jnp.asarray(ref_pos)))
    grid = dict(r_max=H_KW["r_max"], n_bins=H_KW["n_bins"])
    out = evaluation.evaluate_temperature_transfer(
        make_sim(700.0),
        STIFF,
        initial_positions(16),
        jax.random.PRNGKey(6),
        reference_positions=ref_pos,
        reference_energies=ref_e,
        reference_temperature_kelvin=500.0,
        sigma=H_KW["sigma"],
        stable_fn=stable_fn(0.5),
        total_steps=1200,
        check_every_steps=CHUNK,
        sample_every=SAMPLE,
        progress=False,
        **grid,
    )
    assert out.temperature_kelvin == pytest.approx(700.0)
    assert out.stability.censored.all()
    assert 100 < out.n_eff < ref_pos.shape[0]
    h500, _ = evaluation.reweighted_h_of_r_reference(ref_pos, ref_e, 500.0, 500.0, **grid)
    raw = evaluation.h_of_r_errors(out.stability.observables["h_of_r"], h500)
    assert out.h_of_r_errors["l1"] < raw["l1"]


def test_last_chunks_are_the_frames_before_and_at_the_failure(tmp_path):
    """The kept window ends at each replica's failing chunk (or the run's end) and its frames
    are the simulated ones: the last frame of every chunk equals the replica's positions
    after that chunk (recorded by a second route, the on_chunk hook)."""
    import ase.io

    from stabie_jax import trajectories

    after_chunk = []
    medium = {"log_k": jnp.log(jnp.float32(1.0))}  # some replicas fail, some survive
    res = run(
        medium,
        n_chunks=20,
        keep_last_chunks=True,
        on_chunk=lambda s: after_chunk.append(np.asarray(s.replicas.positions)),
    )
    frames = CHUNK // SAMPLE
    assert res.last_frames.shape == (N_REP, 2 * frames, *initial_positions(N_REP).shape[1:])
    failed = np.flatnonzero(~res.censored)
    assert failed.size >= 2 and res.censored.any()
    for r in range(N_REP):
        # chunks the replica simulated: up to and including its failing chunk
        end = int(round(res.stable_time_ps[r] / res.chunk_ps)) + (0 if res.censored[r] else 1)
        np.testing.assert_array_equal(res.last_frames[r, -1], after_chunk[end - 1][r])
        if end >= 2:
            np.testing.assert_array_equal(res.last_frames[r, frames - 1], after_chunk[end - 2][r])
        assert res.last_frames_time_ps[r, -1] == pytest.approx(end * res.chunk_ps)
        assert np.diff(res.last_frames_time_ps[r][np.isfinite(res.last_frames_time_ps[r])]) == (
            pytest.approx(SAMPLE * 1e-3)
        )
    # Same results as without the window.
    plain = run(medium, n_chunks=20)
    np.testing.assert_array_equal(plain.stable_time_ps, res.stable_time_ps)
    assert plain.last_frames is None

    chosen = trajectories.chosen_replicas(res.stable_time_ps, res.censored)
    assert res.stable_time_ps[chosen["first_failure"]] == res.stable_time_ps[failed].min()
    assert res.stable_time_ps[chosen["median"]] == np.sort(res.stable_time_ps)[(N_REP - 1) // 2]
    paths = trajectories.write_replica_trajectories(
        res, np.full(res.last_frames.shape[2], 18), tmp_path, tag="300K"
    )
    r = chosen["first_failure"]
    assert paths["first_failure"].name == f"300K_first_failure_replica{r}.extxyz"
    images = ase.io.read(paths["first_failure"], index=":")
    finite = np.isfinite(res.last_frames_time_ps[r])
    assert len(images) == finite.sum()
    np.testing.assert_allclose(images[-1].positions, res.last_frames[r, -1], atol=1e-6)
    assert images[-1].info["time_ps"] == pytest.approx(res.last_frames_time_ps[r, -1])
    assert images[0].info["failed"] is True or images[0].info["failed"] == "True"
