"""Your own system: the generic config on a user's files, molecule and periodic.

* bond-graph neighbourhoods in any storage order (a second route: water's fixed O, H, H pattern);
* the custom config's choices resolved from the data, and refused with the key when the molecule
  pipeline cannot follow them;
* a user's periodic system that is not water: an LJ argon crystal in a *triclinic* description
  of its cell, written as extxyz in the test, through pretraining, StABlE (RDF observable, global
  estimator, minimum-distance criterion) and the RDF-MAE evaluation;
* a user's MACE-style extxyz molecule through every stage (tests/experiments_test.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import custom, molecule
from experiments.configs import custom as custom_config
from stabie_jax import data
from stabie_jax.localized_estimator import molecule_neighbourhoods, neighbourhoods_from_bonds

WATER = "builtin:water_spcfw_64_300K"


def test_neighbourhoods_from_bonds_in_any_storage_order():
    frames = data.load_dataset(WATER).subset(np.arange(5))
    expected = molecule_neighbourhoods(frames.atomic_numbers)  # O, H, H, O, H, H, ...
    graph = data.bonds_from_dataset(frames)
    np.testing.assert_array_equal(
        neighbourhoods_from_bonds(frames.atomic_numbers, graph.bonds), expected
    )
    # The same water with its atoms shuffled: the molecules are found again, centre (O) first.
    order = np.random.default_rng(0).permutation(len(frames.atomic_numbers))
    z, positions = frames.atomic_numbers[order], frames.positions[:, order]
    bonds = data.find_bonds(positions, z, cell=frames.cell, pbc=frames.pbc).bonds
    found = order[neighbourhoods_from_bonds(z, bonds)]  # back to the original atom indices
    assert np.all(z[np.argsort(order)][found[:, 0]] == 8)
    got = {(row[0], *sorted(row[1:])) for row in found.tolist()}
    assert got == {tuple(row) for row in expected.tolist()}
    # Molecules of different composition have no common observable: refused, saying what to do.
    with pytest.raises(ValueError, match="observable.kind=rdf"):
        neighbourhoods_from_bonds(
            np.array([8, 1, 1, 7, 1, 1, 1]), [[0, 1], [0, 2], [3, 4], [3, 5], [3, 6]]
        )


def test_custom_choices_follow_the_data_and_refuse_what_a_molecule_cannot_do(tmp_path):
    config = custom_config.get_config("smoke")
    chosen = custom.resolve_choices(config, periodic=False)
    assert chosen == {
        "observable.kind": "h_of_r",
        "stabie.criterion": "bond_deviation",
        "evaluate.criterion": "bond_deviation",
    }
    # An observable the molecule cannot train on is refused by the pipeline before any compute
    # (after the data load, before pretraining writes anything).
    config = custom_config.get_config("smoke")
    config.data.source = "builtin:aspirin_xtb_500K"
    config.observable.kind = "rdf"
    assert custom.resolve_choices(config, periodic=False)["observable.kind"] == "rdf"
    with pytest.raises(ValueError, match=r"config.observable.kind = 'rdf' needs a periodic cell"):
        molecule.run(config, tmp_path / "refused")
    assert not (tmp_path / "refused" / "model_pretrained").exists()
    config.observable.kind = "vacf"
    with pytest.raises(ValueError, match=r"'vacf' is an evaluation-only observable"):
        molecule.run(config, tmp_path / "refused")
    config = custom_config.get_config("smoke")
    config.data.source = WATER
    config.data.max_reference_frames = 20
    assert custom.is_periodic(config.data)
    assert custom.resolve_choices(config, periodic=True) == {
        "observable.kind": "bond_lengths",
        "stabie.criterion": "min_intermolecular",
        "evaluate.criterion": "rdf_mae",
    }
    with pytest.raises(ValueError, match="config.data.source is empty"):
        custom.is_periodic(custom_config.get_config().data)


# --- an LJ argon crystal, described by a sheared (triclinic) cell -------------------------------
EPSILON_EV, SIGMA_A, CUTOFF_A = 0.0104, 3.40, 5.0


def _lj(positions, cell):
    """Energy (eV) and forces (eV/Å) of a shifted, truncated LJ solid (numpy, minimum image)."""
    d = positions[:, None] - positions[None]
    d = data.minimum_image(d, cell, np.ones(3, bool))
    r = np.linalg.norm(d, axis=-1)
    np.fill_diagonal(r, np.inf)
    inside = r < CUTOFF_A
    sr6 = np.where(inside, (SIGMA_A / r) ** 6, 0.0)
    shift = 4 * EPSILON_EV * ((SIGMA_A / CUTOFF_A) ** 12 - (SIGMA_A / CUTOFF_A) ** 6)
    energy = 0.5 * np.sum(np.where(inside, 4 * EPSILON_EV * (sr6**2 - sr6) - shift, 0.0))
    dudr = np.where(inside, 4 * EPSILON_EV * (-12 * sr6**2 + 6 * sr6) / r, 0.0)
    forces = -np.sum((dudr / np.where(inside, r, 1.0))[..., None] * d, axis=1)
    return energy, forces


def _argon_crystal():
    """108 fcc argon sites (3 x 3 x 3 conventional cells) and a sheared description of the
    cubic cell (lattice vectors a, b, c + a: the same lattice, a triclinic cell)."""
    a, n = 5.26, 3
    basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    grid = np.array(np.meshgrid(*[np.arange(n)] * 3, indexing="ij")).reshape(3, -1).T
    lattice = (a * (grid[:, None] + basis[None])).reshape(-1, 3)
    L = a * n
    return lattice, np.array([[L, 0, 0], [0, L, 0], [L, 0, L]])


def _argon_extxyz(path, n_frames=60, seed=0):
    """Thermally displaced crystals (0.1 Å Gaussian) labelled with :func:`_lj`, as extxyz."""
    import ase
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    lattice, cell = _argon_crystal()
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n_frames):
        r = lattice + rng.normal(0.0, 0.1, lattice.shape)
        energy, forces = _lj(r, cell)
        atoms = ase.Atoms(f"Ar{len(r)}", positions=r, cell=cell, pbc=True)
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        images.append(atoms)
    ase.io.write(path, images, format="extxyz")
    return cell


def test_lj_reference_forces_are_the_energy_gradient():
    lattice, cell = _argon_crystal()
    r = lattice + np.random.default_rng(1).normal(0.0, 0.1, lattice.shape)
    _, forces = _lj(r, cell)
    assert np.abs(forces).max() > 0.01  # displaced atoms feel forces
    h = 1e-5
    for i, k in ((0, 0), (50, 2), (107, 1)):
        plus, minus = r.copy(), r.copy()
        plus[i, k] += h
        minus[i, k] -= h
        fd = -(_lj(plus, cell)[0] - _lj(minus, cell)[0]) / (2 * h)
        assert forces[i, k] == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_own_triclinic_argon_crystal_through_every_stage(tmp_path, capsys):
    """Any species and any cell: 108 Ar atoms whose cell is given as a sheared (triclinic) cell,
    the RDF as training observable (global estimator), minimum interatomic distance in training,
    RDF MAE in evaluation."""
    import ase.io

    path = tmp_path / "argon.extxyz"
    cell = _argon_extxyz(path)

    def argon_config():
        config = custom_config.get_config("smoke")
        config.progress = False
        config.data.source = str(path)
        config.data.energy_unit = "eV"
        config.data.n_train, config.data.n_val, config.data.n_test = 40, 10, 10
        config.md.temperature_kelvin = 40.0
        config.md.timestep_fs = 2.0
        config.pretrain.overrides.max_epochs = 2
        # Nearest neighbours sit at 3.72 Å: a 3.6-Å minimum distance fails at once (the data's
        # frames have pairs near 3.3 Å), so StABlE learns from its first simulation on.
        config.stabie.min_intermolecular_angstrom = 3.6
        return config

    # The default RDF range (6 Å) exceeds half the cell's smallest height: refused, with the fix.
    with pytest.raises(ValueError, match=r"config.observable.rdf_r_max_angstrom = 6 .*--config"):
        custom.run(argon_config(), tmp_path / "refused")
    assert not (tmp_path / "refused" / "pretrain").exists()  # before any compute
    config = argon_config()
    config.observable.rdf_r_max_angstrom = 5.0
    config.evaluate.rdf_r_max_angstrom = 5.0
    summary = custom.run(config, tmp_path / "run")
    assert "custom system, periodic: observable.kind = rdf" in capsys.readouterr().err
    assert summary["stages"] == ["pretrain", "stabie", "evaluate"]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["observable"]["kind"] == "rdf"
    assert saved["stabie"]["criterion"] == "min_intermolecular"
    assert saved["evaluate"]["criterion"] == "rdf_mae"
    records = [
        json.loads(line)
        for line in (tmp_path / "run" / "stabie" / "metrics.jsonl").read_text().splitlines()
    ]
    learned = [r for r in records if r["phase"] == "learning" and r["step_applied"]]
    assert learned, records  # the RDF observable loss was used for at least one step
    assert all(
        np.isfinite(r["obs_loss"]) and r["obs_loss"] > 0 and r["n_samples"] > 0 for r in learned
    )
    report = json.loads((tmp_path / "run" / "evaluate" / "report.json").read_text())
    row = report["results"]["comparison"]["baseline"]
    assert set(row) == {"median stable time (ps)", "Ar–Ar RDF MAE", "D Ar (m²/s)"}
    assert "rdf_mae" in report["title"] or "RDF MAE >" in report["title"]
    # The trajectories carry the triclinic cell of the file.
    (median,) = (tmp_path / "run" / "evaluate" / "models" / "StABlE" / "trajectories").glob(
        "*median*"
    )
    np.testing.assert_allclose(ase.io.read(median, index=0).cell[:], cell, atol=1e-5)
