"""Tests of the reference-data generators (stabie_jax.data.generate) and the built-in datasets.

The writer, resume logic, metadata, CLI and 'extra missing' errors are tested with ASE's
Lennard-Jones calculator and need neither tblite nor openmm. Engine tests (forces = −∇E by
finite differences through GFN2-xTB / OpenMM) skip with a reason when the ``reference`` extra is
absent. The shipped files are checked for layout, checksum and physics (bonds, temperature,
O–H length) with numpy only.
"""

from __future__ import annotations

import importlib
import json
import pathlib
import sys

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.lj import LennardJones

from stabie_jax import units
from stabie_jax.data.generate import (
    MissingExtraError,
    StopRequested,
    analysis,
    generate_molecule,
    molecule,
    sha256_of,
    water,
    work_dir_for,
)
from stabie_jax.data.generate import __main__ as cli


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


HAS_TBLITE = _importable("tblite.ase")
HAS_OPENMM = _importable("openmm")
needs_tblite = pytest.mark.skipif(not HAS_TBLITE, reason="tblite (reference extra) not installed")
needs_openmm = pytest.mark.skipif(not HAS_OPENMM, reason="openmm (reference extra) not installed")

BUILTIN = pathlib.Path(__file__).resolve().parents[1] / "stabie_jax" / "data" / "builtin"


def _argon_cluster() -> Atoms:
    """Five Ar atoms near the LJ minimum spacing (2^(1/6) σ ≈ 3.8 Å)."""
    positions = np.array(
        [[0, 0, 0], [3.8, 0, 0], [0, 3.8, 0], [0, 0, 3.8], [3.7, 3.7, 0.3]], dtype=float
    )
    return Atoms("Ar5", positions=positions)


def _lj() -> LennardJones:
    return LennardJones(sigma=3.4, epsilon=0.0104, rc=9.0, smooth=True)


def _run_lj(out, thermostat="langevin", stop_after_chunks=None, temperature=40.0, **kw):
    return generate_molecule(
        _argon_cluster(),
        out,
        temperature_kelvin=temperature,
        timestep_fs=2.0,
        equilibration_steps=10,
        steps=18,
        save_interval=3,
        seed=7,
        thermostat=thermostat,
        calculator=_lj(),
        chunk_frames=2,
        progress=False,
        command="test",
        stop_after_chunks=stop_after_chunks,
        **kw,
    )


# --- writer, resume, metadata ------------------------------------------------------------------


@pytest.mark.parametrize("thermostat", ["langevin", "nose-hoover"])
def test_killed_run_resumes_to_the_uninterrupted_trajectory(tmp_path, thermostat):
    reference = np.load(_run_lj(tmp_path / "full.npz", thermostat))
    out = tmp_path / "resumed.npz"
    # 10 equilibration steps = 2 chunks (6 + 4 steps), then 3 chunks of 2 frames each.
    with pytest.raises(StopRequested):
        _run_lj(out, thermostat, stop_after_chunks=3)
    assert not out.exists(), "a partial run must never appear at the final path"
    manifest = json.loads((work_dir_for(out) / "manifest.json").read_text())
    assert manifest["frames_done"] == 2 and manifest["steps_done"] == 16
    with pytest.raises(StopRequested):
        _run_lj(out, thermostat, stop_after_chunks=1)
    assert not out.exists()
    resumed = np.load(_run_lj(out, thermostat))
    assert not work_dir_for(out).exists()
    for key in ("positions", "velocities", "forces", "energies", "time_fs"):
        np.testing.assert_array_equal(resumed[key], reference[key], err_msg=key)


def test_resume_ignores_a_chunk_written_after_the_last_manifest(tmp_path):
    out = tmp_path / "x.npz"
    with pytest.raises(StopRequested):
        _run_lj(out, stop_after_chunks=3)
    # A kill between writing a chunk and committing the manifest leaves an orphan chunk file.
    np.savez(work_dir_for(out) / "chunk_00001.npz", junk=np.zeros(3))
    resumed = np.load(_run_lj(out))
    reference = np.load(_run_lj(tmp_path / "ref.npz"))
    np.testing.assert_array_equal(resumed["positions"], reference["positions"])


def test_resume_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "x.npz"
    with pytest.raises(StopRequested):
        _run_lj(out, stop_after_chunks=1)
    with pytest.raises(ValueError, match="different settings.*temperature_kelvin"):
        _run_lj(out, temperature=41.0)


def test_existing_output_is_not_overwritten(tmp_path):
    out = tmp_path / "x.npz"
    out.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="already exists"):
        _run_lj(out)
    assert out.read_bytes() == b"precious"


def test_output_layout_units_and_metadata(tmp_path):
    data = np.load(_run_lj(tmp_path / "x.npz", extra_metadata={"note": "hello"}))
    assert set(data.files) == {
        "positions",
        "energies",
        "forces",
        "velocities",
        "time_fs",
        "atomic_numbers",
        "masses",
        "metadata",
    }
    assert data["positions"].shape == (6, 5, 3) and data["positions"].dtype == np.float32
    assert data["energies"].shape == (6,) and data["energies"].dtype == np.float64
    np.testing.assert_array_equal(data["atomic_numbers"], [18] * 5)
    np.testing.assert_allclose(data["time_fs"], 6.0 * np.arange(1, 7))  # 3 steps × 2 fs
    meta = json.loads(str(data["metadata"]))
    assert meta["units"]["forces"] == "eV/angstrom" and meta["units"]["velocities"] == "angstrom/fs"
    assert meta["temperature_kelvin"] == 40.0 and meta["seed"] == 7
    assert meta["save_interval_steps"] == 3 and meta["timestep_fs"] == 2.0
    assert (
        meta["method"] == "LennardJones" and meta["command"] == "test" and meta["note"] == "hello"
    )
    assert meta["versions"]["ase"] and meta["versions"]["numpy"]
    # Stored energies/forces are those of the calculator at the stored positions (eV, eV/Å).
    atoms = _argon_cluster()
    atoms.calc = _lj()
    atoms.set_positions(data["positions"][-1].astype(np.float64))
    np.testing.assert_allclose(data["energies"][-1], atoms.get_potential_energy(), atol=1e-6)
    np.testing.assert_allclose(data["forces"][-1], atoms.get_forces(), atol=1e-5)


def test_saved_velocities_are_on_step(tmp_path):
    # Nosé–Hoover (deterministic, symplectic-like): v(t) must match the central difference of
    # positions 1 step apart up to O(dt²).
    data = generate_molecule(
        _argon_cluster(),
        tmp_path / "v.npz",
        temperature_kelvin=40.0,
        timestep_fs=1.0,
        equilibration_steps=0,
        steps=8,
        save_interval=1,
        seed=3,
        thermostat="nose-hoover",
        calculator=_lj(),
        float_dtype="float64",
        progress=False,
    )
    data = np.load(data)
    r, v = data["positions"], data["velocities"]
    central = (r[2:] - r[:-2]) / 2.0  # Å/fs
    assert np.linalg.norm(central - v[1:-1]) / np.linalg.norm(v[1:-1]) < 1e-3


# --- CLI and optional-dependency errors --------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["molecule", "--smiles", "O", "--output", "a.npz", "--equilibration-steps", "0",
          "--steps", "10", "--save-interval", "3"], "multiple of --save-interval"),
        (["molecule", "--smiles", "O", "--geometry", "x.xyz", "--output", "a.npz",
          "--equilibration-steps", "0", "--steps", "10"], "not allowed with"),
        (["molecule", "--output", "a.npz", "--equilibration-steps", "0", "--steps", "10"],
         "one of the arguments --geometry --smiles is required"),
        (["water", "--output", "a.npz", "--equilibration-steps", "0", "--steps", "10",
          "--temperature", "-5"], "must be > 0"),
        (["water", "--output", "a.npz", "--steps", "10"], "--equilibration-steps"),
        (["gas", "--output", "a.npz"], "invalid choice"),
    ],
)  # fmt: skip
def test_cli_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as err:
        cli.main(argv)
    assert err.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("module", ["tblite", "openmm"])
def test_missing_extra_gives_install_hint(monkeypatch, module):
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(MissingExtraError, match=r"stabie-jax\[reference\]"):
        if module == "tblite":
            molecule.make_xtb_calculator()
        else:
            water.build_water_system(4, 12.0, water.WATER_MODELS["spcfw"], cutoff_angstrom=5.0)


def test_cli_reports_missing_extra(monkeypatch, tmp_path, capsys):
    for name in [m for m in sys.modules if m == "tblite" or m.startswith("tblite.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tblite", None)
    geometry = tmp_path / "h2o.xyz"
    geometry.write_text("3\n\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n")
    code = cli.main(
        ["molecule", "--geometry", str(geometry), "--output", str(tmp_path / "o.npz"),
         "--equilibration-steps", "0", "--steps", "10", "--no-progress"]
    )  # fmt: skip
    assert code == 1
    assert "pip install 'stabie-jax[reference]'" in capsys.readouterr().err
    assert not (tmp_path / "o.npz").exists()


def test_load_geometry_reads_npz_layouts_and_xyz(tmp_path):
    z = np.array([8, 1, 1])
    r = np.array([[[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]] * 2)
    np.savez(tmp_path / "rmd17.npz", nuclear_charges=z, coords=r)
    np.savez(tmp_path / "md17.npz", z=z, R=r)
    for name in ("rmd17.npz", "md17.npz"):
        atoms = molecule.load_geometry(tmp_path / name)
        np.testing.assert_array_equal(atoms.numbers, z)
        np.testing.assert_allclose(atoms.positions, r[0])
    np.savez(tmp_path / "bad.npz", foo=z)
    with pytest.raises(ValueError, match="no known coordinate keys"):
        molecule.load_geometry(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="does not exist"):
        molecule.load_geometry(tmp_path / "missing.xyz")


# --- water set-up pieces that need no OpenMM ---------------------------------------------------


def test_box_length_matches_density():
    box = water.box_length_angstrom(64, 0.997)
    mass_g = 64 * water.water_masses().sum() / units.AVOGADRO_PER_MOL
    assert abs(mass_g / (box**3 * 1e-24) - 0.997) < 1e-12
    assert abs(box - 12.43) < 0.01  # the value used for 64 SPC/Fw waters in the literature setup


@pytest.mark.parametrize("model", ["spcfw", "spce-flex"])
def test_initial_waters_have_model_geometry_and_no_overlaps(model):
    params = water.WATER_MODELS[model]
    box = water.box_length_angstrom(27, 0.997)
    r = water.initial_water_positions(27, box, params, np.random.default_rng(0))
    bonds, angles = analysis.water_geometry(r[None])
    np.testing.assert_allclose(bonds, params.bond_r0_angstrom, atol=1e-12)
    np.testing.assert_allclose(angles, params.angle_theta0_deg, atol=1e-9)
    o = r[0::3]
    d = o[:, None] - o[None]
    d -= box * np.round(d / box)
    dist = np.linalg.norm(d, axis=-1) + np.eye(len(o)) * 99
    assert dist.min() > 2.5


def test_spce_flex_parameters_convert_from_gromacs_units():
    params = water.WATER_MODELS["spce-flex"]
    # 345000 kJ/mol/nm² and 383 kJ/mol/rad² in kcal/mol/Å² and kcal/mol/rad².
    assert abs(params.bond_k_kcal_per_mol_a2 - 824.5698) < 1e-3
    assert abs(params.angle_k_kcal_per_mol_rad2 - 91.5392) < 1e-3


# --- analysis helpers --------------------------------------------------------------------------


def test_kinetic_temperature_of_maxwell_boltzmann_velocities():
    rng = np.random.default_rng(0)
    masses = np.array([16.0, 1.0, 1.0] * 300)
    sigma = np.sqrt(units.kT(300.0) / masses)  # Å per internal time unit
    v = rng.normal(size=(4, len(masses), 3)) * sigma[:, None] * units.fs_to_internal(1.0)
    t = analysis.kinetic_temperature(v, masses, dof=3 * len(masses))
    assert abs(t.mean() - 300.0) < 6.0
    classes = analysis.molecular_class_temperatures(v, masses)
    assert abs(classes["intramolecular_kelvin"] - 300.0) < 8.0
    assert abs(classes["com_translational_kelvin"] - 300.0) < 15.0


def test_rdf_of_ideal_gas_is_one():
    rng = np.random.default_rng(1)
    r = rng.uniform(0, 10.0, size=(20, 300, 3))
    molecule_index = np.arange(300)
    everyone = np.ones(300, bool)
    rc, g = analysis.intermolecular_rdf(r, 10.0, everyone, everyone, molecule_index, 5.0, 0.5)
    assert np.all(np.abs(g[2:] - 1.0) < 0.05)


def test_msd_diffusion_of_a_random_walk():
    rng = np.random.default_rng(2)
    d_a2_per_ps = 0.2  # Å²/ps
    steps = rng.normal(size=(3000, 100, 3)) * np.sqrt(2 * d_a2_per_ps * 0.01)  # 10 fs frames
    r = np.cumsum(steps, axis=0)
    d, _, _ = analysis.msd_diffusion(r, np.ones(100), np.ones(100, bool), 10.0, 2.0, 8.0)
    assert abs(d / (d_a2_per_ps * 1e-8) - 1.0) < 0.15


# --- engines: forces equal −∇E ------------------------------------------------------------------


def _finite_difference_forces(energy_fn, positions, indices, h):
    out = []
    for atom, axis in indices:
        plus, minus = positions.copy(), positions.copy()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        out.append(-(energy_fn(plus) - energy_fn(minus)) / (2 * h))
    return np.array(out)


@needs_tblite
def test_xtb_forces_are_minus_energy_gradient():
    from ase.build import molecule as ase_molecule

    atoms = ase_molecule("CH3OH")
    atoms.positions += np.random.default_rng(0).normal(scale=0.05, size=atoms.positions.shape)
    atoms.calc = molecule.make_xtb_calculator(accuracy=0.01)
    forces = atoms.get_forces()

    def energy(x):
        a = atoms.copy()
        a.calc = molecule.make_xtb_calculator(accuracy=0.01)
        a.positions = x
        return a.get_potential_energy()

    idx = [(0, 0), (1, 2), (4, 1), (5, 0)]
    fd = _finite_difference_forces(energy, atoms.positions.copy(), idx, 1e-3)
    np.testing.assert_allclose(fd, [forces[a, k] for a, k in idx], atol=2e-4)


@needs_tblite
def test_xtb_generator_stores_calculator_forces(tmp_path):
    atoms = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    path = generate_molecule(
        atoms, tmp_path / "w.npz", temperature_kelvin=300.0, timestep_fs=0.5,
        equilibration_steps=4, steps=6, save_interval=3, seed=0, progress=False,
        float_dtype="float64",
    )  # fmt: skip
    data = np.load(path)
    meta = json.loads(str(data["metadata"]))
    assert meta["method"] == "GFN2-xTB" and meta["versions"]["tblite"] != "not installed"
    fresh = atoms.copy()
    fresh.calc = molecule.make_xtb_calculator()
    fresh.positions = data["positions"][-1]
    np.testing.assert_allclose(data["energies"][-1], fresh.get_potential_energy(), atol=1e-5)
    np.testing.assert_allclose(data["forces"][-1], fresh.get_forces(), atol=1e-3)


def _small_water_system():
    box = water.box_length_angstrom(4, 0.12)  # ≈ 10 Å: room for a 4.5 Å cutoff
    system = water.build_water_system(
        4, box, water.WATER_MODELS["spcfw"], cutoff_angstrom=4.5, ewald_tolerance=5e-4
    )
    r = water.initial_water_positions(4, box, water.WATER_MODELS["spcfw"], np.random.default_rng(3))
    return system, box, r


@needs_openmm
def test_openmm_water_forces_are_minus_energy_gradient():
    system, _, r = _small_water_system()
    r = r + np.random.default_rng(0).normal(scale=0.03, size=r.shape)
    fn = water.make_energy_force_fn(system, "Reference")
    _, forces = fn(r)
    idx = [(0, 0), (1, 1), (5, 2), (10, 0)]
    fd = _finite_difference_forces(lambda x: fn(x)[0], r, idx, 1e-4)
    np.testing.assert_allclose(fd, [forces[a, k] for a, k in idx], rtol=1e-5, atol=1e-6)


@needs_openmm
def test_openmm_cutoff_must_fit_the_box():
    with pytest.raises(ValueError, match="half the box"):
        water.build_water_system(4, 8.0, water.WATER_MODELS["spcfw"], cutoff_angstrom=6.0)


@needs_openmm
def test_water_generator_resumes_and_stores_consistent_frames(tmp_path):
    kw = dict(
        n_molecules=4, density_g_per_cm3=0.12, cutoff_angstrom=4.5, ewald_tolerance=5e-4,
        temperature_kelvin=300.0,
        timestep_fs=0.5, equilibration_steps=10, steps=12, save_interval=1, seed=1,
        thermostat="nose-hoover", platform="Reference", chunk_frames=4, progress=False,
        float_dtype="float64",
    )  # fmt: skip
    reference = np.load(water.generate_water(tmp_path / "a.npz", **kw))
    out = tmp_path / "b.npz"
    with pytest.raises(StopRequested):
        water.generate_water(out, stop_after_chunks=2, **kw)
    assert not out.exists()
    resumed = np.load(water.generate_water(out, **kw))
    np.testing.assert_array_equal(resumed["positions"], reference["positions"])
    np.testing.assert_array_equal(resumed["velocities"], reference["velocities"])
    assert resumed["cell"].shape == (3, 3) and resumed["pbc"].all()
    # energies/forces belong to the stored positions
    system, _, _ = _small_water_system()
    e, f = water.make_energy_force_fn(system, "Reference")(reference["positions"][5])
    np.testing.assert_allclose(reference["energies"][5], e, atol=1e-9)
    np.testing.assert_allclose(reference["forces"][5], f, atol=1e-8)
    # on-step velocities: central difference of positions 1 step (0.5 fs) apart
    r, v = reference["positions"], reference["velocities"]
    central = (r[2:] - r[:-2]) / (2 * 0.5)
    assert np.linalg.norm(central - v[1:-1]) / np.linalg.norm(v[1:-1]) < 2e-3


# --- the shipped built-in datasets -------------------------------------------------------------


def _builtin(name: str) -> pathlib.Path:
    path = BUILTIN / name
    if not path.exists():
        pytest.fail(f"built-in dataset {path} is missing from the package")
    return path


def _recorded_sha256(name: str) -> str:
    from stabie_jax.data.builtin import BUILTIN_DATASETS

    return next(d.sha256 for d in BUILTIN_DATASETS.values() if d.filename == name)


@pytest.mark.parametrize("name", ["aspirin_xtb_500K.npz", "water_spcfw_64_300K.npz"])
def test_builtin_checksum_matches_record(name):
    path = _builtin(name)
    assert sha256_of(path) == _recorded_sha256(name)
    assert _recorded_sha256(name) in (BUILTIN / "PROVENANCE.md").read_text()


def test_builtin_aspirin_layout_bonds_and_temperature():
    data = np.load(_builtin("aspirin_xtb_500K.npz"))
    meta = json.loads(str(data["metadata"]))
    n_frames = data["energies"].shape[0]
    assert n_frames >= 2000
    assert data["positions"].shape == (n_frames, 21, 3) == data["forces"].shape
    assert sorted(np.bincount(data["atomic_numbers"]).nonzero()[0]) == [1, 6, 8]
    assert meta["method"] == "GFN2-xTB" and meta["temperature_kelvin"] == 500.0
    assert meta["timestep_fs"] == 0.5 and meta["units"]["energies"] == "eV"
    # GFN2-xTB total energy of C9H8O4 is about −1078 eV; forces are eV/Å (not Hartree/Bohr).
    assert -1090 < data["energies"].mean() < -1070
    assert 0.5 < np.abs(data["forces"]).mean() < 5.0
    z, r = data["atomic_numbers"], data["positions"].astype(np.float64)
    reference_bonds = analysis.covalent_bonds(z, r[0])
    assert len(reference_bonds) == 21
    for frame in r:
        assert analysis.covalent_bonds(z, frame) == reference_bonds
    # Langevin thermalises all 3N momenta (no fixed centre of mass).
    t = analysis.kinetic_temperature(data["velocities"], data["masses"], dof=3 * len(z))
    assert abs(t.mean() - 500.0) < 15.0


def test_builtin_water_layout_and_structure():
    data = np.load(_builtin("water_spcfw_64_300K.npz"))
    meta = json.loads(str(data["metadata"]))
    n_frames = data["energies"].shape[0]
    assert n_frames >= 1000
    assert data["positions"].shape == (n_frames, 192, 3) == data["velocities"].shape
    np.testing.assert_array_equal(data["atomic_numbers"], np.tile([8, 1, 1], 64))
    np.testing.assert_allclose(data["cell"], np.eye(3) * water.box_length_angstrom(64, 0.997))
    assert meta["water_model"]["name"] == "SPC/Fw" and meta["temperature_kelvin"] == 300.0
    assert meta["positions_unwrapped"] is True
    bonds, angles = analysis.water_geometry(data["positions"])
    assert abs(bonds.mean() - 1.03) < 0.005
    assert abs(angles.mean() - 107.7) < 1.5
    # Unwrapped: no frame-to-frame jump across the box (wrapped data would jump by ≈ 12.4 Å).
    assert np.abs(np.diff(data["positions"], axis=0)).max() < 0.5 * data["cell"][0, 0]
    # ≈ −10 kcal/mol per molecule for SPC/Fw at 300 K.
    per_molecule = units.ev_to_kcal_per_mol(data["energies"].mean()) / 64
    assert -10.6 < per_molecule < -9.4
    classes = analysis.molecular_class_temperatures(data["velocities"], data["masses"])
    assert abs(classes["com_translational_kelvin"] - 300.0) < 10.0


@needs_tblite
def test_builtin_aspirin_forces_are_minus_energy_gradient():
    data = np.load(_builtin("aspirin_xtb_500K.npz"))
    atoms = Atoms(numbers=data["atomic_numbers"], positions=data["positions"][-1])
    atoms.calc = molecule.make_xtb_calculator()
    np.testing.assert_allclose(atoms.get_potential_energy(), data["energies"][-1], atol=1e-4)
    np.testing.assert_allclose(atoms.get_forces(), data["forces"][-1], atol=2e-3)

    def energy(x):
        a = atoms.copy()
        a.calc = molecule.make_xtb_calculator(accuracy=0.01)
        a.positions = x
        return a.get_potential_energy()

    idx = [(0, 0), (7, 1), (12, 2), (20, 0)]
    fd = _finite_difference_forces(energy, atoms.positions.copy(), idx, 1e-3)
    np.testing.assert_allclose(fd, [data["forces"][-1][a, k] for a, k in idx], atol=2e-3)


@needs_openmm
def test_builtin_water_forces_are_minus_energy_gradient():
    data = np.load(_builtin("water_spcfw_64_300K.npz"))
    box = float(data["cell"][0, 0])
    system = water.build_water_system(64, box, water.WATER_MODELS["spcfw"])
    fn = water.make_energy_force_fn(system, "Reference")
    r = data["positions"][-1].astype(np.float64)
    e, f = fn(r)
    np.testing.assert_allclose(e, data["energies"][-1], atol=1e-3)
    assert np.linalg.norm(f - data["forces"][-1]) / np.linalg.norm(f) < 1e-4
    idx = [(0, 0), (100, 1), (191, 2)]
    fd = _finite_difference_forces(lambda x: fn(x)[0], r, idx, 1e-4)
    np.testing.assert_allclose(fd, [data["forces"][-1][a, k] for a, k in idx], atol=2e-4)


def test_verify_builtin_rejects_unknown_names_and_checksum_mismatch(monkeypatch):
    from stabie_jax.data import builtin

    with pytest.raises(ValueError, match="unknown built-in dataset"):
        builtin.builtin_path("benzene")
    _builtin("aspirin_xtb_500K.npz")
    assert builtin.verify_builtin("aspirin_xtb_500K").name == "aspirin_xtb_500K.npz"
    record = builtin.BUILTIN_DATASETS["aspirin_xtb_500K"]._replace(sha256="0" * 64)
    monkeypatch.setitem(builtin.BUILTIN_DATASETS, "aspirin_xtb_500K", record)
    with pytest.raises(ValueError, match="does not match the recorded"):
        builtin.verify_builtin("aspirin_xtb_500K")


@pytest.mark.parametrize(
    "name, n_atoms, kelvin",
    [("aspirin_xtb_500K", 21, 500.0), ("water_spcfw_64_300K", 192, 300.0)],
)
def test_builtin_sets_load_through_the_dataset_layer(name, n_atoms, kelvin):
    from stabie_jax.data import load_dataset

    raw = np.load(_builtin(f"{name}.npz"))
    ds = load_dataset(f"builtin:{name}")
    assert ds.positions.shape == (len(raw["energies"]), n_atoms, 3)
    np.testing.assert_allclose(ds.energies, raw["energies"])
    np.testing.assert_allclose(ds.forces, raw["forces"])
    # The dataset layer holds velocities in internal units (Å per internal time unit).
    np.testing.assert_allclose(
        np.asarray(ds.velocities) * units.fs_to_internal(1.0), raw["velocities"], rtol=1e-6
    )
    assert ds.metadata["temperature_kelvin"] == kelvin


@needs_tblite
def test_cli_molecule_from_a_geometry_file(tmp_path, capsys):
    geometry = tmp_path / "h2o.xyz"
    geometry.write_text("3\n\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n")
    out = tmp_path / "h2o.npz"
    argv = ["molecule", "--geometry", str(geometry), "--output", str(out), "--seed", "3",
            "--equilibration-steps", "2", "--steps", "4", "--save-interval", "2",
            "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    data = np.load(out)
    meta = json.loads(str(data["metadata"]))
    assert data["positions"].shape == (2, 3, 3)
    assert meta["command"].startswith("python -m stabie_jax.data.generate molecule --geometry")
    assert meta["seed"] == 3 and meta["start_geometry"] == f"first frame of {geometry}"


@needs_openmm
@pytest.mark.parametrize("model", ["spcfw", "spce-flex"])
def test_openmm_bonded_terms_match_the_model_parameters(model):
    # One uncharged water in a box (images beyond the LJ cutoff): stretching a bond by δ costs
    # k_b/2 δ², bending by Δθ costs k_θ/2 Δθ², in the model's published units.
    params = water.WATER_MODELS[model]
    neutral = params._replace(charge_o=0.0, charge_h=0.0)
    system = water.build_water_system(1, 16.0, neutral, cutoff_angstrom=6.0, ewald_tolerance=5e-4)
    fn = water.make_energy_force_fn(system, "Reference")
    theta0 = np.deg2rad(params.angle_theta0_deg)
    r0 = params.bond_r0_angstrom

    def geometry(r1, theta):
        return np.array([[8.0, 8.0, 8.0], [8.0 + r1, 8.0, 8.0],
                         [8.0 + r0 * np.cos(theta), 8.0 + r0 * np.sin(theta), 8.0]])  # fmt: skip

    e0 = fn(geometry(r0, theta0))[0]
    delta, dtheta = 0.02, 0.05
    stretch = units.ev_to_kcal_per_mol(fn(geometry(r0 + delta, theta0))[0] - e0)
    bend = units.ev_to_kcal_per_mol(fn(geometry(r0, theta0 + dtheta))[0] - e0)
    np.testing.assert_allclose(stretch, 0.5 * params.bond_k_kcal_per_mol_a2 * delta**2, rtol=1e-6)
    np.testing.assert_allclose(bend, 0.5 * params.angle_k_kcal_per_mol_rad2 * dtheta**2, rtol=1e-6)
