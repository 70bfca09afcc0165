"""Tests for stabie_jax.data.dataset: validation, immutability, subset, concatenate, units."""

from __future__ import annotations

import numpy as np
import pytest

from stabie_jax import units
from stabie_jax.data import (
    Dataset,
    concatenate,
    velocities_from_angstrom_per_fs,
    velocities_to_angstrom_per_fs,
)


def _water(n_frames=4, seed=0, **overrides):
    rng = np.random.default_rng(seed)
    base = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    kwargs = dict(
        positions=base + 0.01 * rng.normal(size=(n_frames, 3, 3)),
        energies=rng.normal(size=n_frames),
        forces=rng.normal(size=(n_frames, 3, 3)),
        atomic_numbers=np.array([8, 1, 1]),
        metadata={"source_files": ["water_test.npz"], "temperature_kelvin": 300.0},
    )
    kwargs.update(overrides)
    return Dataset(**kwargs)


def test_shapes_and_default_masses():
    ds = _water()
    assert (ds.n_frames, ds.n_atoms, len(ds)) == (4, 3, 4)
    np.testing.assert_allclose(ds.masses, [15.999, 1.008, 1.008], atol=1e-3)
    assert ds.positions.dtype == np.float64 and ds.atomic_numbers.dtype == np.int64
    assert not ds.is_periodic and ds.pbc.tolist() == [False] * 3
    assert ds.temperature_kelvin == 300.0


def test_arrays_and_metadata_are_read_only():
    source = np.zeros((2, 3, 3))
    ds = _water(2, positions=source)
    source[0, 0, 0] = 5.0  # the dataset holds its own copy
    assert ds.positions[0, 0, 0] == 0.0
    for name in ("positions", "energies", "forces", "atomic_numbers", "masses", "pbc"):
        with pytest.raises(ValueError, match="read-only"):
            getattr(ds, name)[...] = 0
    with pytest.raises(TypeError):
        ds.metadata["temperature_kelvin"] = 1.0
    with pytest.raises(AttributeError):
        ds.positions = np.ones((2, 3, 3))


@pytest.mark.parametrize(
    "overrides, key, expected",
    [
        (dict(positions=np.zeros((4, 3, 2))), "positions", r"\[\*, \*, 3\]"),
        (dict(energies=np.zeros(5)), "energies", r"\[4\]"),
        (dict(forces=np.zeros((4, 2, 3))), "forces", r"\[4, 3, 3\]"),
        (dict(atomic_numbers=np.array([8, 1])), "atomic_numbers", r"\[3\]"),
        (dict(atomic_numbers=np.array([8, 1, 0])), "atomic_numbers", "integers in"),
        (dict(masses=np.array([16.0, 1.0, -1.0])), "masses", "positive"),
        (dict(velocities=np.zeros((3, 3, 3))), "velocities", r"\[4, 3, 3\]"),
        (dict(time_fs=np.zeros(2)), "time_fs", r"\[4\]"),
        (dict(frame_ids=np.zeros(4)), "frame_ids", "integers"),
        (dict(pbc=np.array([True, True, True])), "pbc", "cell"),
        (dict(cell=np.zeros((3, 3))), "cell", "singular"),
        (dict(cell=np.eye(2)), "cell", r"\[3, 3\]"),
        (dict(forces=None), "energies", "together"),
    ],
)
def test_invalid_input_names_file_key_and_expectation(overrides, key, expected):
    with pytest.raises(ValueError, match=key) as info:
        _water(**overrides)
    message = str(info.value)
    assert "water_test.npz" in message
    assert pytest.importorskip("re").search(expected, message), message


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("key", ["positions", "energies", "forces"])
def test_non_finite_values_rejected(key, bad):
    ds = _water()
    array = np.array(getattr(ds, key))
    array.flat[1] = bad
    with pytest.raises(ValueError, match=f"'{key}' contains 1 non-finite"):
        _water(**{key: array})


def test_string_array_rejected():
    with pytest.raises(ValueError, match="'energies' has dtype"):
        _water(energies=np.array(["a", "b", "c", "d"]))


def test_subset_order_repeats_and_mask():
    ds = _water(5, time_fs=np.arange(5) * 10.0, frame_ids=np.arange(5) + 100)
    sub = ds.subset([3, 1, 3])
    np.testing.assert_array_equal(sub.positions, ds.positions[[3, 1, 3]])
    np.testing.assert_array_equal(sub.energies, ds.energies[[3, 1, 3]])
    np.testing.assert_array_equal(sub.time_fs, [30.0, 10.0, 30.0])
    np.testing.assert_array_equal(sub.frame_ids, [103, 101, 103])
    assert sub.metadata == ds.metadata
    mask = np.array([True, False, False, False, True])
    np.testing.assert_array_equal(ds.subset(mask).energies, ds.energies[[0, 4]])
    assert ds.n_frames == 5  # unchanged
    for bad in ([], [5], [-6], np.array([[0]]), [0.5]):
        with pytest.raises(ValueError, match="subset"):
            ds.subset(bad)


def test_concatenate_joins_frames_and_checks_consistency():
    a = _water(3, seed=1, metadata={"source_files": ["a.npz"], "name": "w"})
    b = _water(2, seed=2, metadata={"source_files": ["b.npz"]})
    c = concatenate([a, b])
    assert c.n_frames == 5
    np.testing.assert_array_equal(c.energies, np.concatenate([a.energies, b.energies]))
    assert c.metadata["source_files"] == ("a.npz", "b.npz")
    assert c.metadata["concatenated_frames"] == (3, 2)
    assert c.metadata["name"] == "w"
    other_atoms = _water(2, atomic_numbers=np.array([8, 1, 3]), metadata={"source_files": ["x"]})
    with pytest.raises(ValueError, match="x: key 'atomic_numbers' differs"):
        concatenate([a, other_atoms])
    periodic = _water(2, cell=10 * np.eye(3), metadata={"source_files": ["p"]})
    with pytest.raises(ValueError, match="cell"):
        concatenate([a, periodic])
    unlabelled = _water(2, energies=None, forces=None, metadata={"source_files": ["u"]})
    with pytest.raises(ValueError, match="energies/forces"):
        concatenate([a, unlabelled])
    with pytest.raises(ValueError, match="no datasets"):
        concatenate([])


def test_periodic_defaults_pbc_true():
    ds = _water(cell=12.0 * np.eye(3))
    assert ds.is_periodic and ds.pbc.tolist() == [True] * 3
    np.testing.assert_array_equal(ds.cell, 12.0 * np.eye(3))


def test_velocity_unit_conversion_matches_ase():
    ase_units = pytest.importorskip("ase.units")
    v_fs = np.array([0.01, -0.02, 0.005])  # Å/fs
    v_internal = velocities_from_angstrom_per_fs(v_fs)
    # ASE: ase.units.fs is one femtosecond in internal time, so 1 Å/fs = 1/ase.units.fs.
    # (ASE uses CODATA 2014 constants by default, units.py CODATA 2018: ~4e-9 apart.)
    np.testing.assert_allclose(v_internal, v_fs / ase_units.fs, rtol=1e-8)
    np.testing.assert_allclose(velocities_to_angstrom_per_fs(v_internal), v_fs, rtol=1e-14)
    # Kinetic energy of an H atom at 0.01 Å/fs: 0.5 m v^2 in eV, by hand in SI units.
    m_kg = 1.008 * units.ATOMIC_MASS_UNIT_KG
    ke_j = 0.5 * m_kg * (0.01 * 1e-10 / 1e-15) ** 2
    ke_ev = 0.5 * 1.008 * velocities_from_angstrom_per_fs(0.01) ** 2
    np.testing.assert_allclose(ke_ev, ke_j / units.ELEMENTARY_CHARGE_C, rtol=1e-9)


def test_replace_revalidates():
    ds = _water()
    with pytest.raises(ValueError, match="energies"):
        ds.replace(energies=np.zeros(2))
    assert ds.replace(metadata={"name": "x"}).metadata["name"] == "x"
