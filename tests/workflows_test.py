"""The workflows from Python, with explicit arguments and no config object."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from stabie_jax import checkpoint, data, hyperparameters, observables, units, workflows
from stabie_jax.models.registry import build_model, init_params, model_hparams

TINY_SCHNET = dict(hidden=16, num_filters=16, num_interactions=1, num_gaussians=10, cutoff=4.0)


@pytest.fixture(scope="module")
def molecule():
    return data.load_molecule_data(
        "builtin:aspirin_xtb_500K",
        test_source="",
        reader_options={},
        download=False,
        n_train=40,
        n_val=10,
        n_test=10,
        split_seed=0,
        contiguous=False,
        max_reference_frames=200,
    )


def _untrained_checkpoint(path, atomic_numbers, energies):
    module = build_model("schnet", **TINY_SCHNET)
    params = init_params(module, atomic_numbers, jax.random.PRNGKey(0))
    shift = float(np.mean(energies)) / len(atomic_numbers)
    metadata = checkpoint.ModelMetadata(
        kind="schnet",
        hparams=model_hparams(module),
        atomic_numbers=tuple(int(z) for z in atomic_numbers),
        cutoff_angstrom=float(module.cutoff),
        energy_shift={int(z): shift for z in set(atomic_numbers.tolist())},
    )
    checkpoint.save_model_checkpoint(path, params, metadata)
    return params


def test_load_molecule_data_keeps_the_test_frames_out(molecule):
    assert (molecule.train.n_frames, molecule.val.n_frames, molecule.test.n_frames) == (40, 10, 10)
    test = {p.tobytes() for p in np.asarray(molecule.test.positions)}
    for split in (molecule.train, molecule.val, molecule.reference):
        assert not test & {p.tobytes() for p in np.asarray(split.positions)}
    assert molecule.reference.n_frames == 200
    assert len(molecule.bonds.bonds) == 21  # aspirin's covalent bonds


def test_train_molecule_runs_stabie_from_a_checkpoint(tmp_path, molecule):
    z = molecule.atomic_numbers
    params0 = _untrained_checkpoint(tmp_path / "start", z, molecule.train.energies)
    inputs = workflows.MoleculeStabieInputs(
        temperature_kelvin=500.0,
        timestep_fs=0.5,
        thermostat_ttime_steps=20,
        rescale_velocities=True,
        n_replicas=4,
        history_length=2,
        learning=workflows.LearningInputs(
            minibatch_size=4,
            hyperparameter_convention="authors",
            observable_reduction="sum",
            observable_vjp="global",
            learning_rate=1e-3,
            qm_weight=10.0,
            grad_clip_norm=1.0,
            settings_kwargs=dict(
                steps_per_epoch=20,
                sample_every=5,
                max_epochs=3,
                max_learning_epochs=2,
                f_max=0.25,
            ),
        ),
        qm_batch_size=10,
        qm_batches_per_step=1,
        qm_energy_weight=0.05,
        qm_force_weight=0.95,
        bond_deviation_angstrom=0.25,
        integrator="authors_nose_hoover",
    )
    system = observables.ObservableSystem(
        atomic_numbers=z,
        reference_positions=molecule.reference.positions,
        temperature_kelvin=500.0,
        reference_energies=molecule.reference.energies,
    )
    observable = observables.get("h_of_r", trainable=True).build(
        system, {"r_max_angstrom": 6.0, "n_bins": 60, "sigma_angstrom": 0.1}
    )
    model_dir = workflows.train_molecule(
        tmp_path / "start",
        molecule,
        inputs,
        observable=observable,
        run_dir=tmp_path / "run",
        model_dir=tmp_path / "trained",
        seed=0,
        metadata={"note": "from python"},
        progress=False,
        shard=False,
    )
    assert model_dir == tmp_path / "trained"
    loaded = checkpoint.load_model_checkpoint(model_dir)
    run = loaded.metadata.extra["stabie"]
    assert run["note"] == "from python"
    ic = run["initial_frames"]
    assert len(set(ic)) == 4 and all(0 <= i < 40 for i in ic)
    expected = hyperparameters.authors_hyperparameters_to_exact(1e-3, 10.0, 1.0, units.kT(500.0), 4)
    assert run["exact_learning_rate"] == pytest.approx(expected.learning_rate)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    learning = [r for r in records if r["phase"] == "learning"]
    # an untrained model leaves the 0.25-Å band within 20 steps: the loop reaches learning
    assert learning and any(r["step_applied"] for r in learning), records
    for r in learning:
        assert 0 < r["n_samples"] <= 4 * 4
        assert np.isfinite(r["obs_loss"]) and np.isfinite(r["qm_loss"])
    moved = jax.tree.map(
        lambda a, b: float(np.max(np.abs(np.asarray(a) - b))), loaded.params, params0
    )
    assert max(jax.tree.leaves(moved)) > 0


def test_periodic_min_intermolecular_criterion_matches_numpy():
    periodic = workflows.load_periodic_data(
        "builtin:water_spcfw_64_300K",
        reader_options={},
        download=False,
        n_train=10,
        n_val=2,
        n_test=2,
        split_seed=0,
        contiguous=True,
        max_reference_frames=20,
    )
    assert len(np.unique(periodic.molecule_ids)) == 64
    assert periodic.neighbourhoods.shape == (64, 3)  # O first, then its two H
    x = np.asarray(periodic.train.positions[:3], np.float64)
    box = np.asarray(periodic.box, np.float64)
    d = x[:, :, None, :] - x[:, None, :, :]
    d -= box * np.round(d / box)
    r = np.linalg.norm(d, axis=-1)
    other = periodic.molecule_ids[:, None] != periodic.molecule_ids[None, :]
    closest = np.where(other, r, np.inf).min(axis=(0, 1, 2))  # over frames and pairs
    traj = type("T", (), {"positions": x[:, None]})()  # [F, R=1, N, 3]
    below = workflows.periodic_stable_fn("min_intermolecular", closest - 1e-4, periodic)
    above = workflows.periodic_stable_fn("min_intermolecular", closest + 1e-4, periodic)
    assert bool(np.asarray(below(traj))[0]) and not bool(np.asarray(above(traj))[0])
    with pytest.raises(ValueError, match="unknown criterion"):
        workflows.periodic_stable_fn("nonsense", 1.0, periodic)


def test_train_periodic_refuses_a_qm_weight_before_loading_anything(tmp_path):
    inputs = workflows.PeriodicStabieInputs(
        temperature_kelvin=300.0,
        md=workflows.PeriodicMD(1.0, 2, 0.5, {}),
        n_replicas=2,
        learning=workflows.LearningInputs(4, "authors", "sum", "global", 3e-3, 1.0, 1.0, {}),
        criterion="min_intermolecular",
        threshold_angstrom=1.2,
        n_bins=5,
        per_bin=2,
        rescale_velocities=True,
    )
    with pytest.raises(ValueError, match="stabie.qm_weight"):
        workflows.train_periodic(
            tmp_path / "missing", None, inputs, None, seed=0, run_dir=tmp_path,
            model_dir=tmp_path / "m", metadata={}, progress=False, shard=False,
        )  # fmt: skip
    with pytest.raises(ValueError, match="rdf_mae"):
        workflows.train_periodic(
            tmp_path / "missing", None,
            inputs._replace(learning=inputs.learning._replace(qm_weight=0.0), criterion="rdf_mae"),
            None, seed=0, run_dir=tmp_path, model_dir=tmp_path / "m", metadata={},
            progress=False, shard=False,
        )  # fmt: skip


def test_evaluate_molecule_models_pairs_two_models_from_python(tmp_path, molecule):
    """The paper's evaluation without a config: the same checkpoint under two names gets the
    same initial structures and momenta, so every pair ties; the report is written."""
    z = molecule.atomic_numbers
    _untrained_checkpoint(tmp_path / "model", z, molecule.train.energies)
    loaded = checkpoint.load_model_checkpoint(tmp_path / "model")
    run = workflows.EvaluationRun(
        temperature_kelvin=500.0,
        timestep_fs=0.5,
        length_ps=0.02,
        check_every_steps=10,
        sample_every=5,
        n_replicas=3,
        momenta_seed=7,
        stop_fraction=1.0,
        progress=False,
        save_trajectories=False,
    )
    assert run.total_steps == 40
    settings = workflows.MoleculeEvaluation(
        run=run,
        bond_deviation_angstrom=0.5,
        integrator_kwargs={
            "integrator": "langevin",
            "langevin_gamma": units.per_ps_to_internal(0.1),
        },
        replica_batch_size=None,
        reference_temperature_kelvin=500.0,
        h_of_r_r_max_angstrom=6.0,
        h_of_r_n_bins=60,
        h_of_r_sigma_angstrom=0.1,
    )
    models = {"baseline": loaded, "again": loaded}
    out = tmp_path / "evaluate"
    results, numbers = workflows.evaluate_molecule_models(
        settings, molecule, models, out, lambda name, m: f"{name}-v1"
    )
    assert set(results) == {"baseline", "baseline_transfer", "again", "again_transfer"}
    np.testing.assert_array_equal(
        results["again"].stable_time_ps, results["baseline"].stable_time_ps
    )
    paired = numbers["again"]["paired_vs_baseline"]
    assert (paired["longer"], paired["shorter"], paired["tied"]) == (0, 0, 3)
    errors = numbers["baseline"]["test_errors"]
    assert errors["energy_mae_kcal_per_mol"] > 0  # an untrained model on 10 test frames
    summary = workflows.write_molecule_report(
        settings, molecule, results, numbers, out, system="aspirin", title="from python"
    )
    assert set(summary) == {"baseline", "again"} and "stable_time_ps" not in summary["again"]
    report = json.loads((out / "report.json").read_text())
    assert report["title"] == "from python"
    assert set(report["results"]["comparison"]) == {"baseline", "again"}
    assert (out / "fraction_unstable.png").exists() and (out / "h_of_r.png").exists()
    # finished models are stored under their fingerprint: a rerun reads them (JSON numbers)
    assert isinstance(numbers["baseline"]["stable_time_ps"], np.ndarray)
    again, stored = workflows.evaluate_molecule_models(
        settings, molecule, models, out, lambda name, m: f"{name}-v1"
    )
    assert isinstance(stored["baseline"]["stable_time_ps"], list)
    assert stored["baseline"]["stable_time_ps"] == results["baseline"].stable_time_ps.tolist()
