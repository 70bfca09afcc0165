"""Flexible three-site water models and the cubic water box they are simulated in.

Models (energy E = Σ_bonds k_b/2 (r − r0)² + Σ_angles k_θ/2 (θ − θ0)² + LJ(O–O) + Coulomb,
intramolecular non-bonded pairs fully excluded, no constraints):

* ``spcfw`` — SPC/Fw of Wu, Tepper & Voth, J. Chem. Phys. 124, 024503 (2006), the model the
  StABlE paper cites: k_b = 1059.162 kcal/mol/Å², r0 = 1.012 Å, k_θ = 75.90 kcal/mol/rad²,
  θ0 = 113.24°, q_O = −0.82 e, q_H = +0.41 e, σ_OO = 3.165492 Å, ε_OO = 0.1554253 kcal/mol.
* ``spce-flex`` — SPC/E non-bonded terms (Berendsen, Grigera & Straatsma, J. Phys. Chem. 91,
  6269 (1987): q_O = −0.8476 e, σ_OO = 3.16557 Å, ε_OO = 0.650194 kJ/mol) with the harmonic
  bond/angle terms of the GROMACS ``spce.itp`` FLEXIBLE block (k_b = 345000 kJ/mol/nm²,
  r0 = 1.0 Å, k_θ = 383 kJ/mol/rad², θ0 = 109.47°), the usual "flexible SPC/E" of the
  MDsim water data (Fu et al., TMLR 2023).

OpenMM's harmonic terms use the same k/2 convention, so the published k are used as they are.
Electrostatics: PME with real-space cutoff ``cutoff_angstrom`` (default 6 Å; must be < L/2) and
Ewald error tolerance 1e-5; LJ cut at the same distance without a tail correction. Centre-of-mass
motion is removed every step (``CMMotionRemover``), so the kinetic temperature has 3N − 3
degrees of freedom.

The box is cubic, sized from the number of molecules and a mass density
(:func:`box_length_angstrom`); molecules start at their equilibrium geometry on a simple cubic
grid with random orientations (:func:`initial_water_positions`). Atoms are ordered O, H, H per
molecule. :func:`build_water_system` needs ``openmm`` (the ``reference`` extra); the rest is
numpy and ASE only.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from stabie_jax import units
from stabie_jax.data.generate.extras import require

__all__ = [
    "WATER_ATOMIC_NUMBERS",
    "WATER_MODELS",
    "WaterModel",
    "box_length_angstrom",
    "build_water_system",
    "initial_water_positions",
    "water_masses",
]

WATER_ATOMIC_NUMBERS = (8, 1, 1)


class WaterModel(NamedTuple):
    """Parameters of a flexible three-site water model (kcal/mol, Å, degrees, e)."""

    name: str
    bond_k_kcal_per_mol_a2: float
    bond_r0_angstrom: float
    angle_k_kcal_per_mol_rad2: float
    angle_theta0_deg: float
    charge_o: float
    charge_h: float
    sigma_oo_angstrom: float
    epsilon_oo_kcal_per_mol: float
    reference: str


_KJ_IN_KCAL = 1.0 / units.THERMOCHEMICAL_CALORIE_J  # 1 kJ = 1/4.184 kcal (exact)
_NM2_IN_A2 = 100.0  # 1 nm² = 100 Å² (definition of the units)

WATER_MODELS = {
    "spcfw": WaterModel(
        name="SPC/Fw",
        bond_k_kcal_per_mol_a2=1059.162,
        bond_r0_angstrom=1.012,
        angle_k_kcal_per_mol_rad2=75.90,
        angle_theta0_deg=113.24,
        charge_o=-0.82,
        charge_h=0.41,
        sigma_oo_angstrom=3.165492,
        epsilon_oo_kcal_per_mol=0.1554253,
        reference="Wu, Tepper & Voth, J. Chem. Phys. 124, 024503 (2006)",
    ),
    "spce-flex": WaterModel(
        name="flexible SPC/E",
        bond_k_kcal_per_mol_a2=345000.0 * _KJ_IN_KCAL / _NM2_IN_A2,
        bond_r0_angstrom=1.0,
        angle_k_kcal_per_mol_rad2=383.0 * _KJ_IN_KCAL,
        angle_theta0_deg=109.47,
        charge_o=-0.8476,
        charge_h=0.4238,
        sigma_oo_angstrom=3.16557,
        epsilon_oo_kcal_per_mol=0.650194 * _KJ_IN_KCAL,
        reference=(
            "SPC/E non-bonded: Berendsen, Grigera & Straatsma, J. Phys. Chem. 91, 6269 (1987); "
            "bonded: GROMACS spce.itp FLEXIBLE block"
        ),
    ),
}


def water_masses() -> np.ndarray:
    """Masses of O, H, H (amu) from ASE's table."""
    from ase.data import atomic_masses

    return np.array([atomic_masses[z] for z in WATER_ATOMIC_NUMBERS], dtype=np.float64)


def box_length_angstrom(n_molecules: int, density_g_per_cm3: float) -> float:
    """Edge of the cubic box holding ``n_molecules`` waters at a mass density, Å."""
    molar_mass_g = float(water_masses().sum())  # g/mol numerically equals amu
    volume_cm3 = n_molecules * molar_mass_g / (units.AVOGADRO_PER_MOL * density_g_per_cm3)
    return (volume_cm3 * 1e24) ** (1.0 / 3.0)  # 1 cm³ = 1e24 Å³


def initial_water_positions(
    n_molecules: int, box_angstrom: float, model: WaterModel, rng: np.random.Generator
) -> np.ndarray:
    """Waters at their equilibrium geometry on a simple cubic grid, random orientations.

    Args:
      n_molecules: number of molecules (the first ``n`` sites of the smallest grid that holds
        them are used).
      box_angstrom: cubic box edge, Å.
      model: gives r0 and θ0.
      rng: numpy generator for the orientations.

    Returns:
      ``[3 n, 3]`` positions in Å, ordered O, H, H per molecule.
    """
    per_side = math.ceil(round(n_molecules ** (1.0 / 3.0), 9))
    spacing = box_angstrom / per_side
    theta = np.deg2rad(model.angle_theta0_deg)
    r0 = model.bond_r0_angstrom
    local = np.array(
        [[0.0, 0.0, 0.0], [r0, 0.0, 0.0], [r0 * np.cos(theta), r0 * np.sin(theta), 0.0]]
    )
    local -= local.mean(axis=0)
    grid = np.stack(np.meshgrid(*[np.arange(per_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    out = []
    for site in grid[:n_molecules]:
        rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        out.append((site + 0.5) * spacing + local @ rotation.T)
    return np.concatenate(out, axis=0)


def build_water_system(
    n_molecules: int,
    box_angstrom: float,
    model: WaterModel,
    cutoff_angstrom: float = 6.0,
    ewald_tolerance: float = 1e-5,
    remove_com_motion: bool = True,
):
    """An ``openmm.System`` of flexible waters in a cubic box with PME.

    Args:
      n_molecules: number of waters (atoms ordered O, H, H per molecule).
      box_angstrom: cubic box edge, Å.
      model: water model parameters.
      cutoff_angstrom: real-space Coulomb and LJ cutoff, Å (< box/2).
      ewald_tolerance: OpenMM's PME error tolerance.
      remove_com_motion: add a ``CMMotionRemover`` acting every step.
    """
    mm = require("openmm", "The 'water' generator")
    u = require("openmm.unit", "The 'water' generator")
    if not cutoff_angstrom < box_angstrom / 2:
        raise ValueError(
            f"cutoff {cutoff_angstrom} Å must be less than half the box ({box_angstrom:.3f} Å); "
            "use more molecules, a higher density or a smaller --cutoff"
        )
    kcal, ang = u.kilocalorie_per_mole, u.angstrom
    system = mm.System()
    system.setDefaultPeriodicBoxVectors(*[mm.Vec3(*row) * ang for row in np.eye(3) * box_angstrom])
    bonds, angles = mm.HarmonicBondForce(), mm.HarmonicAngleForce()
    nonbonded = mm.NonbondedForce()
    nonbonded.setNonbondedMethod(mm.NonbondedForce.PME)
    nonbonded.setCutoffDistance(cutoff_angstrom * ang)
    nonbonded.setUseDispersionCorrection(False)
    nonbonded.setEwaldErrorTolerance(ewald_tolerance)
    masses = water_masses()
    zero_lj = (1.0 * ang, 0.0 * kcal)
    for _ in range(n_molecules):
        o = system.addParticle(masses[0] * u.amu)
        system.addParticle(masses[1] * u.amu)
        system.addParticle(masses[2] * u.amu)
        nonbonded.addParticle(
            model.charge_o, model.sigma_oo_angstrom * ang, model.epsilon_oo_kcal_per_mol * kcal
        )
        nonbonded.addParticle(model.charge_h, *zero_lj)
        nonbonded.addParticle(model.charge_h, *zero_lj)
        for h in (o + 1, o + 2):
            bonds.addBond(
                o, h, model.bond_r0_angstrom * ang, model.bond_k_kcal_per_mol_a2 * kcal / ang**2
            )
        angles.addAngle(
            o + 1,
            o,
            o + 2,
            math.radians(model.angle_theta0_deg) * u.radian,
            model.angle_k_kcal_per_mol_rad2 * kcal / u.radian**2,
        )
        for i, j in ((o, o + 1), (o, o + 2), (o + 1, o + 2)):
            nonbonded.addException(i, j, 0.0, 1.0 * ang, 0.0 * kcal)
    for force in (bonds, angles, nonbonded):
        system.addForce(force)
    if remove_com_motion:
        system.addForce(mm.CMMotionRemover(1))
    return system
