"""units.py against CODATA 2018 values and ASE's constants."""

import math

import ase.units
import pytest

from stabie_jax import units


def test_boltzmann_constant_codata():
    assert units.BOLTZMANN_EV_PER_K == pytest.approx(8.617333262e-5, rel=1e-10)
    # ASE 3.29 defaults to CODATA 2014; the revisions differ by < 1e-6 relative.
    assert units.BOLTZMANN_EV_PER_K == pytest.approx(ase.units.kB, rel=1e-6)


def test_kT_room_temperature():
    assert units.kT(300.0) == pytest.approx(0.025851999786, rel=1e-10)
    assert units.temperature_from_kT(units.kT(512.3)) == pytest.approx(512.3, rel=1e-14)


def test_kcal_per_mol():
    # 1 eV = 23.060547830618307 kcal/mol (CODATA 2018, thermochemical calorie).
    assert units.EV_IN_KCAL_PER_MOL == pytest.approx(23.060547830618307, rel=1e-12)
    assert units.kcal_per_mol_to_ev(1.0) == pytest.approx(ase.units.kcal / ase.units.mol, rel=1e-6)
    assert units.ev_to_kcal_per_mol(units.kcal_per_mol_to_ev(7.5)) == pytest.approx(7.5)


def test_femtosecond_matches_ase():
    assert units.FEMTOSECOND_IN_INTERNAL == pytest.approx(ase.units.fs, rel=1e-6)
    assert units.internal_to_fs(units.fs_to_internal(0.5)) == pytest.approx(0.5)
    # Internal time unit Å·sqrt(amu/eV) is 10.1805 fs.
    assert 1.0 / units.FEMTOSECOND_IN_INTERNAL == pytest.approx(10.180505, rel=1e-6)


def test_hartree_and_bohr():
    assert units.HARTREE_IN_EV == 27.211386245988  # CODATA 2018
    assert units.hartree_to_ev(1.0) == pytest.approx(ase.units.Hartree, rel=1e-6)
    assert units.BOHR_IN_ANGSTROM == pytest.approx(ase.units.Bohr, rel=1e-6)


def test_wavenumber_conversions():
    # 1 cm^-1 = 1.239841984e-4 eV (h c / e).
    assert units.wavenumber_to_ev(1.0) == pytest.approx(1.239841984e-4, rel=1e-9)
    # omega for 2000 cm^-1: 2*pi*c*nu = 3.767e14 rad/s -> times internal time unit (s).
    omega = units.wavenumber_to_angular_frequency(2000.0)
    expected = 2 * math.pi * 2.99792458e10 * 2000.0 * 10.180505e-15
    assert omega == pytest.approx(expected, rel=1e-6)
