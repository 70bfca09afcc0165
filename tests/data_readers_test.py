"""Tests for stabie_jax.data.readers: formats, units, bad input, fuzzing, real data."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import pickle
import tempfile

import ase
import ase.io
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from conftest import shared_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from experiments import config_reader
from stabie_jax import units
from stabie_jax.data import (
    Dataset,
    detect_npz_format,
    load_dataset,
    max_plausible_energy_ev,
    read_ase,
    read_file,
    read_mdsim_water_npy,
    read_rmd17_npz,
    read_sgdml_npz,
    read_stabie_npz,
    save_dataset,
    velocities_from_angstrom_per_fs,
)

KCAL = 0.0433641042418  # eV per kcal/mol = 4184 J / (e * N_A), written out independently
RNG = np.random.default_rng(0)
R3 = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])


def _frames(n_frames=4, n_atoms=3):
    base = R3 if n_atoms == 3 else RNG.normal(size=(n_atoms, 3))
    return base + 0.01 * RNG.normal(size=(n_frames, n_atoms, 3))


def _sgdml(path, n_frames=4, **extra):
    arrays = dict(
        R=_frames(n_frames),
        z=np.array([8, 1, 1], dtype=np.uint8),
        E=RNG.normal(size=(n_frames, 1)) - 1000.0,
        F=RNG.normal(size=(n_frames, 3, 3)),
    )
    arrays.update(extra)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return arrays


def _rmd17(path, n_frames=4):
    arrays = dict(
        nuclear_charges=np.array([8, 1, 1], dtype=np.uint8),
        coords=_frames(n_frames),
        energies=RNG.normal(size=n_frames) - 1000.0,
        forces=RNG.normal(size=(n_frames, 3, 3)),
        old_indices=np.arange(n_frames) * 7,
        old_energies=RNG.normal(size=n_frames) - 1462.0,
        old_forces=RNG.normal(size=(n_frames, 3, 3)),
    )
    np.savez(path, **arrays)
    return arrays


def _water_npz(path, n_frames=4, labels=True):
    arrays = dict(
        R=_frames(n_frames).astype(np.float32),
        V=(0.01 * RNG.normal(size=(n_frames, 3, 3))).astype(np.float32),
        z=np.array([8, 1, 1]),
        cell=5.0 * np.eye(3),
        masses=np.array([15.9994, 1.008, 1.008]),
        dt_fs=np.array(10.0),
        temperature_K=np.array(300.0),
    )
    if labels:
        arrays["E"] = RNG.normal(size=n_frames) - 10.0
        arrays["F"] = RNG.normal(size=(n_frames, 3, 3)).astype(np.float32)
    np.savez_compressed(path, **arrays)
    return arrays


# --- formats and units -------------------------------------------------------------------------
def test_kcal_constant_matches_units_module():
    assert units.kcal_per_mol_to_ev(1.0) == pytest.approx(KCAL, rel=1e-9)


def test_sgdml_download_is_kcal_per_mol(tmp_path):
    raw = _sgdml(tmp_path / "md17_x.npz", type=np.array("d"), name=np.array("x"))
    ds = read_file(tmp_path / "md17_x.npz")
    np.testing.assert_allclose(ds.energies, raw["E"][:, 0] * KCAL, rtol=1e-9)
    np.testing.assert_allclose(ds.forces, raw["F"] * KCAL, rtol=1e-9)
    np.testing.assert_array_equal(ds.positions, raw["R"])
    assert ds.metadata["format"] == "sgdml" and ds.metadata["name"] == "x"
    assert ds.metadata["original_units"]["energy"] == "kcal/mol"
    assert "type/md5/theory" in ds.metadata["units_from"]


def test_sgdml_unit_keys_are_used(tmp_path):
    raw = _sgdml(tmp_path / "a.npz", e_unit=np.array("eV"), r_unit=np.array("bohr"))
    ds = read_file(tmp_path / "a.npz")
    np.testing.assert_allclose(ds.energies, raw["E"][:, 0])
    np.testing.assert_allclose(ds.positions, raw["R"] * units.BOHR_IN_ANGSTROM)
    np.testing.assert_allclose(ds.forces, raw["F"] / units.BOHR_IN_ANGSTROM)


def test_sgdml_without_units_needs_explicit_unit(tmp_path):
    raw = _sgdml(tmp_path / "nequip_npz.npz")
    with pytest.raises(ValueError, match="nequip_npz.npz: key 'e_unit' is missing.*energy_unit="):
        read_file(tmp_path / "nequip_npz.npz")
    ds = read_file(tmp_path / "nequip_npz.npz", energy_unit="eV")
    np.testing.assert_allclose(ds.energies, raw["E"][:, 0])
    _sgdml(tmp_path / "b.npz", e_unit=np.array("kcal/mol"))
    with pytest.raises(ValueError, match="contradicts"):
        read_sgdml_npz(tmp_path / "b.npz", energy_unit="eV")
    _sgdml(tmp_path / "c.npz", e_unit=np.array("furlongs"))
    with pytest.raises(ValueError, match="c.npz: key 'e_unit'.*'furlongs'.*not known"):
        read_file(tmp_path / "c.npz")


@pytest.mark.parametrize(
    "labels, e_key, f_key",
    [("rmd17", "energies", "forces"), ("md17", "old_energies", "old_forces")],
)
def test_rmd17_label_sets(tmp_path, labels, e_key, f_key):
    raw = _rmd17(tmp_path / "rmd17_x.npz")
    ds = read_file(tmp_path / "rmd17_x.npz", labels=labels)
    np.testing.assert_allclose(ds.energies, raw[e_key] * KCAL, rtol=1e-9)
    np.testing.assert_allclose(ds.forces, raw[f_key] * KCAL, rtol=1e-9)
    np.testing.assert_array_equal(ds.frame_ids, raw["old_indices"])
    np.testing.assert_array_equal(ds.atomic_numbers, [8, 1, 1])
    assert ds.metadata["labels"] == labels


def test_rmd17_rejects_unknown_label_set(tmp_path):
    _rmd17(tmp_path / "r.npz")
    with pytest.raises(ValueError, match="labels='dft'"):
        read_rmd17_npz(tmp_path / "r.npz", labels="dft")


def test_openmm_water_units_time_and_dense(tmp_path):
    raw = _water_npz(tmp_path / "w.npz")
    ds = read_file(tmp_path / "w.npz")
    assert ds.is_periodic and ds.temperature_kelvin == 300.0
    np.testing.assert_allclose(ds.energies, raw["E"] * KCAL, rtol=1e-9)
    np.testing.assert_allclose(ds.forces, raw["F"].astype(np.float64) * KCAL, rtol=1e-9)
    np.testing.assert_allclose(ds.velocities * units.fs_to_internal(1.0), raw["V"], rtol=1e-6)
    np.testing.assert_array_equal(ds.time_fs, [0.0, 10.0, 20.0, 30.0])
    np.testing.assert_array_equal(ds.masses, raw["masses"])
    _water_npz(tmp_path / "dense.npz", labels=False)
    with pytest.raises(ValueError, match="dense.npz: missing key 'E'"):
        read_file(tmp_path / "dense.npz")
    dense = read_file(tmp_path / "dense.npz", require_labels=False)
    assert not dense.has_labels and dense.velocities is not None


def test_stabie_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    ds = Dataset(
        positions=_frames(3),
        energies=rng.normal(size=3),
        forces=rng.normal(size=(3, 3, 3)),
        atomic_numbers=np.array([8, 1, 1]),
        cell=np.diag([5.0, 6.0, 7.0]),
        pbc=np.array([True, True, False]),
        velocities=velocities_from_angstrom_per_fs(0.01 * rng.normal(size=(3, 3, 3))),
        masses=np.array([16.0, 2.014, 1.008]),
        time_fs=np.array([0.0, 5.0, 10.0]),
        frame_ids=np.array([4, 5, 6]),
        metadata={"temperature_kelvin": 500.0, "method": "GFN2-xTB", "seed": 3, "nested": [1, 2]},
    )
    path = save_dataset(ds, tmp_path / "out")
    assert path.name == "out.npz" and not list(tmp_path.glob("*.tmp"))
    back = read_file(path)
    for key in (
        "positions",
        "energies",
        "forces",
        "atomic_numbers",
        "cell",
        "pbc",
        "masses",
        "time_fs",
        "frame_ids",
    ):
        np.testing.assert_array_equal(getattr(back, key), getattr(ds, key), err_msg=key)
    np.testing.assert_allclose(back.velocities, ds.velocities, rtol=1e-14)
    assert back.metadata["method"] == "GFN2-xTB" and back.metadata["nested"] == (1, 2)
    assert back.temperature_kelvin == 500.0 and back.metadata["format"] == "stabie"
    with np.load(path) as raw:  # on disk: velocities in Å/fs, metadata JSON with units
        np.testing.assert_allclose(raw["velocities"] / units.fs_to_internal(1.0), ds.velocities)
        assert json.loads(str(raw["metadata"]))["units"]["energy"] == "eV"


def test_stabie_declared_non_ev_units_rejected(tmp_path):
    np.savez(
        tmp_path / "s.npz",
        positions=_frames(2),
        energies=np.zeros(2),
        forces=np.zeros((2, 3, 3)),
        atomic_numbers=np.array([8, 1, 1]),
        metadata=np.array(json.dumps({"units": {"energy": "kcal/mol"}})),
    )
    with pytest.raises(ValueError, match="s.npz: metadata declares energy unit 'kcal/mol'"):
        read_stabie_npz(tmp_path / "s.npz")


def _extxyz(path, energies_ev, with_forces=True, momenta=False, cell=None):
    frames = []
    for i, energy in enumerate(energies_ev):
        atoms = ase.Atoms("OH2", positions=R3 + 0.01 * i, cell=cell, pbc=cell is not None)
        if momenta:
            atoms.set_momenta(np.full((3, 3), 0.1 * (i + 1)))
        forces = np.full((3, 3), float(i)) if with_forces else None
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")


def test_ase_extxyz_requires_explicit_units(tmp_path):
    _extxyz(tmp_path / "t.extxyz", [-1.0, -2.0], momenta=True, cell=6.0 * np.eye(3))
    with pytest.raises(ValueError, match="t.extxyz: energy unit unknown.*energy_unit="):
        read_file(tmp_path / "t.extxyz")
    ds = read_file(tmp_path / "t.extxyz", energy_unit="eV")
    np.testing.assert_allclose(ds.energies, [-1.0, -2.0])
    np.testing.assert_allclose(ds.forces[1], 1.0)
    np.testing.assert_allclose(ds.cell, 6.0 * np.eye(3))
    # Momenta p [amu·Å/internal time] → velocities p/m.
    np.testing.assert_allclose(ds.velocities[0, 0], 0.1 / ds.masses[0])
    kcal = read_file(tmp_path / "t.extxyz", energy_unit="kcal/mol")
    np.testing.assert_allclose(kcal.forces[1], KCAL, rtol=1e-9)


def test_ase_extxyz_without_forces_rejected(tmp_path):
    _extxyz(tmp_path / "noforce.extxyz", [-1.0], with_forces=False)
    with pytest.raises(ValueError, match="noforce.extxyz \\(frame 0\\): missing key 'forces'"):
        read_ase(tmp_path / "noforce.extxyz", energy_unit="eV")


def test_sgdml_xyz_convention_detected(tmp_path):
    text = "3\nEnergy=-100.5 Properties=species:S:1:pos:R:3:forces:R:3\n"
    text += "".join(
        f"{s} {x} {y} {z} 1.0 2.0 3.0\n" for s, (x, y, z) in zip("OHH", R3, strict=True)
    )
    (tmp_path / "md22_test.xyz").write_text(text)
    ds = read_file(tmp_path / "md22_test.xyz")
    np.testing.assert_allclose(ds.energies, [-100.5 * KCAL], rtol=1e-9)
    np.testing.assert_allclose(ds.forces[0, 0], np.array([1.0, 2.0, 3.0]) * KCAL, rtol=1e-9)
    (tmp_path / "other.xyz").write_text(text)  # same content, unknown origin: no guessing
    with pytest.raises(ValueError, match="energy unit unknown"):
        read_file(tmp_path / "other.xyz")


def test_mdsim_water_npy(tmp_path):
    n = 3
    data = dict(
        wrapped_coords=_frames(n),
        atom_types=np.array([8, 1, 1]),
        lengths=np.array([5.0] * 3),
        angles=np.array([90.0] * 3),
        energy=RNG.normal(size=n),
        forces=RNG.normal(size=(n, 3, 3)),
    )
    np.save(tmp_path / "water.npy", np.array(data, dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle=True"):
        read_file(tmp_path / "water.npy")
    ds = read_mdsim_water_npy(tmp_path / "water.npy", allow_pickle=True)
    np.testing.assert_allclose(ds.energies, data["energy"] * KCAL, rtol=1e-9)
    np.testing.assert_allclose(ds.cell, 5.0 * np.eye(3))
    assert ds.temperature_kelvin == 300.0 and ds.metadata["positions_key"] == "wrapped_coords"
    data["angles"] = np.array([90.0, 90.0, 60.0])
    np.save(tmp_path / "tri.npy", np.array(data, dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="'angles'"):
        read_mdsim_water_npy(tmp_path / "tri.npy", allow_pickle=True)


def test_detect_npz_format():
    assert detect_npz_format(["positions", "atomic_numbers", "energies"]) == "stabie"
    assert detect_npz_format(["nuclear_charges", "coords"]) == "rmd17"
    assert detect_npz_format(["R", "z", "cell", "dt_fs", "temperature_K", "V"]) == "openmm_water"
    assert detect_npz_format(["R", "z", "E", "F"]) == "sgdml"
    with pytest.raises(ValueError, match="x.npz: unknown .npz dataset format with keys \\['a'\\]"):
        detect_npz_format(["a"], "x.npz")


# --- bad input ---------------------------------------------------------------------------------
def _valid_npz_bytes(tmp_path) -> bytes:
    _sgdml(tmp_path / "valid.npz", type=np.array("d"))
    return (tmp_path / "valid.npz").read_bytes()


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("empty.npz", b"", "empty.npz: file is empty"),
        ("random.npz", bytes(range(256)) * 4, "random.npz: cannot read as .npz"),
        ("random.xyz", bytes(range(256)) * 4, "random.xyz: ASE cannot parse"),
        ("empty.extxyz", b"\n", "empty.extxyz"),
        ("text.npz", b"hello world", "text.npz: cannot read as .npz"),
    ],
)
def test_corrupt_files(tmp_path, name, content, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=match):
        read_file(tmp_path / name)


def test_truncated_npz(tmp_path):
    data = _valid_npz_bytes(tmp_path)
    for cut in (10, len(data) // 3, len(data) - 5):
        (tmp_path / "cut.npz").write_bytes(data[:cut])
        with pytest.raises(ValueError, match="cut.npz"):
            read_file(tmp_path / "cut.npz")


def test_single_npy_named_npz(tmp_path):
    with open(tmp_path / "arr.npz", "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(ValueError, match="arr.npz: is a single .npy array"):
        read_file(tmp_path / "arr.npz")


def test_missing_file_and_options(tmp_path):
    with pytest.raises(ValueError, match="nothere.npz: file not found"):
        read_file(tmp_path / "nothere.npz")
    _sgdml(tmp_path / "a.npz", type=np.array("d"))
    with pytest.raises(ValueError, match="options \\['allow_pickle'\\] do not apply"):
        read_file(tmp_path / "a.npz", allow_pickle=True)


@pytest.mark.parametrize(
    "change, key, expected",
    [
        (dict(F=None), "'F'", "missing key 'F'"),
        (dict(E=np.zeros((5, 1))), "'energies'", r"expected \[4\]"),
        (dict(F=np.zeros((4, 2, 3))), "'forces'", r"expected \[4, 3, 3\]"),
        (dict(z=np.array([8, 1])), "'atomic_numbers'", r"expected \[3\]"),
        (dict(E=np.full((4, 2), 1.0)), "'E'", r"expected \[F\] or \[F, 1\]"),
        (dict(R=np.full((4, 3, 3), np.nan)), "'positions'", "non-finite"),
        (dict(E=np.array(["a", "b", "c", "d"])), "'E'", "numeric"),
    ],
)
def test_bad_arrays_name_file_key_expectation(tmp_path, change, key, expected):
    _sgdml(tmp_path / "bad.npz", type=np.array("d"), **change)
    with pytest.raises(ValueError) as info:
        read_file(tmp_path / "bad.npz")
    message = str(info.value)
    assert "bad.npz" in message and key in message, message
    assert pytest.importorskip("re").search(expected, message), message


def test_object_arrays_are_not_unpickled(tmp_path):
    np.savez(tmp_path / "obj.npz", R=np.array([{"a": 1}], dtype=object), z=np.array([1]))
    with pytest.raises(ValueError, match="obj.npz: cannot read as .npz"):
        read_file(tmp_path / "obj.npz")


def _check_outcome(path: pathlib.Path):
    """Reading must either give a fully valid Dataset or raise ValueError naming the file."""
    try:
        ds = read_file(path, energy_unit="eV") if path.suffix != ".npz" else read_file(path)
    except ValueError as e:
        assert path.name in str(e), str(e)
        return None
    assert isinstance(ds, Dataset)
    assert ds.positions.shape == (ds.n_frames, ds.n_atoms, 3) and not ds.positions.flags.writeable
    assert np.all(np.isfinite(ds.positions)) and np.all(np.isfinite(ds.energies))
    return ds


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=st.binary(max_size=2048), suffix=st.sampled_from([".npz", ".xyz", ".extxyz"]))
def test_fuzz_random_bytes(content, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / f"fuzz{suffix}"
        path.write_bytes(content)
        _check_outcome(path)


_VALID = {}


def _valid_files() -> dict[str, bytes]:
    if not _VALID:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = pathlib.Path(tmp)
            _sgdml(tmp / "a.npz", n_frames=2, type=np.array("d"))
            _rmd17(tmp / "b.npz", n_frames=2)
            _water_npz(tmp / "c.npz", n_frames=2)
            _extxyz(tmp / "d.extxyz", [-1.0, -2.0])
            for p in tmp.iterdir():
                _VALID[p.name] = p.read_bytes()
    return _VALID


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.sampled_from(["a.npz", "b.npz", "c.npz", "d.extxyz"]),
    edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=0, max_size=8),
    cut=st.floats(0.0, 1.0),
)
def test_fuzz_mutated_valid_files(which, edits, cut):
    data = bytearray(_valid_files()[which])
    for where, value in edits:
        data[min(int(where * len(data)), len(data) - 1)] = value
    data = bytes(data[: max(1, int(round(cut * len(data))))]) if cut < 1.0 else bytes(data)
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / which
        path.write_bytes(data)
        _check_outcome(path)


_SPECIAL = st.sampled_from([np.nan, np.inf, -np.inf, 1e30, -0.0])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_frames=st.integers(0, 3),
    n_atoms=st.integers(0, 4),
    shapes=st.sampled_from(["ok", "R_2d", "F_atoms", "E_frames", "z_2d", "R_xy"]),
    z_values=st.lists(st.integers(-2, 130), min_size=4, max_size=4),
    poison=st.lists(
        st.tuples(st.sampled_from(["R", "E", "F"]), st.floats(0, 1), _SPECIAL), max_size=3
    ),
    fmt=st.sampled_from(["sgdml", "stabie"]),
)
def test_fuzz_structured_arrays(n_frames, n_atoms, shapes, z_values, poison, fmt):
    """Random shapes, atomic numbers and NaN/inf/huge values placed anywhere, in the sGDML and
    the project's npz layouts: a fully valid Dataset or a ValueError naming the file."""
    rng = np.random.default_rng(n_frames * 31 + n_atoms)
    arrays = {
        "R": rng.normal(scale=2.0, size=(n_frames, n_atoms, 3)),
        "z": np.asarray(z_values[:n_atoms], np.int64),
        "E": rng.normal(size=(n_frames,)) - 50.0,
        "F": rng.normal(size=(n_frames, n_atoms, 3)),
    }
    if shapes == "R_2d":
        arrays["R"] = arrays["R"].reshape(n_frames, n_atoms * 3)
    elif shapes == "F_atoms":
        arrays["F"] = rng.normal(size=(n_frames, n_atoms + 1, 3))
    elif shapes == "E_frames":
        arrays["E"] = rng.normal(size=(n_frames + 1,))
    elif shapes == "z_2d":
        arrays["z"] = arrays["z"][None]
    elif shapes == "R_xy":
        arrays["R"] = arrays["R"][..., :2]
    for key, where, value in poison:
        flat = arrays[key].reshape(-1)
        if flat.size:
            flat[min(int(where * flat.size), flat.size - 1)] = value
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / f"fuzz_{fmt}.npz"
        if fmt == "sgdml":
            np.savez(path, type=np.array("d"), **arrays)
        else:  # the project's layout with unit metadata, written without going through Dataset
            meta = json.dumps({"units": {"energy": "eV", "length": "angstrom"}})
            np.savez(path, positions=arrays["R"], atomic_numbers=arrays["z"],
                     energies=arrays["E"], forces=arrays["F"], metadata=np.array(meta))  # fmt: skip
        ds = _check_outcome(path)
    if ds is not None:  # whatever loads is physical: finite, consistent, plausible
        assert ds.forces.shape == ds.positions.shape and ds.energies.shape == (ds.n_frames,)
        assert np.all(np.isfinite(ds.forces)) and np.all(ds.atomic_numbers >= 1)
        assert np.max(np.abs(ds.forces), initial=0.0) <= 50.0


def test_mdsim_npy_garbage_is_value_error(tmp_path):
    (tmp_path / "water.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match="water.npy"):
        read_mdsim_water_npy(tmp_path / "water.npy", allow_pickle=True)
    with open(tmp_path / "list.npy", "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(ValueError, match="list.npy"):
        read_mdsim_water_npy(tmp_path / "list.npy", allow_pickle=True)


# --- real data (skipped when ../shared/data is absent) -----------------------------------------
def test_real_rmd17_aspirin_units_and_spread():
    path = shared_file("rmd17_aspirin", "rmd17_aspirin_train_01.npz")
    ds = load_dataset(path)
    with np.load(path) as raw:
        e_kcal, f_kcal, old_e = raw["energies"], raw["forces"], raw["old_energies"]
    assert (ds.n_frames, ds.n_atoms) == (1000, 21)
    assert ds.atomic_numbers.tolist() == [6] * 7 + [8] * 3 + [6, 6, 8] + [1] * 8
    # kcal/mol -> eV by the CODATA factor: std ≈ std_kcal / 23.06, mean ≈ −17,618 eV.
    assert ds.energies.std() == pytest.approx(e_kcal.std() / 23.0605, rel=1e-5)
    assert 0.1 < ds.energies.std() < 1.0
    assert ds.energies.mean() == pytest.approx(-17617.7, abs=1.0)
    np.testing.assert_allclose(np.abs(ds.forces).mean(), np.abs(f_kcal).mean() / 23.0605, rtol=1e-5)
    assert 0.5 < np.abs(ds.forces).mean() < 1.5  # eV/Å; ≈ 21.8 kcal/mol/Å in the file
    md17 = load_dataset(path, labels="md17")
    offset = (md17.energies - ds.energies).mean()
    assert offset == pytest.approx((old_e - e_kcal).mean() * KCAL, rel=1e-9)
    assert offset == pytest.approx(-463 * KCAL, rel=0.01)  # the ≈462 kcal/mol label offset


def test_real_rmd17_five_train_shards_concatenate():
    shared_file("rmd17_aspirin", "rmd17_aspirin_train_01.npz")
    pattern = str(shared_file("rmd17_aspirin")) + "/rmd17_aspirin_train_0*.npz"
    ds = load_dataset(pattern)
    assert ds.n_frames == 5000 and ds.metadata["concatenated_frames"] == (1000,) * 5
    assert all("train" in f for f in ds.metadata["source_files"])
    assert len(np.unique(ds.frame_ids)) < 5000  # the official splits overlap


def test_real_md22_xyz():
    ds = load_dataset(shared_file("md22_ac_ala3_nhme", "md22_Ac-Ala3-NHMe_5frames.xyz"))
    assert (ds.n_frames, ds.n_atoms) == (5, 42)
    counts = np.bincount(ds.atomic_numbers)
    assert (counts[1], counts[6], counts[7], counts[8]) == (22, 12, 4, 4)
    assert ds.energies[0] == pytest.approx(-620726.002662 * KCAL, rel=1e-9)  # ≈ −26,917 eV
    assert np.abs(ds.forces).mean() == pytest.approx(12.6 * KCAL, rel=0.05)
    assert not ds.is_periodic


def test_real_water_npz():
    ds = load_dataset(shared_file("spcfw_water_64", "spcfw_water_64_300K.npz"))
    assert (ds.n_frames, ds.n_atoms) == (10_000, 192)
    np.testing.assert_allclose(ds.cell, 12.4297 * np.eye(3), atol=1e-4)
    assert ds.temperature_kelvin == 300.0 and ds.time_fs[1] == 10.0
    # Potential energy: −9.999 kcal/mol per molecule (PROVENANCE), here in eV.
    assert ds.energies.mean() / 64 == pytest.approx(-9.999 * KCAL, rel=2e-3)
    # On-step kinetic temperature 291.6 K with 3N−3 dof (PROVENANCE): checks the Å/fs conversion.
    ke = 0.5 * np.einsum("i,fij->f", ds.masses, ds.velocities**2)
    temperature = 2 * ke.mean() / ((3 * 192 - 3) * units.BOLTZMANN_EV_PER_K)
    assert temperature == pytest.approx(291.6, abs=1.0)


def test_stabie_bad_metadata_json(tmp_path):
    arrays = dict(
        positions=_frames(2),
        energies=np.zeros(2),
        forces=np.zeros((2, 3, 3)),
        atomic_numbers=np.array([8, 1, 1]),
    )
    for i, meta in enumerate([np.array("{not json"), np.array(b"\xff\xfe"), np.array("[1]")]):
        np.savez(tmp_path / f"m{i}.npz", metadata=meta, **arrays)
        with pytest.raises(ValueError, match=f"m{i}.npz: key 'metadata'"):
            read_file(tmp_path / f"m{i}.npz")
    np.savez(tmp_path / "deep.npz", metadata=np.array("[" * 100_000 + "]" * 100_000), **arrays)
    with pytest.raises(ValueError, match="deep.npz: key 'metadata'"):
        read_file(tmp_path / "deep.npz")


# --- units honoured or refused, implausible magnitudes -----------------------------------------
@pytest.mark.parametrize(
    "make, name, stored, wrong",
    [(_rmd17, "r.npz", "kcal/mol", "eV"), (_water_npz, "w.npz", "kcal/mol", "hartree")],
)
def test_fixed_unit_formats_refuse_a_contradicting_energy_unit(tmp_path, make, name, stored, wrong):
    path = tmp_path / name
    make(path)
    with pytest.raises(ValueError, match=rf"{name}: energy_unit='{wrong}' .* store {stored}"):
        read_file(path, energy_unit=wrong)
    same = read_file(path, energy_unit=stored)  # agreeing: accepted, same values
    np.testing.assert_array_equal(same.forces, read_file(path).forces)


def test_stabie_npz_refuses_a_non_ev_energy_unit_option(tmp_path):
    ds = Dataset(
        positions=_frames(2),
        energies=np.zeros(2),
        forces=np.zeros((2, 3, 3)),
        atomic_numbers=np.array([8, 1, 1]),
    )
    path = save_dataset(ds, tmp_path / "s")
    with pytest.raises(ValueError, match=r"s\.npz: energy_unit='kcal/mol' .* store eV"):
        read_file(path, energy_unit="kcal/mol")
    assert read_file(path, energy_unit="eV").n_frames == 2


def test_kcal_values_saved_as_ev_are_refused_with_the_likely_mixup(tmp_path):
    """rMD17 aspirin forces in kcal/mol/Å reach ~164; stored as eV/Å they must not load."""
    forces = np.zeros((2, 3, 3))
    forces[1, 2, 0] = 164.0
    ds = Dataset(
        positions=_frames(2),
        energies=np.full(2, -406_000.0),
        forces=forces,
        atomic_numbers=np.array([8, 1, 1]),
    )
    path = save_dataset(ds, tmp_path / "mixed")
    with pytest.raises(ValueError, match=r"mixed\.npz: force components up to 164 eV/Å.*23x"):
        read_file(path)
    forces[1, 2, 0] = 7.0  # a physical maximum (rMD17 aspirin in eV/Å) loads
    fine = Dataset(
        positions=ds.positions,
        energies=np.full(2, -2079.0),  # water's DFT total energy in eV (-76.4 Hartree)
        forces=forces,
        atomic_numbers=ds.atomic_numbers,
    )
    ok = save_dataset(fine, tmp_path / "fine")
    assert read_file(ok).forces.max() == 7.0


def test_thomas_fermi_bound_lies_above_real_atoms_and_below_kcal_read_as_ev():
    """Free-atom all-electron energies (Hartree) lie under the bound; kcal/mol-as-eV does not."""
    hartree = {1: -0.5, 6: -37.85, 8: -75.07, 26: -1262.4, 80: -19648.0}  # HF/relativistic
    for z, e in hartree.items():
        bound = max_plausible_energy_ev([z])
        assert abs(e) * units.HARTREE_IN_EV < bound < 23 * abs(e) * units.HARTREE_IN_EV
    aspirin = [6] * 9 + [1] * 8 + [8] * 4
    e_ev = -406_000.0 * units.kcal_per_mol_to_ev(1.0)  # rMD17 aspirin, -1.76e4 eV
    assert abs(e_ev) < max_plausible_energy_ev(aspirin) < 406_000.0


def test_kcal_energies_saved_as_ev_are_refused_even_with_small_forces(tmp_path):
    ds = Dataset(
        positions=_frames(2),
        energies=np.array([-2079.0, -2079.0 * 23.06]),  # the second frame in kcal/mol
        forces=np.zeros((2, 3, 3)),
        atomic_numbers=np.array([8, 1, 1]),
    )
    path = save_dataset(ds, tmp_path / "e_mix")
    with pytest.raises(
        ValueError, match=r"e_mix\.npz: total energies up to 47941\.7 eV .* beyond the 4078\.89 eV"
    ):
        read_file(path)


def test_coordinates_in_nanometres_are_refused(tmp_path):
    ds = Dataset(
        positions=_frames(2) / 10.0,  # water in nm: O-H 0.096
        energies=np.full(2, -2079.0),
        forces=np.zeros((2, 3, 3)),
        atomic_numbers=np.array([8, 1, 1]),
    )
    path = save_dataset(ds, tmp_path / "nm")
    with pytest.raises(ValueError, match=r"nm\.npz: two atoms of the first frame are 0\.0\d+ Å"):
        read_file(path)
    ok = save_dataset(dataclasses.replace(ds, positions=ds.positions * 10.0), tmp_path / "a")
    assert read_file(ok).n_frames == 2


def test_ase_reader_takes_configured_energy_and_forces_keys(tmp_path):
    """MACE-style files: energies in the REF_energy comment key, forces in a REF_forces array."""
    rng = np.random.default_rng(0)
    frames, energies, forces = [], [], []
    for i in range(3):
        atoms = ase.Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
        atoms.positions += 0.02 * rng.standard_normal((3, 3))
        f = rng.standard_normal((3, 3))
        atoms.info["REF_energy"] = -470.0 - 0.1 * i
        atoms.arrays["REF_forces"] = f
        frames.append(atoms)
        energies.append(-470.0 - 0.1 * i)
        forces.append(f)
    path = tmp_path / "mace.extxyz"
    ase.io.write(path, frames, format="extxyz")
    with pytest.raises(ValueError, match=r"mace\.extxyz \(frame 0\): missing key 'energy'"):
        read_file(path, energy_unit="eV")
    d = read_file(path, energy_unit="kcal/mol", energy_key="REF_energy", forces_key="REF_forces")
    kcal = units.KCAL_PER_MOL_IN_EV
    np.testing.assert_allclose(d.energies, np.array(energies) * kcal, rtol=1e-12)
    np.testing.assert_allclose(d.forces, np.array(forces) * kcal, rtol=1e-6)  # 8-digit text
    with pytest.raises(ValueError, match=r"missing key 'DFT_forces' \(forces_key\).*REF_forces"):
        read_file(path, energy_unit="eV", energy_key="REF_energy", forces_key="DFT_forces")
    with pytest.raises(ValueError, match=r"missing key 'E' \(energy_key\).*REF_energy"):
        read_file(path, energy_unit="eV", energy_key="E")
    # The experiments pass the config's keys to every stage's reader.
    from experiments.configs import aspirin, water

    for config in (aspirin.get_config("smoke"), water.get_config("smoke")):
        config.data.energy_key, config.data.forces_key = "REF_energy", "REF_forces"
        config.data.energy_unit = "eV"
        assert config_reader.reader_options(config.data) == {
            "energy_unit": "eV",
            "energy_key": "REF_energy",
            "forces_key": "REF_forces",
        }
