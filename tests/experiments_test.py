"""End-to-end: the experiment pipelines run all three stages on built-in data and write
checkpoints, logs and a report with finite numbers (tiny sizes; the real runs are in RESULTS.md).
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_configs

from experiments import config_reader, configs, molecule, stages
from experiments.configs import ala3, aspirin, water
from stabie_jax import checkpoint, hyperparameters, metrics_log, workflows
from stabie_jax import workdir as workdir_lib


def test_aspirin_pipeline_all_stages(tmp_path, monkeypatch):
    config = tiny_configs.get_config()
    config.tensorboard = True
    summary = molecule.run(config, tmp_path)
    assert summary["stages"] == ["pretrain", "stabie", "evaluate"]
    # TensorBoard events for every stage (kept after the evaluation's scratch is removed) and
    # the pretraining learning curve.
    for events in ("pretrain", "stabie", "evaluate/models/baseline/tensorboard/stability"):
        folder = tmp_path / events / ("" if "evaluate" in events else "tensorboard")
        assert list(folder.glob("events.out.tfevents.*")), folder
    assert (tmp_path / "pretrain" / "learning_curve.png").stat().st_size > 1000
    # Trajectories of the median (and first failed) replica per model and temperature, linked
    # from the report.
    import ase.io

    traj = sorted((tmp_path / "evaluate" / "models" / "baseline" / "trajectories").iterdir())
    names = [p.name for p in traj]
    assert any(n.startswith("500K_median_replica") for n in names), names
    assert any(n.startswith("700K_median_replica") for n in names), names
    images = ase.io.read(traj[-1], index=":")
    assert len(images) >= 2 and len(images[0]) == 21 and "time_ps" in images[0].info
    report_md = (tmp_path / "evaluate" / "report.md").read_text()
    assert (
        "## Trajectories" in report_md and "models/baseline/trajectories/500K_median" in report_md
    )
    for name in (stages.PRETRAINED_MODEL, stages.STABIE_MODEL):
        meta = checkpoint.read_model_metadata(tmp_path / name)
        assert meta.kind == "schnet" and len(meta.atomic_numbers) == 21
    records = metrics_log.read_records(tmp_path / "stabie" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    report = json.loads((tmp_path / "evaluate" / "report.json").read_text())
    table = report["results"]["comparison"]
    assert set(table) == {"baseline", "StABlE"}
    details = report["results"]["details"]
    for name, row in table.items():
        # A tiny 2-epoch model may fail in the first chunk: stable times lie in [0, run length].
        assert 0.0 <= row["median stable time (ps)"] <= 0.04 + 1e-9
        assert len(details[name]["stable_time_ps"]) == 4
        assert np.isfinite(row["energy MAE (kcal/mol)"]) and row["energy MAE (kcal/mol)"] > 0
    assert (tmp_path / "evaluate" / "fraction_unstable.png").stat().st_size > 1000
    # The pretrained model is reused, not retrained, when the stage is run again.
    stamp = (tmp_path / stages.PRETRAINED_MODEL / "model.json").stat().st_mtime_ns
    config.stages = "pretrain"
    molecule.run(config, tmp_path)
    assert (tmp_path / stages.PRETRAINED_MODEL / "model.json").stat().st_mtime_ns == stamp

    # A third model under the same protocol: the two finished models are reused from the store,
    # and a copy of the baseline evaluated afresh reproduces the baseline's stable times exactly.
    stored = tmp_path / "evaluate" / "models"
    stamps = {n: (stored / n / "result.json").stat().st_mtime_ns for n in ("baseline", "StABlE")}
    config.stages = "evaluate"
    config.evaluate.extra_models = f"baseline_copy={tmp_path / stages.PRETRAINED_MODEL}"
    molecule.run(config, tmp_path)
    for name, stamp in stamps.items():
        assert (stored / name / "result.json").stat().st_mtime_ns == stamp
    details = json.loads((tmp_path / "evaluate" / "report.json").read_text())["results"]["details"]
    assert set(details) >= {"baseline", "StABlE", "baseline_copy"}
    assert details["baseline_copy"]["stable_time_ps"] == details["baseline"]["stable_time_ps"]
    assert details["baseline_copy"]["h_of_r"] == details["baseline"]["h_of_r"]
    # every model is compared with the baseline pair by pair: the copy ties on every IC
    copy = details["baseline_copy"]["paired_vs_baseline"]
    assert (copy["n_pairs"], copy["tied"], copy["fisher_p"]) == (4, 4, 1.0)
    assert details["StABlE"]["paired_vs_baseline"]["n_pairs"] == 4
    assert details["StABlE"]["transfer_700K"]["paired_vs_baseline"]["n_pairs"] == 4
    # The paper's observable protocol: h(r) of the replica with the median stability gain.
    same = details["baseline_copy"]["median_gain_replica"]
    assert same["stable_time_gain_ps"] == 0.0 and same["h_of_r_mae"] == same["baseline_h_of_r_mae"]
    chosen = details["StABlE"]["median_gain_replica"]
    gains = np.subtract(details["StABlE"]["stable_time_ps"], details["baseline"]["stable_time_ps"])
    assert chosen["stable_time_gain_ps"] == pytest.approx(np.sort(gains)[(len(gains) - 1) // 2])
    assert gains[chosen["replica"]] == pytest.approx(chosen["stable_time_gain_ps"])
    assert (
        "baseline_copy"
        in json.loads((tmp_path / "evaluate" / "report.json").read_text())["results"]["comparison"]
    )
    config.evaluate.extra_models = "no_directory_given"
    with pytest.raises(ValueError, match="NAME=DIR"):
        molecule.run(config, tmp_path)

    # A run refused for other settings leaves the workdir's record of what produced it alone.
    recorded = (tmp_path / "config.json").read_text()
    assert json.loads(recorded)["seed"] == config.seed
    config.seed, config.stages = config.seed + 1, "pretrain"
    with pytest.raises(workdir_lib.StageMismatchError, match=r"seed"):
        molecule.run(config, tmp_path)
    assert (tmp_path / "config.json").read_text() == recorded
    config.seed -= 1
    config.stages = "evaluate"

    _kill_inside_a_model_then_resume(config, tmp_path, monkeypatch)


class _Killed(RuntimeError):
    pass


def _kill_inside_a_model_then_resume(config, tmp_path, monkeypatch):
    """A run killed inside a model's evaluation resumes from that model's last chunk."""
    from stabie_jax.evaluation import stable_times as evaluate_lib  # where the chunk is made

    real = evaluate_lib._make_chunk_fn
    first_chunk_seen = []

    def killing(*args, **kwargs):
        chunk = real(*args, **kwargs)

        def wrapped(state):
            if int(state.chunk) == 1:
                raise _Killed("after the first chunk's checkpoint")
            return chunk(state)

        return wrapped

    def counting(*args, **kwargs):
        chunk = real(*args, **kwargs)

        def wrapped(state):
            first_chunk_seen.append(int(state.chunk))
            return chunk(state)

        return wrapped

    stored = tmp_path / "evaluate" / "models"
    # No replica can fail a 100-Å bond check, so every model runs both chunks and the kill in
    # the second must come (checked below: the baseline left a checkpoint after chunk 1).
    config.evaluate.bond_deviation_angstrom = 100.0
    config.evaluate.checkpoint_every_seconds = 0.0
    config.evaluate.extra_models = f"baseline_copy={tmp_path / stages.PRETRAINED_MODEL}"
    monkeypatch.setattr(evaluate_lib, "_make_chunk_fn", killing)
    with pytest.raises(_Killed):
        molecule.run(config, tmp_path)
    (scratch,) = (stored / "baseline" / "in_progress").iterdir()
    assert checkpoint.latest_step(scratch / "stability" / "checkpoints") == 1
    monkeypatch.setattr(evaluate_lib, "_make_chunk_fn", counting)
    molecule.run(config, tmp_path)
    assert first_chunk_seen[0] == 1  # the baseline resumed after its first chunk
    assert not (stored / "baseline" / "in_progress").exists()
    details = json.loads((tmp_path / "evaluate" / "report.json").read_text())["results"]["details"]
    assert details["baseline_copy"]["stable_time_ps"] == details["baseline"]["stable_time_ps"]
    assert details["baseline_copy"]["h_of_r"] == details["baseline"]["h_of_r"]


def test_ala3_pipeline_on_the_builtin_set(tmp_path):
    """Ac-Ala3-NHMe (NequIP, 42 atoms) from the shipped xTB set through all three stages."""
    c = ala3.get_config("smoke")
    c.progress = False
    c.data.n_train, c.data.n_val, c.data.n_test = 30, 6, 6
    c.pretrain.overrides.max_epochs = 1
    c.stabie.n_replicas = 2
    c.stabie.steps_per_epoch = 20
    c.stabie.sample_every = 10
    c.stabie.minibatch_size = 4
    c.stabie.max_epochs = 2
    c.stabie.f_max = 0.5
    c.stabie.qm_batch_size = 6
    c.evaluate.n_replicas = 2
    c.evaluate.length_ps = 0.02
    c.evaluate.check_every_steps = 20
    c.evaluate.sample_every = 10
    summary = molecule.run(c, tmp_path)
    assert summary["stages"] == ["pretrain", "stabie", "evaluate"]
    meta = checkpoint.read_model_metadata(tmp_path / stages.STABIE_MODEL)
    assert meta.kind == "nequip" and len(meta.atomic_numbers) == 42
    table = json.loads((tmp_path / "evaluate" / "report.json").read_text())["results"]
    for row in table["comparison"].values():
        assert 0.0 <= row["median stable time (ps)"] <= 0.02 + 1e-9
        assert np.isfinite(row["force MAE (kcal/mol/Å)"]) and row["force MAE (kcal/mol/Å)"] > 0


def test_authors_hyperparameters_convert_to_exact_estimator():
    kT, B = 0.0430865, 40
    c = kT * (B - 1) / B
    lr, lam, clip, scale = hyperparameters.exact_hyperparameters("authors", 1e-3, 10.0, 1.0, kT, B)
    assert lr == pytest.approx(1e-3 * c)
    assert lam == pytest.approx(10.0 / c)
    assert clip == pytest.approx(1.0 / c)
    assert scale == pytest.approx(c)
    # A loss averaged over 500 bins has a 500x smaller gradient: its conversion carries it.
    hp = hyperparameters.exact_hyperparameters(
        "authors", 1e-3, 10.0, 1.0, kT, B, reduction="mean", n_observable=500
    )
    assert hp.learning_rate == pytest.approx(1e-3 * c * 500)
    assert hp.qm_weight == pytest.approx(10.0 / (c * 500))
    assert hp.grad_clip_norm == pytest.approx(1.0 / (c * 500))
    with pytest.raises(ValueError, match="n_observable"):
        hyperparameters.exact_hyperparameters("authors", 1e-3, 10.0, 1.0, kT, B, reduction="mean")
    # The update direction is unchanged: alpha_exact * (g_exact + lam_exact g_qm) equals
    # alpha * (c g_exact + lam g_qm) for any gradients.
    g_obs, g_qm = np.array([0.3, -2.0]), np.array([1.5, 0.25])
    np.testing.assert_allclose(lr * (g_obs + lam * g_qm), 1e-3 * (c * g_obs + 10.0 * g_qm))
    assert hyperparameters.exact_hyperparameters("exact", 1e-3, 10.0, 1.0, kT, B) == (
        1e-3,
        10.0,
        1.0,
        1.0,
    )
    with pytest.raises(ValueError, match="hyperparameter_convention"):
        hyperparameters.exact_hyperparameters("paper", 1e-3, 10.0, 1.0, kT, B)


@pytest.mark.parametrize("module", [aspirin, ala3, water])
@pytest.mark.parametrize("variant", ["paper", "cpu", "smoke"])
def test_configs_build_and_are_consistent(module, variant):
    c = module.get_config(variant)
    assert c.stabie.steps_per_epoch % c.stabie.sample_every == 0
    assert c.evaluate.check_every_steps % c.evaluate.sample_every == 0
    config_reader.parse_stages(c.stages)
    with pytest.raises(ValueError, match="unknown stage"):
        config_reader.parse_stages("pretrain,train")


def test_paper_configs_hold_the_paper_settings():
    a, w = aspirin.get_config("paper"), water.get_config("paper")
    assert (a.md.temperature_kelvin, a.md.timestep_fs) == (500.0, 0.5)
    assert (a.stabie.n_replicas, a.stabie.steps_per_epoch, a.stabie.minibatch_size) == (
        128,
        2000,
        40,
    )
    assert (a.stabie.learning_rate, a.stabie.qm_weight) == (1e-3, 10.0)
    assert (a.evaluate.n_replicas, a.evaluate.length_ps) == (256, 300.0)
    assert (w.md.temperature_kelvin, w.md.timestep_fs) == (300.0, 1.0)
    assert (w.stabie.n_replicas, w.stabie.steps_per_epoch, w.stabie.minibatch_size) == (8, 1000, 4)
    assert (w.stabie.learning_rate, w.stabie.qm_weight) == (3e-3, 0.0)
    assert jax.numpy.isclose(w.stabie.min_intermolecular_angstrom, 1.2)


@pytest.mark.slow
def test_sweep_writes_pareto_front(tmp_path):
    from experiments import sweep

    config = tiny_configs.get_config()
    result = sweep.run_sweep(config, tmp_path, ["1e-4", "1e-3"], ["10"])
    assert [(p["alpha"], p["lambda"]) for p in result["points"]] == [(1e-4, 10.0), (1e-3, 10.0)]
    assert any(p["pareto_optimal"] for p in result["points"])
    assert all(np.isfinite(p["force_mae_ev_per_angstrom"]) for p in result["points"])
    assert (tmp_path / "pareto_front.png").stat().st_size > 1000
    assert json.loads((tmp_path / "sweep.json").read_text())["points"][0]["alpha"] == 1e-4


@pytest.mark.parametrize("system", ["aspirin", "ala3", "water"])
def test_device_flags_take_effect_before_model_code_is_imported(system, tmp_path):
    """``--host_devices=3`` must give three devices: importing jax_md starts JAX's backend, so
    the entry points import the model code only after the flags are applied. (The bogus stage
    stops the run right after the device line is logged.)"""
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            f"experiments.{system}",
            f"--config=experiments/configs/{system}.py:smoke",
            f"--workdir={tmp_path}",
            "--config.stages=no_such_stage",
            "--host_devices=3",
            "-v",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=pathlib.Path(__file__).resolve().parents[1],
    )
    assert "CpuDevice(id=2)" in done.stderr, done.stderr[-3000:]
    assert "unknown stage" in done.stderr


@pytest.mark.parametrize("layout", ["auto", "vmap"])
def test_default_layout_gives_one_cpu_device_per_core(layout, tmp_path):
    """Without ``--host_devices``, ``md.layout=auto`` starts one CPU device per physical core
    (the fast CPU layout); ``md.layout=vmap`` keeps JAX's single CPU device."""
    import os
    import re
    import subprocess
    import sys

    from experiments import app

    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.aspirin",
            "--config=experiments/configs/aspirin.py:smoke",
            f"--workdir={tmp_path}",
            "--config.stages=no_such_stage",
            f"--config.md.layout={layout}",
            "-v",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=pathlib.Path(__file__).resolve().parents[1],
    )
    line = next((x for x in done.stderr.splitlines() if "JAX " in x and " on [" in x), None)
    assert line is not None, done.stderr[-3000:]
    n_devices = len(re.findall(r"CpuDevice\(id=\d+\)", line))
    assert n_devices == (app.physical_cores() if layout == "auto" else 1), line
    assert 1 <= app.physical_cores() <= os.cpu_count()


def test_replica_batch_size_from_the_layout_settings():
    """An explicit md.replica_batch_size wins; layout "vmap" is no chunks; "auto" on this
    process's devices is stabie_jax.md.auto_replica_batch_size."""
    import jax

    from stabie_jax import md

    config = aspirin.get_config("cpu")
    assert config.md.layout == "auto" and config.md.replica_batch_size == 0
    assert config_reader.replica_batch_size(config, 32) == md.auto_replica_batch_size(
        32, jax.devices()
    )
    config.md.layout = "vmap"
    assert config_reader.replica_batch_size(config, 32) is None
    config.md.replica_batch_size = 4
    assert config_reader.replica_batch_size(config, 32) == 4


def test_estimator_chunk_size_from_the_layout_settings():
    """The estimator's frame chunks follow the same rules: explicit wins, "vmap" is one pass,
    "auto" is stabie_jax.md.auto_frame_chunk_size; the chunk keys are layout, not results."""
    import jax

    from experiments import stages
    from stabie_jax import md

    config = aspirin.get_config("cpu")
    assert config.stabie.estimator_chunk_size == 0 and config.stabie.qm_chunk_size == 0
    assert config_reader.estimator_chunk_size(config, 32) == md.auto_frame_chunk_size(
        32, jax.devices()
    )
    inputs = config_reader.molecule_stabie_inputs(config)
    assert inputs.qm_chunk_size is None
    config.md.layout = "vmap"
    assert config_reader.estimator_chunk_size(config, 32) is None
    config.stabie.estimator_chunk_size = 8
    config.stabie.qm_chunk_size = 10
    assert config_reader.estimator_chunk_size(config, 32) == 8
    assert config_reader.molecule_stabie_inputs(config).qm_chunk_size == 10
    assert {"estimator_chunk_size", "qm_chunk_size"} <= set(stages._RUN_ONLY["stabie"])
    config.stabie.qm_chunk_size = -1
    with pytest.raises(ValueError, match="stabie.qm_chunk_size"):
        configs.check_config(config)


def test_water_refuses_a_qm_weight_it_cannot_use(tmp_path):
    from experiments import periodic

    config = water.get_config("smoke")
    config.stabie.qm_weight = 1.0
    with pytest.raises(ValueError, match="stabie.qm_weight"):
        periodic.run_stabie_stage(tmp_path / "no_model", None, config, tmp_path, None)
    with pytest.raises(ValueError, match="stabie.qm_weight"):  # and at setup, before the data
        periodic.run(config, tmp_path)
    assert not (tmp_path / "pretrain").exists()


def test_chain_thermostat_time_from_config_matches_the_authors_period():
    """A config choosing JAX-MD's chain gets tau = sqrt(2)·ttime·dt (the authors' thermostat
    period); a config saved before md.integrator existed is read as it ran (tau = ttime·dt)."""
    from stabie_jax import units

    config = aspirin.get_config("cpu")
    config.md.integrator = "nose_hoover_chain"
    dt = units.fs_to_internal(config.md.timestep_fs)
    kw = config_reader.integrator_kwargs(config)
    assert kw["integrator"] == "nose_hoover_chain"
    np.testing.assert_allclose(kw["tau"], np.sqrt(2.0) * 20 * dt, rtol=1e-12)
    inputs = config_reader.molecule_stabie_inputs(config)
    np.testing.assert_allclose(inputs.chain_tau_factor, np.sqrt(2.0), rtol=1e-12)
    del config.md["integrator"]
    assert config_reader.integrator_kwargs(config)["integrator"] == "nose_hoover_chain"
    np.testing.assert_allclose(config_reader.integrator_kwargs(config)["tau"], 20 * dt, rtol=1e-12)


def test_evaluation_reloads_the_data_with_the_configured_reader_options(monkeypatch):
    """The VACF reference reload used to drop data.energy_unit/labels ("energy unit unknown"
    for an extxyz file that needs it)."""
    seen = {}

    def fake_load(source, **kwargs):
        seen.update(kwargs, source=source)
        return type("D", (), {"velocities": None, "time_fs": None})()

    monkeypatch.setattr(config_reader.data, "load_dataset", fake_load)
    config = aspirin.get_config("smoke")
    config.data.source = "mine.extxyz"
    config.data.energy_unit = "eV"
    config.data.labels = "md17"
    config.evaluate.vacf_window_steps = 100
    molecule = type("M", (), {"atomic_numbers": np.array([6, 1])})()
    assert config_reader.molecule_evaluation(config, molecule).reference_vacf is None
    assert seen == {
        "source": "mine.extxyz",
        "download": False,
        "energy_unit": "eV",
        "labels": "md17",
    }
    assert config_reader.reader_options(config.data) == {"labels": "md17", "energy_unit": "eV"}


def test_reference_vacf_of_consecutive_frames_matches_numpy():
    """The dataset's VACF on its own frame spacing, over the evaluation's window of steps."""
    import dataclasses

    from stabie_jax import data, workflows

    rng = np.random.default_rng(3)
    v = rng.normal(size=(50, 4, 3))
    frames = data.Dataset(
        positions=rng.normal(size=(50, 4, 3)),
        energies=None,
        forces=None,
        atomic_numbers=np.array([6, 6, 1, 1]),
        velocities=v,
        time_fs=np.arange(50)[::-1] * 2.0,  # reversed: sorted by time first
    )
    lag, vacf = workflows.reference_vacf_of(frames, 0.5, 40)  # 40 steps of 0.5 fs = 10 frames
    np.testing.assert_allclose(lag, 2.0 * np.arange(10))
    w = v[::-1]
    expected = [np.mean(np.sum(w[:41] * w[k : k + 41], -1)) for k in range(10)]  # 41 origins
    np.testing.assert_allclose(vacf / vacf[0], np.asarray(expected) / expected[0], rtol=1e-5)
    uneven = dataclasses.replace(frames, time_fs=np.r_[0.0, np.cumsum(rng.uniform(1, 2, 49))])
    assert workflows.reference_vacf_of(uneven, 0.5, 40) is None


def test_water_refuses_a_neighbour_capacity_the_data_exceeds():
    from experiments import periodic
    from stabie_jax import md
    from stabie_jax.models.gemnet_table import max_neighbors_in_frames

    config = water.get_config("smoke")
    data = periodic.load_data(config)
    frames = data.train.positions[:3]
    most = max_neighbors_in_frames(frames, md.periodic_space(data.box).displacement_fn, 4.0)
    # Independent count: minimum image in the cubic box, numpy.
    d = frames[:, :, None, :] - frames[:, None, :, :]
    d -= data.box * np.round(d / data.box)
    r = np.linalg.norm(d, axis=-1)
    n = ((r < 4.0) & (r > 0)).sum(-1).max()
    assert most == n and 10 < most < 80
    periodic.check_neighbor_capacity(config, data)  # the shipped capacity fits
    config.model.hparams.neighbor_capacity = most - 1
    with pytest.raises(ValueError, match=r"hparams\.neighbor_capacity = \d+, but an atom"):
        periodic.check_neighbor_capacity(config, data)


def test_n_eff_curve_is_taken_from_the_reference_frames_temperature():
    """500 K frames evaluated in a 700 K run: N_eff is all frames at 500 K, fewer at 700 K."""
    from stabie_jax import units
    from stabie_jax.workflows import molecule_report

    rng = np.random.default_rng(0)
    energies = rng.normal(scale=10 * units.kT(500.0), size=400)  # a broad energy spread
    config = aspirin.get_config("cpu")
    assert config.md.temperature_kelvin == 700.0 and config.data.reference_temperature_kelvin == 500
    reference_temperature = config_reader.reference_temperature(config)
    curve = molecule_report.n_eff_curve(energies, reference_temperature)
    temps, n_eff = curve["temperature_kelvin"], curve["n_eff"]
    assert curve["sample_temperature_kelvin"] == 500.0
    assert temps[int(np.argmax(n_eff))] == pytest.approx(500.0)
    assert n_eff.max() == pytest.approx(400.0)
    assert np.interp(700.0, temps, n_eff) < 0.9 * 400


def test_reanchor_model_energy_shifts_energy_and_keeps_forces(tmp_path):
    """Energies move by exactly mean(E_ref - E_model) on the given frames; forces are unchanged."""
    from checkpoint_test import toy_model_and_metadata
    from jax_md import space as jmd_space

    from stabie_jax import checkpoint as ckpt
    from stabie_jax.data import Dataset

    module, params, meta = toy_model_and_metadata()
    z = meta.atomic_numbers
    ckpt.save_model_checkpoint(tmp_path / "m", params, meta)
    pot = ckpt.make_model_potential(module, meta, jmd_space.free()[0])
    rng = np.random.default_rng(0)
    base = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    pos = (base + rng.normal(scale=0.05, size=(6, 3, 3))).astype(np.float32)
    e_model = np.array([float(pot.energy_fn(params, jnp.asarray(p))) for p in pos])
    f_model = np.stack([np.asarray(pot.force_fn(params, jnp.asarray(p))) for p in pos])
    offsets = np.array([0.31, 0.29, 0.35, 0.25, 0.30, 0.30])  # E_ref - E_model, mean 0.30
    train = Dataset(
        positions=pos,
        energies=e_model + offsets,
        forces=f_model,
        atomic_numbers=np.asarray(z),
    )
    c = workflows.reanchor_model_energy(tmp_path / "m", train)
    assert c == pytest.approx(0.30, abs=2e-4)  # float32 energies of ~-460 eV
    loaded = ckpt.load_model_checkpoint(tmp_path / "m")
    assert loaded.metadata.extra["energy_reanchor"]["offset_ev"] == pytest.approx(c)
    assert sum(loaded.metadata.energy_shift[k] for k in z) == pytest.approx(-13.6 * 2 - 432.1 + c)
    pot2 = ckpt.make_model_potential(loaded.module, loaded.metadata, jmd_space.free()[0])
    for p, e, f in zip(pos, e_model, f_model, strict=True):
        assert float(pot2.energy_fn(loaded.params, jnp.asarray(p))) == pytest.approx(
            e + c, abs=1e-4
        )
        np.testing.assert_array_equal(np.asarray(pot2.force_fn(loaded.params, jnp.asarray(p))), f)


def _gemnet(hparams, atomic_numbers, capacity):
    """An untrained GemNet-T of these hyperparameters with another table capacity."""
    from stabie_jax.models.registry import build_model, init_params, model_hparams

    hparams = {**dict(hparams), "neighbor_capacity": int(capacity)}
    module = build_model("gemnet_t", **hparams)
    params = init_params(module, atomic_numbers, jax.random.PRNGKey(0))
    metadata = checkpoint.ModelMetadata(
        kind="gemnet_t",
        hparams=model_hparams(module),
        atomic_numbers=tuple(int(z) for z in atomic_numbers),
        cutoff_angstrom=float(module.cutoff),
    )
    return checkpoint.LoadedModel(module, params, metadata)


def test_water_md_stages_report_a_table_overflow_instead_of_instability():
    """The simulator that water StABlE and evaluation build checks replicas that turn
    non-finite: a capacity below the liquid's neighbour count stops with the value to set."""
    from experiments import periodic
    from stabie_jax import md
    from stabie_jax.models.gemnet_table import max_neighbors_in_frames

    config = water.get_config("smoke")
    data = periodic.load_data(config)
    z = np.asarray(data.train.atomic_numbers)
    most = max_neighbors_in_frames(
        data.train.positions[:1], md.periodic_space(data.box).displacement_fn, 4.0
    )
    loaded = _gemnet(config.model.hparams, z, most - 1)
    md_settings = config_reader.periodic_md(config)
    _, sim, _, _ = workflows.periodic_simulator(loaded, data, md_settings, 300.0, 10, 2)
    with jax.debug_nans(False):  # the overflowing table gives NaN forces from the start
        start = jnp.asarray(data.train.positions[:2])
        state = sim.init(loaded.params, jax.random.PRNGKey(1), start)
        with pytest.raises(ValueError, match=r"neighbor_capacity=\d+\. Set"):
            sim.simulate(loaded.params, state, 2)


def test_molecule_evaluation_simulator_reports_a_table_overflow():
    from stabie_jax import md
    from stabie_jax.workflows import molecule_evaluation

    config = aspirin.get_config("smoke")
    hparams = dict(
        cutoff=5.0, emb_size_atom=8, emb_size_edge=8, emb_size_trip=4, emb_size_rbf=4,
        emb_size_cbf=4, emb_size_bil_trip=4, num_blocks=1, num_spherical=3, num_radial=4,
    )  # fmt: skip
    from stabie_jax import data

    frames = data.load_dataset(config.data.source)
    z = np.asarray(frames.atomic_numbers)
    loaded = _gemnet(hparams, z, 3)  # aspirin has ~20 atoms within 5 Å of every atom
    potential = checkpoint.make_model_potential(
        loaded.module, loaded.metadata, md.free_space().displacement_fn
    )
    settings = config_reader.molecule_evaluation(config, None)._replace(
        run=config_reader.evaluation_run(config)._replace(n_replicas=2)
    )
    sim = molecule_evaluation.molecule_evaluation_simulator(
        potential, loaded.module, z, 500.0, settings
    )
    with jax.debug_nans(False):
        state = sim.init(loaded.params, jax.random.PRNGKey(1), jnp.asarray(frames.positions[:2]))
        with pytest.raises(ValueError, match=r"neighbor_capacity=3\. Set"):
            sim.simulate(loaded.params, state, 2)


def test_pretraining_refuses_frames_that_overflow_the_table_before_any_compute(tmp_path):
    """Pretraining a GemNet-T whose table is smaller than the data's neighbour count stops with
    the value to set (it would otherwise report a non-finite loss and suggest the learning
    rate)."""
    from stabie_jax import data, md
    from stabie_jax.models.gemnet_table import max_neighbors_in_frames

    config = aspirin.get_config("smoke")
    frames = data.load_dataset(config.data.source)
    train, val = frames.subset(np.arange(8)), frames.subset(np.arange(8, 12))
    most = max_neighbors_in_frames(
        np.concatenate([train.positions, val.positions]), md.free_space().displacement_fn, 5.0
    )
    hparams = dict(
        cutoff=5.0, emb_size_atom=8, emb_size_edge=8, emb_size_trip=4, emb_size_rbf=4,
        emb_size_cbf=4, emb_size_bil_trip=4, num_blocks=1, num_spherical=3, num_radial=4,
        neighbor_capacity=most - 1,
    )  # fmt: skip
    config.pretrain.overrides.max_epochs = 1
    settings = config_reader.pretrain_settings_from_config(config)
    suggested = int(np.ceil(1.25 * most))
    message = rf"training frames: an atom has {most} neighbours .*\.neighbor_capacity={suggested} "
    with pytest.raises(ValueError, match=message):
        stages.run_pretrain(
            train, val, None, kind="gemnet_t", hparams=hparams, settings=settings,
            workdir=tmp_path, seed=0,
        )  # fmt: skip
    assert not (tmp_path / "pretrain").exists()  # refused before the loop started


def data_box(config):
    from experiments import periodic

    return periodic.load_data(config).box


def test_water_pipeline_on_the_builtin_set(tmp_path):
    """64 SPC/Fw waters (GemNet-T, periodic, localized O–H estimator) through all three stages."""
    from experiments import periodic

    c = water.get_config("smoke")
    c.progress = False
    c.data.n_train, c.data.n_val, c.data.n_test = 8, 2, 2
    c.pretrain.overrides.max_epochs = 1
    c.stabie.steps_per_epoch = 20
    c.stabie.sample_every = 10
    c.stabie.max_epochs = 2
    c.stabie.max_learning_epochs = 1
    c.evaluate.length_ps = 0.04
    c.evaluate.check_every_steps = 20
    summary = periodic.run(c, tmp_path)
    assert summary["stages"] == ["pretrain", "stabie", "evaluate"]
    meta = checkpoint.read_model_metadata(tmp_path / stages.STABIE_MODEL)
    assert meta.kind == "gemnet_t" and len(meta.atomic_numbers) == 192
    records = metrics_log.read_records(tmp_path / "stabie" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    report = json.loads((tmp_path / "evaluate" / "report.json").read_text())
    assert set(report["results"]["comparison"]) >= {"baseline", "StABlE"}
    assert json.loads((tmp_path / "config.json").read_text())["system"] == c.system
    # The trajectories carry the periodic cell.
    import ase.io

    (median,) = (tmp_path / "evaluate" / "models" / "StABlE" / "trajectories").glob("*median*")
    frame = ase.io.read(median, index=-1)
    assert frame.pbc.all() and len(frame) == 192
    np.testing.assert_allclose(frame.cell.lengths(), np.broadcast_to(np.asarray(data_box(c)), 3))


def test_a_reweighted_reference_with_few_effective_frames_is_flagged():
    from stabie_jax.workflows import molecule_report

    numbers = {
        "baseline": {"transfer_700K": {"n_eff": 13.7}, "transfer_350K": {"n_eff": 4200.0}},
        "StABlE": {"transfer_700K": {"n_eff": 13.7}},
        "n_eff_curve": {"n_eff": [1.0]},
    }
    (note,) = molecule_report.small_n_eff_notes(numbers, 500.0)
    assert "700K h(r) reference" in note and "N_eff = 13.7" in note and "500 K" in note


def test_own_extxyz_molecule_through_every_stage(tmp_path):
    """A user's file: 80 aspirin frames as MACE-style extxyz (REF_energy / REF_forces, eV),
    pretrained, StABlE-trained and evaluated with the generic config and the same reader options
    in every stage."""
    import ase
    import ase.io

    from experiments import custom
    from experiments.configs import custom as custom_config
    from stabie_jax import data

    frames = data.load_dataset(aspirin.get_config("smoke").data.source).subset(np.arange(80))
    images = []
    for r, e, f in zip(frames.positions, frames.energies, frames.forces, strict=True):
        atoms = ase.Atoms(numbers=frames.atomic_numbers, positions=r)
        atoms.info["REF_energy"] = float(e)
        atoms.arrays["REF_forces"] = np.asarray(f)
        images.append(atoms)
    path = tmp_path / "my_aspirin.extxyz"
    ase.io.write(path, images, format="extxyz")
    # The generic config (experiments/configs/custom.py) at the tiny test size.
    config = custom_config.get_config("smoke")
    config.progress = False
    config.data.source = str(path)
    config.data.energy_unit = "eV"
    config.data.energy_key, config.data.forces_key = "REF_energy", "REF_forces"
    config.data.n_train, config.data.n_val, config.data.n_test = 40, 10, 10
    config.data.reference_temperature_kelvin = 500.0
    config.md.temperature_kelvin = 500.0
    config.pretrain.overrides.max_epochs = 2
    config.stabie.f_max = 0.25
    config.evaluate.check_every_steps = 40
    config.evaluate.transfer_temperatures_kelvin = (700.0,)
    summary = custom.run(config, tmp_path / "run")
    assert (
        json.loads((tmp_path / "run" / "config.json").read_text())["observable"]["kind"] == "h_of_r"
    )
    assert summary["stages"] == ["pretrain", "stabie", "evaluate"]
    report = json.loads((tmp_path / "run" / "evaluate" / "report.json").read_text())
    assert str(path) in report["title"]
    errors = report["results"]["details"]["baseline"]["test_errors"]
    assert 0 < errors["energy_mae_kcal_per_mol"] < 50  # eV labels read as eV, not kcal/mol
