"""Flexible water in a cubic periodic box with OpenMM: SPC/Fw (default) or flexible SPC/E.

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

Thermostat. The default is ``LangevinMiddleIntegrator`` at dt = 1 fs with weak friction
(1 ps⁻¹: velocity memory 1 ps ≫ the 0.1–0.3 ps decay of the velocity autocorrelation, so
diffusion is barely perturbed). A global Nosé–Hoover chain at dt = 1 fs does *not*
equipartition SPC/Fw: the O–H stretch (period ≈ 9 fs) is under-resolved and runs hot, the single
global thermostat compensates by cooling everything else, and molecular translation ends up
≈ 274 K at a 300 K target (measured on an independent 100 ps run, see
``stabie_jax/data/builtin/PROVENANCE.md``), which slows diffusion by ~40%. A local thermostat
thermalises every degree of freedom separately. ``thermostat="nose-hoover"`` remains available
(use ``timestep_fs=0.5`` with it).

Saved velocities are on-step. OpenMM's leapfrog-type integrators hold half-step velocities
v(t − dt/2); each frame stores [v(t − dt/2) + v(t + dt/2)] / 2, for which one extra step is
taken after reading positions, energy and forces at t and counted towards the next interval
(frames stay exactly ``save_interval`` apart).
Positions are unwrapped (OpenMM never wraps unless asked).

Examples:
  >>> generate_water("water.npz", n_molecules=64, temperature_kelvin=300.0, timestep_fs=1.0,
  ...                equilibration_steps=20000, steps=20000, save_interval=20,
  ...                seed=0)                                             # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from stabie_jax import units
from stabie_jax.data.generate.extras import package_versions, require, utc_now
from stabie_jax.data.generate.resumable import run_resumable, stabie_npz_units

__all__ = [
    "OpenMMEngine",
    "THERMOSTATS",
    "WATER_ATOMIC_NUMBERS",
    "WATER_MODELS",
    "WaterModel",
    "box_length_angstrom",
    "build_water_system",
    "generate_water",
    "initial_water_positions",
    "make_energy_force_fn",
    "water_masses",
]

WATER_ATOMIC_NUMBERS = (8, 1, 1)
THERMOSTATS = ("langevin", "nose-hoover")


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


def _platform(name: str):
    mm = require("openmm", "The 'water' generator")
    if name == "auto":
        available = {
            mm.Platform.getPlatform(i).getName() for i in range(mm.Platform.getNumPlatforms())
        }
        name = "CUDA" if "CUDA" in available else "CPU"
    properties = {"Precision": "mixed"} if name in ("CUDA", "OpenCL") else {}
    return mm.Platform.getPlatformByName(name), properties


def make_energy_force_fn(
    system, platform: str = "Reference"
) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
    """Potential energy and forces of an OpenMM system as a numpy function.

    Args:
      system: ``openmm.System``.
      platform: OpenMM platform name (``"Reference"`` is double precision).

    Returns:
      ``fn(positions [N,3] Å) -> (energy eV, forces [N,3] eV/Å)``.
    """
    mm = require("openmm", "The 'water' generator")
    u = require("openmm.unit", "The 'water' generator")
    plat, properties = _platform(platform)
    context = mm.Context(system, mm.VerletIntegrator(1.0 * u.femtosecond), plat, properties)

    def energy_force_fn(positions: np.ndarray) -> tuple[float, np.ndarray]:
        context.setPositions(np.asarray(positions, dtype=np.float64) * u.angstrom)
        state = context.getState(getEnergy=True, getForces=True)
        energy = state.getPotentialEnergy().value_in_unit(u.kilocalorie_per_mole)
        forces = state.getForces(asNumpy=True).value_in_unit(u.kilocalorie_per_mole / u.angstrom)
        return float(units.kcal_per_mol_to_ev(energy)), units.kcal_per_mol_to_ev(np.asarray(forces))

    return energy_force_fn


class OpenMMEngine:
    """An OpenMM context in the :class:`~stabie_jax.data.generate.resumable.Engine` protocol.

    Construction minimises the energy (from ``positions``) and draws Maxwell–Boltzmann
    velocities with ``seed``.

    Args:
      system: ``openmm.System``.
      positions: ``[N,3]`` start positions, Å.
      temperature_kelvin: target temperature, K.
      timestep_fs: timestep, fs.
      seed: velocity and Langevin noise seed.
      thermostat: ``"langevin"`` (LangevinMiddleIntegrator) or ``"nose-hoover"``
        (NoseHooverIntegrator, chain of 3).
      friction_per_ps: Langevin friction, ps⁻¹.
      nose_hoover_collision_per_ps: Nosé–Hoover collision frequency, ps⁻¹.
      platform: ``"auto"``, ``"CUDA"``, ``"CPU"`` or ``"Reference"``.
      minimize: run OpenMM's local energy minimiser before drawing velocities.
    """

    def __init__(
        self,
        system,
        positions: np.ndarray,
        temperature_kelvin: float,
        timestep_fs: float,
        seed: int,
        thermostat: str = "langevin",
        friction_per_ps: float = 1.0,
        nose_hoover_collision_per_ps: float = 10.0,
        platform: str = "auto",
        minimize: bool = True,
    ):
        mm = require("openmm", "The 'water' generator")
        u = require("openmm.unit", "The 'water' generator")
        self._u = u
        if thermostat == "langevin":
            integrator = mm.LangevinMiddleIntegrator(
                temperature_kelvin * u.kelvin,
                friction_per_ps / u.picosecond,
                timestep_fs * u.femtosecond,
            )
            integrator.setRandomNumberSeed(int(seed))
        elif thermostat == "nose-hoover":
            integrator = mm.NoseHooverIntegrator(
                temperature_kelvin * u.kelvin,
                nose_hoover_collision_per_ps / u.picosecond,
                timestep_fs * u.femtosecond,
            )
        else:
            raise ValueError(f"thermostat must be one of {THERMOSTATS}, got {thermostat!r}")
        plat, properties = _platform(platform)
        self.integrator = integrator
        self.context = mm.Context(system, integrator, plat, properties)
        self.platform_name = self.context.getPlatform().getName()
        self.context.setPositions(np.asarray(positions, dtype=np.float64) * u.angstrom)
        if minimize:
            mm.LocalEnergyMinimizer.minimize(self.context, 1.0, 1000)
        self.context.setVelocitiesToTemperature(temperature_kelvin * u.kelvin, int(seed))
        self._ahead = 0

    def _state(self, forces: bool):
        return self.context.getState(
            getPositions=forces, getVelocities=True, getForces=forces, getEnergy=forces
        )

    def _step_to(self, n_steps: int) -> None:
        # After a sample the integrator is one step ahead of the frame's time (the step taken
        # for v(t + dt/2)); that step counts towards the next interval.
        if n_steps - self._ahead > 0:
            self.integrator.step(n_steps - self._ahead)
        self._ahead = 0

    def advance(self, n_steps: int) -> None:
        """Advance the trajectory time by ``n_steps`` MD steps."""
        self._step_to(n_steps)

    def sample(self, n_steps: int) -> dict[str, np.ndarray]:
        """Advance by ``n_steps`` and return the frame at the new time t.

        Positions, energy and forces are read at t; the velocity is the mean of the half-step
        velocities before and after t, which needs one more step (kept as a lead on the next
        interval, so frames are exactly ``n_steps`` apart).
        """
        u = self._u
        self._step_to(n_steps)
        state = self._state(forces=True)
        v_before = state.getVelocities(asNumpy=True).value_in_unit(u.angstrom / u.femtosecond)
        self.integrator.step(1)
        self._ahead = 1
        v_after = self._state(forces=False).getVelocities(asNumpy=True)
        v_after = v_after.value_in_unit(u.angstrom / u.femtosecond)
        energy = state.getPotentialEnergy().value_in_unit(u.kilocalorie_per_mole)
        forces = state.getForces(asNumpy=True).value_in_unit(u.kilocalorie_per_mole / u.angstrom)
        return {
            "positions": np.asarray(state.getPositions(asNumpy=True).value_in_unit(u.angstrom)),
            "velocities": 0.5 * (np.asarray(v_before) + np.asarray(v_after)),
            "energies": np.float64(units.kcal_per_mol_to_ev(energy)),
            "forces": units.kcal_per_mol_to_ev(np.asarray(forces)),
        }

    def get_state(self) -> dict[str, np.ndarray]:
        """OpenMM's binary checkpoint (positions, velocities, RNG, thermostat), as uint8."""
        return {
            "openmm_checkpoint": np.frombuffer(self.context.createCheckpoint(), np.uint8),
            "steps_ahead": np.asarray(self._ahead),
        }

    def set_state(self, state) -> None:
        """Restore from :meth:`get_state` (same platform and OpenMM version)."""
        self.context.loadCheckpoint(np.asarray(state["openmm_checkpoint"]).tobytes())
        self._ahead = int(state["steps_ahead"])

    def pme_parameters(self) -> dict[str, Any]:
        """Ewald splitting parameter (Å⁻¹) and PME grid actually used."""
        mm = require("openmm", "The 'water' generator")
        system = self.context.getSystem()
        for force in system.getForces():
            if isinstance(force, mm.NonbondedForce):
                alpha_per_nm, nx, ny, nz = force.getPMEParametersInContext(self.context)
                return {"alpha_per_angstrom": alpha_per_nm / 10.0, "grid": [nx, ny, nz]}
        raise ValueError("system has no NonbondedForce")


def generate_water(
    out_path: str | os.PathLike,
    *,
    n_molecules: int = 64,
    model: str = "spcfw",
    density_g_per_cm3: float = 0.997,
    temperature_kelvin: float = 300.0,
    timestep_fs: float = 1.0,
    equilibration_steps: int,
    steps: int,
    save_interval: int,
    seed: int,
    thermostat: str = "langevin",
    friction_per_ps: float = 1.0,
    nose_hoover_collision_per_ps: float = 10.0,
    cutoff_angstrom: float = 6.0,
    ewald_tolerance: float = 1e-5,
    platform: str = "auto",
    chunk_frames: int = 100,
    float_dtype: str = "float32",
    progress: bool = True,
    command: str | None = None,
    stop_after_chunks: int | None = None,
) -> pathlib.Path:
    """Run NVT MD of flexible water and write a stabie npz file (resumable).

    Args:
      out_path: final ``.npz`` path (``<out_path>.partial/`` holds an unfinished run).
      n_molecules: number of waters.
      model: key of :data:`WATER_MODELS` (``"spcfw"`` or ``"spce-flex"``).
      density_g_per_cm3: mass density fixing the cubic box, g/cm³.
      temperature_kelvin: target, K.
      timestep_fs: timestep, fs.
      equilibration_steps: unsaved steps after minimisation.
      steps: production steps (multiple of ``save_interval``).
      save_interval: steps between frames.
      seed: start orientations, velocities and Langevin noise.
      thermostat: ``"langevin"`` or ``"nose-hoover"`` (see module docstring).
      friction_per_ps: Langevin friction, ps⁻¹.
      nose_hoover_collision_per_ps: Nosé–Hoover collision frequency, ps⁻¹.
      cutoff_angstrom: real-space cutoff, Å.
      ewald_tolerance: PME error tolerance.
      platform: OpenMM platform (``"auto"``: CUDA when present, else CPU). A run must be
        resumed on the platform it started on.
      chunk_frames: frames per checkpointed chunk.
      float_dtype: storage dtype of positions, velocities, forces.
      progress: tqdm progress bar.
      command: command line recorded in the metadata.
      stop_after_chunks: see :func:`run_resumable` (tests).

    Returns:
      Path of the finished file, with the keys of :func:`generate_molecule` plus ``cell``
      [3,3] Å and ``pbc`` [3].
    """
    if model not in WATER_MODELS:
        raise ValueError(f"model must be one of {sorted(WATER_MODELS)}, got {model!r}")
    if steps % save_interval != 0:
        raise ValueError(f"steps ({steps}) must be a multiple of save_interval ({save_interval})")
    mm = require("openmm", "The 'water' generator")
    params = WATER_MODELS[model]
    box = box_length_angstrom(n_molecules, density_g_per_cm3)
    system = build_water_system(n_molecules, box, params, cutoff_angstrom, ewald_tolerance)
    rng = np.random.Generator(np.random.PCG64(seed))
    positions = initial_water_positions(n_molecules, box, params, rng)
    engine = OpenMMEngine(
        system,
        positions,
        temperature_kelvin,
        timestep_fs,
        seed,
        thermostat=thermostat,
        friction_per_ps=friction_per_ps,
        nose_hoover_collision_per_ps=nose_hoover_collision_per_ps,
        platform=platform,
    )
    if thermostat == "langevin":
        thermostat_info: dict[str, Any] = {
            "name": "langevin",
            "implementation": "openmm.LangevinMiddleIntegrator",
            "friction_per_ps": friction_per_ps,
        }
    else:
        thermostat_info = {
            "name": "nose-hoover",
            "implementation": "openmm.NoseHooverIntegrator (chain 3)",
            "collision_frequency_per_ps": nose_hoover_collision_per_ps,
        }
    config = {
        "generator": "water",
        "n_molecules": n_molecules,
        "model": model,
        "density_g_per_cm3": density_g_per_cm3,
        "temperature_kelvin": temperature_kelvin,
        "timestep_fs": timestep_fs,
        "equilibration_steps": equilibration_steps,
        "steps": steps,
        "save_interval": save_interval,
        "seed": seed,
        "thermostat": thermostat_info,
        "cutoff_angstrom": cutoff_angstrom,
        "ewald_tolerance": ewald_tolerance,
        "platform": engine.platform_name,
        "openmm": mm.__version__,
        "chunk_frames": chunk_frames,
        "float_dtype": float_dtype,
    }
    n_frames = steps // save_interval
    metadata = {
        "format": "stabie-npz/1",
        "generator": "stabie_jax.data.generate water",
        "units": stabie_npz_units(periodic=True),
        "method": f"{params.name} classical force field, OpenMM",
        "water_model": params._asdict(),
        "n_molecules": n_molecules,
        "atom_order": "O, H, H per molecule",
        "density_g_per_cm3": density_g_per_cm3,
        "box_angstrom": box,
        "electrostatics": {
            "method": "PME",
            "cutoff_angstrom": cutoff_angstrom,
            "ewald_tolerance": ewald_tolerance,
            **engine.pme_parameters(),
        },
        "lennard_jones": f"O-O only, plain cutoff {cutoff_angstrom} Å, no tail correction",
        "temperature_kelvin": temperature_kelvin,
        "timestep_fs": timestep_fs,
        "equilibration_steps": equilibration_steps,
        "production_steps": steps,
        "save_interval_steps": save_interval,
        "n_frames": n_frames,
        "seed": seed,
        "thermostat": thermostat_info,
        "com_motion_removed": True,
        "kinetic_degrees_of_freedom": 9 * n_molecules - 3,
        "positions_unwrapped": True,
        "velocities": "on-step: mean of the half-step velocities v(t-dt/2), v(t+dt/2)",
        "start": "simple cubic grid, random orientations, OpenMM energy minimisation, "
        "Maxwell-Boltzmann velocities",
        "platform": engine.platform_name,
        "periodic": True,
        "versions": package_versions("openmm"),
        "command": command,
        "created_utc": utc_now(),
    }
    static = {
        "atomic_numbers": np.tile(WATER_ATOMIC_NUMBERS, n_molecules).astype(np.int64),
        "masses": np.tile(water_masses(), n_molecules),
        "cell": np.eye(3) * box,
        "pbc": np.array([True, True, True]),
    }
    return run_resumable(
        engine,
        out_path,
        config=config,
        static=static,
        metadata=metadata,
        equilibration_steps=equilibration_steps,
        n_frames=n_frames,
        save_interval=save_interval,
        timestep_fs=timestep_fs,
        chunk_frames=chunk_frames,
        float_dtype=float_dtype,
        progress=progress,
        stop_after_chunks=stop_after_chunks,
    )
