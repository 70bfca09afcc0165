"""Units used everywhere inside stabie_jax: ASE's eV, Å, amu, with time derived.

This is the only module that defines physical constants. Every other module imports from here
and converts only at its I/O boundary (dataset loaders, configs, reports) with a named function.

Internal system (the same as ASE's and JAX-MD's "metal"-like conventions):

* length: Å
* energy: eV
* mass: amu (unified atomic mass unit, Da)
* time: ``Å·sqrt(amu/eV)`` ≈ 10.1805 fs; use :func:`fs_to_internal` for timesteps.
* temperature enters MD as ``kT`` in eV, see :func:`kT`.

Constants are the exact SI values of the 2019 redefinition (CODATA 2018), from which the derived
factors are computed, so that they agree with ``ase.units`` to machine precision.

Examples:
  >>> round(kT(300.0), 6)
  0.025852
  >>> round(kcal_per_mol_to_ev(23.060548), 6)
  1.0
"""

from __future__ import annotations

import math

__all__ = [
    "ANGSTROM2_PER_PS_IN_M2_PER_S",
    "ATOMIC_MASS_UNIT_KG",
    "AVOGADRO_PER_MOL",
    "BOHR_IN_ANGSTROM",
    "BOLTZMANN_EV_PER_K",
    "BOLTZMANN_J_PER_K",
    "ELEMENTARY_CHARGE_C",
    "EV_IN_KCAL_PER_MOL",
    "FEMTOSECOND_IN_INTERNAL",
    "HARTREE_IN_EV",
    "KCAL_PER_MOL_IN_EV",
    "MDSIM_KCAL_PER_MOL_PER_EV",
    "PICOSECOND_IN_INTERNAL",
    "SPEED_OF_LIGHT_CM_PER_S",
    "THERMOCHEMICAL_CALORIE_J",
    "ev_to_kcal_per_mol",
    "fs_to_internal",
    "hartree_to_ev",
    "internal_to_fs",
    "kT",
    "kcal_per_mol_to_ev",
    "per_ps_to_internal",
    "temperature_from_kT",
    "wavenumber_to_angular_frequency",
    "wavenumber_to_ev",
]

# --- CODATA 2018 exact / recommended SI values ------------------------------------------------
ELEMENTARY_CHARGE_C = 1.602176634e-19  # exact
AVOGADRO_PER_MOL = 6.02214076e23  # exact
BOLTZMANN_J_PER_K = 1.380649e-23  # exact
ATOMIC_MASS_UNIT_KG = 1.66053906660e-27  # CODATA 2018 recommended
THERMOCHEMICAL_CALORIE_J = 4.184  # exact by definition

# --- Derived internal-unit factors ------------------------------------------------------------
BOLTZMANN_EV_PER_K = BOLTZMANN_J_PER_K / ELEMENTARY_CHARGE_C
"""k_B in eV/K (8.617333262e-5)."""

KCAL_PER_MOL_IN_EV = 1000.0 * THERMOCHEMICAL_CALORIE_J / (ELEMENTARY_CHARGE_C * AVOGADRO_PER_MOL)
"""One kcal/mol expressed in eV (0.0433641...)."""

EV_IN_KCAL_PER_MOL = 1.0 / KCAL_PER_MOL_IN_EV
"""One eV expressed in kcal/mol (23.0605...)."""

MDSIM_KCAL_PER_MOL_PER_EV = 23.0605
"""A rounded kcal/mol-per-eV factor, only for reproducing the authors' numbers. Their data
preprocessing (MDsim ``preprocessing/*.py``, StABlE-Training ``data/*.py``) divides the kcal/mol
energies and forces of MD17, MD22 and water by ``EV_TO_KCAL_MOL`` of ``mdsim/common/utils.py``
to get "eV"; that constant is 23.06052 in both repositories, 2e-5 above this value. At
aspirin's ~-406,737 kcal/mol, 23.0605 differs from :data:`EV_IN_KCAL_PER_MOL` by a constant
0.84 kcal/mol (23.06052 by 0.49 kcal/mol)."""

FEMTOSECOND_IN_INTERNAL = 1e-15 / (1e-10 * math.sqrt(ATOMIC_MASS_UNIT_KG / ELEMENTARY_CHARGE_C))
"""One femtosecond in internal time units Å·sqrt(amu/eV) (0.0982269...)."""

PICOSECOND_IN_INTERNAL = 1000.0 * FEMTOSECOND_IN_INTERNAL

SPEED_OF_LIGHT_CM_PER_S = 2.99792458e10  # exact

ANGSTROM2_PER_PS_IN_M2_PER_S = 1e-20 / 1e-12
"""Diffusivity: 1 Å²/ps = 1e-8 m²/s."""


def kT(temperature_kelvin: float):
    """Thermal energy k_B·T in eV for a temperature in kelvin (works on arrays too)."""
    return BOLTZMANN_EV_PER_K * temperature_kelvin


def temperature_from_kT(kT_ev):
    """Temperature in kelvin for a thermal energy in eV."""
    return kT_ev / BOLTZMANN_EV_PER_K


def fs_to_internal(time_fs):
    """Femtoseconds → internal time units."""
    return time_fs * FEMTOSECOND_IN_INTERNAL


def internal_to_fs(time_internal):
    """Internal time units → femtoseconds."""
    return time_internal / FEMTOSECOND_IN_INTERNAL


def kcal_per_mol_to_ev(energy_kcal_per_mol):
    """kcal/mol (also kcal/mol/Å for forces) → eV (eV/Å)."""
    return energy_kcal_per_mol * KCAL_PER_MOL_IN_EV


def ev_to_kcal_per_mol(energy_ev):
    """eV (also eV/Å) → kcal/mol (kcal/mol/Å)."""
    return energy_ev * EV_IN_KCAL_PER_MOL


def hartree_to_ev(energy_hartree):
    """Hartree → eV (CODATA 2018: 1 Eh = 27.211386245988 eV)."""
    return energy_hartree * HARTREE_IN_EV


HARTREE_IN_EV = 27.211386245988
"""CODATA 2018 Hartree energy in eV."""

BOHR_IN_ANGSTROM = 0.529177210903
"""CODATA 2018 Bohr radius in Å."""


def wavenumber_to_ev(wavenumber_per_cm):
    """Spectroscopic wavenumber (cm⁻¹) → photon energy h·c·ν̃ in eV."""
    planck_ev_s = 6.62607015e-34 / ELEMENTARY_CHARGE_C  # exact h in eV·s
    return planck_ev_s * SPEED_OF_LIGHT_CM_PER_S * wavenumber_per_cm


def wavenumber_to_angular_frequency(wavenumber_per_cm):
    """Wavenumber (cm⁻¹) → angular frequency ω = 2π c ν̃ in internal inverse time units."""
    omega_per_s = 2.0 * math.pi * SPEED_OF_LIGHT_CM_PER_S * wavenumber_per_cm
    return omega_per_s * 1e-15 / FEMTOSECOND_IN_INTERNAL


def per_ps_to_internal(rate_per_ps):
    """A rate (friction coefficient, frequency) in 1/ps → internal inverse time units."""
    return rate_per_ps / PICOSECOND_IN_INTERNAL
