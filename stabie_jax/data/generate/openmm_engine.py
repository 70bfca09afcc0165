"""OpenMM as an MD engine: a thermostatted context in the resumable driver's Engine protocol.

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

:func:`make_energy_force_fn` evaluates a system without dynamics (force checks). Everything here
imports ``openmm`` (the ``reference`` extra) lazily, when called.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from stabie_jax import units
from stabie_jax.data.generate.extras import require

__all__ = ["THERMOSTATS", "OpenMMEngine", "make_energy_force_fn"]

THERMOSTATS = ("langevin", "nose-hoover")


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
