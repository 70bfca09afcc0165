"""Tests of energy/force pretraining: learning, exact resume, early stopping, shift/scale."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from jax_md import space
from toy_model import PairMLP, lj_dataset

from stabie_jax import units
from stabie_jax.checkpoint import latest_step
from stabie_jax.losses import LabelledFrames
from stabie_jax.models.potential import make_potential
from stabie_jax.models.registry import init_params
from stabie_jax.models.scale_shift import fit_energy_shift, force_rms
from stabie_jax.plateau import plateau_init, plateau_update
from stabie_jax.pretrain import pretrain, recipe
from stabie_jax.pretrain.frames import _batches

Z_AR3 = np.array([18, 18, 18])


def lj_splits(*sizes, seed=0):
    pos, e, f = lj_dataset(sum(sizes), n_atoms=3, seed=seed)
    cut = np.cumsum([0, *sizes])
    return [
        LabelledFrames(pos[a:b], e[a:b], f[a:b]) for a, b in zip(cut[:-1], cut[1:], strict=True)
    ]


def toy_setup(hidden=16):
    module = PairMLP(hidden=hidden, cutoff=4.5)
    pot = make_potential(module, Z_AR3, space.free()[0])
    return pot, init_params(module, Z_AR3, jax.random.PRNGKey(0))


def read_metrics(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_pretraining_reduces_force_mae_on_lennard_jones_trimer(tmp_path):
    train, val, test = lj_splits(48, 16, 16)
    pot, params = toy_setup()
    settings = recipe(
        "schnet",
        learning_rate=1e-2,
        batch_size=8,
        max_epochs=40,
        warmup_steps=10,
        energy_weight=0.2,
        force_weight=0.8,
        checkpoint_every_epochs=10,
        progress_bar=False,
    )
    trained, report = pretrain(
        pot,
        params,
        train,
        val,
        atomic_numbers=Z_AR3,
        settings=settings,
        workdir=tmp_path,
        test=test,
    )
    metrics = read_metrics(tmp_path)
    initial = metrics[0]["val_force_mae_ev_per_angstrom"]
    assert [m["epoch"] for m in metrics] == list(range(41))
    final = report["val"]["force_mae_ev_per_angstrom"]
    assert final < initial / 5.0, (initial, final)
    assert report["test"]["force_mae_ev_per_angstrom"] < initial / 4.0
    # The returned parameters are the best-validation ones and reproduce the report.
    assert final == pytest.approx(
        min(m["val_force_mae_ev_per_angstrom"] for m in metrics[1:]), rel=1e-5
    )
    for split in ("val", "test"):
        r = report[split]
        assert r["energy_mae_kcal_per_mol"] == pytest.approx(
            units.ev_to_kcal_per_mol(r["energy_mae_ev"])
        )
        assert r["force_mae_kcal_per_mol_per_angstrom"] == pytest.approx(
            units.ev_to_kcal_per_mol(r["force_mae_ev_per_angstrom"])
        )
    assert json.loads((tmp_path / "report.json").read_text())["test"] == report["test"]
    assert latest_step(tmp_path / "checkpoints") == 40
    assert report["energy_scale"] == pytest.approx(force_rms(train.forces))
    # Single composition: the shift of the molecule is the mean training energy.
    assert 3 * report["energy_shift"]["18"] == pytest.approx(float(np.mean(train.energies)))
    assert jax.tree.structure(trained) == jax.tree.structure(params)


def test_resume_after_interruption_is_bit_identical(tmp_path):
    train, val = lj_splits(20, 8)
    pot, params = toy_setup(hidden=4)
    base = recipe(
        "schnet",
        learning_rate=5e-3,
        batch_size=8,
        warmup_steps=3,
        plateau_patience=0,
        plateau_threshold=0.9,
        progress_bar=False,
    )
    full, full_report = pretrain(
        pot,
        params,
        train,
        val,
        atomic_numbers=Z_AR3,
        settings=base.__class__(**{**base.__dict__, "max_epochs": 4}),
        workdir=tmp_path / "a",
    )
    # "Killed" after epoch 2, then the same call with the full budget resumes.
    half_settings = recipe(
        "schnet",
        learning_rate=5e-3,
        batch_size=8,
        warmup_steps=3,
        plateau_patience=0,
        plateau_threshold=0.9,
        progress_bar=False,
        max_epochs=2,
    )
    pretrain(
        pot,
        params,
        train,
        val,
        atomic_numbers=Z_AR3,
        settings=half_settings,
        workdir=tmp_path / "b",
    )
    resumed, resumed_report = pretrain(
        pot,
        params,
        train,
        val,
        atomic_numbers=Z_AR3,
        settings=half_settings.__class__(**{**half_settings.__dict__, "max_epochs": 4}),
        workdir=tmp_path / "b",
    )
    for x, y in zip(jax.tree.leaves(full), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    strip = lambda ms: [
        {k: v for k, v in m.items() if k not in ("epoch_seconds", "wall_seconds")} for m in ms
    ]
    metrics_a, metrics_b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert strip(metrics_a) == strip(metrics_b)
    # plateau_patience=0 makes the learning rate move, so the schedule state was restored too.
    assert len({m["plateau_lr"] for m in metrics_a[1:]}) > 1
    assert full_report["val"] == resumed_report["val"]


def test_early_stopping_resume_of_finished_run_and_settings_mismatch(tmp_path):
    from stabie_jax.data.dataset import Dataset

    # The data layer's Dataset is accepted directly (numpy arrays, extra fields ignored).
    pos, e, f = lj_dataset(12, n_atoms=3, seed=0)
    frames = Dataset(positions=pos, energies=e, forces=f, atomic_numbers=Z_AR3)
    train, val = frames.subset(np.arange(8)), frames.subset(np.arange(8, 12))
    pot, params = toy_setup(hidden=4)
    settings = recipe(
        "schnet",
        learning_rate=0.0,
        batch_size=4,
        max_epochs=10,
        early_stopping_patience=1,
        progress_bar=False,
    )
    out, report = pretrain(
        pot, params, train, val, atomic_numbers=Z_AR3, settings=settings, workdir=tmp_path
    )
    # lr = 0: epoch 1 sets the best validation MAE, epoch 2 does not improve -> stop.
    assert report["stop_reason"] == "early_stopping" and report["epochs"] == 2
    for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    again, report2 = pretrain(
        pot, params, train, val, atomic_numbers=Z_AR3, settings=settings, workdir=tmp_path
    )
    assert report2["epochs"] == 2 and report2["val"] == report["val"]
    with pytest.raises(ValueError, match="learning_rate: checkpoint 0.0 vs now 0.1"):
        pretrain(
            pot,
            params,
            train,
            val,
            atomic_numbers=Z_AR3,
            settings=settings.__class__(**{**settings.__dict__, "learning_rate": 0.1}),
            workdir=tmp_path,
        )


def test_bad_inputs():
    train, val = lj_splits(4, 2)
    pot, params = toy_setup(hidden=4)
    settings = recipe("schnet", max_epochs=1, progress_bar=False)
    with pytest.raises(ValueError, match="atomic_numbers has shape"):
        pretrain(
            pot,
            params,
            train,
            val,
            atomic_numbers=[18, 18],
            settings=settings,
            workdir="/tmp/unused_stabie_pretrain",
        )
    with pytest.raises(ValueError, match="val must have"):
        pretrain(
            pot,
            params,
            train,
            object(),
            atomic_numbers=Z_AR3,
            settings=settings,
            workdir="/tmp/unused_stabie_pretrain",
        )
    with pytest.raises(ValueError, match="no pretraining recipe"):
        recipe("mace")


def test_batches_cover_every_frame_once():
    order = np.random.default_rng(0).permutation(11)
    idx, w = _batches(11, 4, order)
    assert idx.shape == (3, 4) and w.shape == (3, 4)
    used = np.asarray(idx)[np.asarray(w) > 0]
    np.testing.assert_array_equal(np.sort(used), np.arange(11))
    assert float(w.sum()) == 11.0


def test_plateau_follows_pytorch_semantics():
    state = plateau_init(1.0)
    lrs = []
    for v in [1.0, 0.9, 0.95, 0.9, 0.95, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]:
        state = plateau_update(state, v, factor=0.5, patience=2, min_lr=0.3)
        lrs.append(state.learning_rate)
    # bad epochs after 0.9: 0.95, 0.9 (no relative improvement), 0.95 -> 3 > 2 -> halve;
    # 0.8 improves; then five 0.8s: third bad one halves again but is floored at 0.3.
    assert lrs == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.3, 0.3, 0.3]
    assert state.num_reductions == 2
    assert plateau_update(plateau_init(1.0), math.nan, factor=0.5, patience=0).learning_rate == 0.5


def test_energy_shift_least_squares():
    mu = {1: -13.6, 6: -1029.8, 8: -2041.3}
    rng = np.random.default_rng(1)
    z = rng.choice([1, 6, 8], size=(30, 9))
    energies = np.array([sum(mu[int(a)] for a in row) for row in z]) + 1e-3 * rng.normal(size=30)
    fitted = fit_energy_shift(energies, z)
    assert set(fitted) == {1, 6, 8}
    for k in mu:
        assert fitted[k] == pytest.approx(mu[k], abs=1e-2)
    with pytest.raises(ValueError, match="frames"):
        fit_energy_shift(energies[:3], z)


@pytest.mark.slow
def test_schnet_pretraining_and_model_checkpoint_reproduce_the_potential(tmp_path):
    """SchNet end to end: a few epochs lower the force error, and the saved model checkpoint
    (with the fitted shift/scale) gives the same energies and forces as the trained potential
    through the ASE calculator."""
    from stabie_jax.ase_calculator import StabieCalculator
    from stabie_jax.checkpoint import make_model_potential, save_model_checkpoint
    from stabie_jax.models.schnet import SchNet
    from stabie_jax.pretrain import pretrained_model_metadata

    train, val = lj_splits(24, 8)
    module = SchNet(hidden=16, num_filters=16, num_interactions=2, num_gaussians=12, cutoff=4.5)
    pot = make_potential(module, Z_AR3, space.free()[0])
    params = init_params(module, Z_AR3, jax.random.PRNGKey(0))
    settings = recipe(
        "schnet",
        learning_rate=5e-3,
        batch_size=8,
        max_epochs=8,
        warmup_steps=0,
        progress_bar=False,
        checkpoint_every_epochs=8,
    )
    trained, report = pretrain(
        pot, params, train, val, atomic_numbers=Z_AR3, settings=settings, workdir=tmp_path / "w"
    )
    initial = read_metrics(tmp_path / "w")[0]["val_force_mae_ev_per_angstrom"]
    assert report["val"]["force_mae_ev_per_angstrom"] < 0.7 * initial
    metadata = pretrained_model_metadata("schnet", module, Z_AR3, 4.5, report, dataset="lj3")
    save_model_checkpoint(tmp_path / "model", trained, metadata)
    physical = make_model_potential(module, metadata, space.free()[0])
    r = val.positions[0]
    energy, forces = jax.jit(lambda p: (physical.energy_fn(p, r), physical.force_fn(p, r)))(trained)
    # The checkpointed potential reproduces the reported validation error on frame 0 scale.
    assert abs(float(energy) - float(val.energies[0])) < 5 * report["val"]["energy_mae_ev"] + 0.5
    import ase

    atoms = ase.Atoms(numbers=Z_AR3, positions=np.asarray(r))
    atoms.calc = StabieCalculator(tmp_path / "model")
    assert atoms.get_potential_energy() == pytest.approx(float(energy), rel=1e-6, abs=1e-5)
    np.testing.assert_allclose(atoms.get_forces(), forces, rtol=1e-4, atol=1e-5)


KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests_dir!r})
    from pretrain_test import Z_AR3, kill_test_settings, lj_splits, toy_setup
    from stabie_jax.pretrain import pretrain

    train, val = lj_splits(20, 8)
    pot, params = toy_setup(hidden=4)
    pretrain(pot, params, train, val, atomic_numbers=Z_AR3,
             settings=kill_test_settings(100000), workdir={workdir!r})
    """
)


def kill_test_settings(max_epochs):
    return recipe(
        "schnet",
        learning_rate=5e-3,
        batch_size=8,
        warmup_steps=3,
        plateau_patience=0,
        plateau_threshold=0.5,
        progress_bar=False,
        max_epochs=max_epochs,
        early_stopping_patience=None,
    )


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_uninterrupted(tmp_path):
    """A real SIGKILL of a training process (possibly mid-write), then resume in-process."""
    workdir = tmp_path / "killed"
    script = KILL_SCRIPT.format(
        tests_dir=os.fspath(pathlib.Path(__file__).parent), workdir=os.fspath(workdir)
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 300
        while not (workdir / "checkpoints" / "3").exists():
            assert proc.poll() is None, "training subprocess died"
            assert time.time() < deadline, "no checkpoint within 300 s"
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    n_epochs = 60
    train, val = lj_splits(20, 8)
    pot, params = toy_setup(hidden=4)
    resumed, _ = pretrain(
        pot,
        params,
        train,
        val,
        atomic_numbers=Z_AR3,
        settings=kill_test_settings(n_epochs),
        workdir=workdir,
    )
    full, _ = pretrain(
        pot,
        params,
        train,
        val,
        atomic_numbers=Z_AR3,
        settings=kill_test_settings(n_epochs),
        workdir=tmp_path / "full",
    )
    for x, y in zip(jax.tree.leaves(full), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    strip = lambda ms: [
        {k: v for k, v in m.items() if k not in ("epoch_seconds", "wall_seconds")} for m in ms
    ]
    assert strip(read_metrics(workdir)) == strip(read_metrics(tmp_path / "full"))


def test_neighbor_list_pretraining_matches_dense(tmp_path):
    """A potential on JAX-MD sparse neighbour lists trains like the dense one (all pairs are
    within the cutoff here, so only the summation order differs)."""
    from jax_md import partition

    train, val = lj_splits(16, 8)
    module = PairMLP(hidden=4, cutoff=4.5)
    displacement_fn, _ = space.free()
    dense = make_potential(module, Z_AR3, displacement_fn)
    sparse = make_potential(module, Z_AR3, displacement_fn, use_neighbor_list=True)
    neighbor_fn = partition.neighbor_list(
        displacement_fn, 50.0, 4.5, disable_cell_list=True, format=partition.Sparse
    )
    params = init_params(module, Z_AR3, jax.random.PRNGKey(0))
    settings = recipe("schnet", learning_rate=5e-3, batch_size=8, max_epochs=2, progress_bar=False)
    out_dense, rep_dense = pretrain(
        dense,
        params,
        train,
        val,
        atomic_numbers=Z_AR3,
        settings=settings,
        workdir=tmp_path / "dense",
    )
    out_sparse, rep_sparse = pretrain(
        sparse,
        params,
        train,
        val,
        atomic_numbers=Z_AR3,
        settings=settings,
        workdir=tmp_path / "sparse",
        neighbor_fn=neighbor_fn,
    )
    for x, y in zip(jax.tree.leaves(out_dense), jax.tree.leaves(out_sparse), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
    assert rep_sparse["val"]["force_mae_ev_per_angstrom"] == pytest.approx(
        rep_dense["val"]["force_mae_ev_per_angstrom"], rel=1e-4
    )
    with pytest.raises(ValueError, match="neighbour list"):
        pretrain(
            sparse,
            params,
            train,
            val,
            atomic_numbers=Z_AR3,
            settings=settings,
            workdir=tmp_path / "missing",
        )


def test_ema_of_gemnet_recipe_is_the_exponential_average(tmp_path):
    """One optimizer step (AdamW + AMSGrad + clipping + l2mae, the GemNet-T recipe): the EMA
    parameters returned equal d·p0 + (1−d)·p1 with p1 the raw updated parameters."""
    train, val = lj_splits(8, 4)
    pot, params = toy_setup(hidden=4)
    common = dict(batch_size=8, max_epochs=1, progress_bar=False, learning_rate=1e-2)
    raw, rep_raw = pretrain(
        pot,
        params,
        train,
        val,
        atomic_numbers=Z_AR3,
        settings=recipe("gemnet_t", ema_decay=None, **common),
        workdir=tmp_path / "raw",
    )
    decay = 0.75
    ema, _ = pretrain(
        pot,
        params,
        train,
        val,
        atomic_numbers=Z_AR3,
        settings=recipe("gemnet_t", ema_decay=decay, **common),
        workdir=tmp_path / "ema",
    )
    moved = 0.0
    for p0, p1, e in zip(*(jax.tree.leaves(t) for t in (params, raw, ema)), strict=True):
        np.testing.assert_allclose(e, decay * p0 + (1 - decay) * p1, rtol=1e-5, atol=1e-7)
        moved = max(moved, float(np.abs(np.asarray(p1) - np.asarray(p0)).max()))
    assert moved > 1e-4 and np.isfinite(rep_raw["val"]["loss"])


def test_cosine_schedule_wall_clock_budget_and_resume_rules(tmp_path):
    train, val = lj_splits(16, 8)
    pot, params = toy_setup(hidden=4)
    settings = recipe(
        "schnet",
        learning_rate=4e-3,
        batch_size=8,  # 2 optimizer steps per epoch
        max_epochs=6,
        warmup_steps=3,
        warmup_factor=0.5,
        schedule="cosine",
        cosine_final_factor=0.1,
        plateau_patience=0,
        plateau_threshold=0.99,  # would cut the rate every epoch under the plateau schedule
        early_stopping_patience=None,
        progress_bar=False,
    )
    run = lambda s, d: pretrain(
        pot, params, train, val, atomic_numbers=Z_AR3, settings=s, workdir=d
    )
    _, report = run(settings, tmp_path / "cosine")
    logged = [m["lr"] for m in read_metrics(tmp_path / "cosine")[1:]]  # last step of each epoch
    total = 6 * 2
    expected = []
    for epoch in range(1, 7):
        step = 2 * epoch - 1
        warm = 0.5 + 0.5 * min(step / 3, 1.0)
        expected.append(4e-3 * warm * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / total))))
    np.testing.assert_allclose(logged, expected, rtol=1e-5)
    assert report["final_learning_rate"] == 4e-3  # no plateau steps under the cosine schedule
    # The cosine length is max_epochs: resuming with another max_epochs would rewrite it.
    with pytest.raises(ValueError, match="max_epochs"):
        run(dataclasses.replace(settings, max_epochs=8), tmp_path / "cosine")
    with pytest.raises(ValueError, match="schedule must be one of"):
        run(dataclasses.replace(settings, schedule="linear"), tmp_path / "bad")
    # A wall-clock budget of ~0 s stops after the first epoch, and says why.
    _, report = run(dataclasses.replace(settings, max_wall_seconds=1e-9), tmp_path / "wall")
    assert report["epochs"] == 1 and report["stop_reason"] == "wall_clock"
    assert read_metrics(tmp_path / "wall")[1]["wall_seconds"] > 0.0
