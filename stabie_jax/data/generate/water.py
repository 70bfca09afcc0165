"""Flexible-water reference data: NVT MD of N waters in a cubic periodic box with OpenMM.

:func:`generate_water` ties three pieces together and writes a resumable stabie npz:

* :mod:`~stabie_jax.data.generate.water_model` — the force fields (SPC/Fw, the default, and
  flexible SPC/E; PME electrostatics, O–O Lennard-Jones, centre-of-mass motion removed) and the
  water box (size from the density, start on a grid with random orientations);
* :mod:`~stabie_jax.data.generate.openmm_engine` — the OpenMM context, its thermostat (Langevin
  by default; why not Nosé–Hoover at 1 fs is explained there) and on-step velocities;
* :func:`~stabie_jax.data.generate.resumable.run_resumable` — the chunked, checkpointed writer.

The names of those two modules are re-exported here, so ``water.build_water_system``,
``water.OpenMMEngine`` etc. keep working. Positions are unwrapped; saved velocities are on-step,
the mean of the half-step velocities v(t − dt/2) and v(t + dt/2).

Examples:
  >>> generate_water("water.npz", n_molecules=64, temperature_kelvin=300.0, timestep_fs=1.0,
  ...                equilibration_steps=20000, steps=20000, save_interval=20,
  ...                seed=0)                                             # doctest: +SKIP
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from stabie_jax.data.generate.extras import package_versions, require, utc_now
from stabie_jax.data.generate.openmm_engine import (
    THERMOSTATS,
    OpenMMEngine,
    make_energy_force_fn,
)
from stabie_jax.data.generate.resumable import run_resumable, stabie_npz_units
from stabie_jax.data.generate.water_model import (
    WATER_ATOMIC_NUMBERS,
    WATER_MODELS,
    WaterModel,
    box_length_angstrom,
    build_water_system,
    initial_water_positions,
    water_masses,
)

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
      n_molecules, model: number of waters; :data:`WATER_MODELS` key (``spcfw``, ``spce-flex``).
      density_g_per_cm3: mass density fixing the cubic box, g/cm³.
      temperature_kelvin, timestep_fs: target (K) and timestep (fs).
      equilibration_steps, steps, save_interval: unsaved steps after minimisation, production
        steps (a multiple of ``save_interval``) and steps between frames.
      seed: start orientations, velocities and Langevin noise.
      thermostat, friction_per_ps, nose_hoover_collision_per_ps: ``"langevin"`` (friction,
        ps⁻¹) or ``"nose-hoover"`` (collision frequency, ps⁻¹); see :mod:`.openmm_engine`.
      cutoff_angstrom, ewald_tolerance: real-space cutoff (Å) and PME error tolerance.
      platform: OpenMM platform (``"auto"``: CUDA when present, else CPU). A run must be
        resumed on the platform it started on.
      chunk_frames, float_dtype, progress, stop_after_chunks: as in :func:`run_resumable`
        (frames per checkpointed chunk, storage dtype of positions/velocities/forces, tqdm
        progress bar, a simulated kill for tests).
      command: command line recorded in the metadata.

    Returns:
      Path of the finished file, with the keys of :func:`generate_molecule` plus ``cell``
      [3,3] Å and ``pbc`` [3].
    """
    params = _checked_model(model, steps, save_interval)
    mm = require("openmm", "The 'water' generator")
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
        "thermostat": _thermostat_info(thermostat, friction_per_ps, nose_hoover_collision_per_ps),
        "cutoff_angstrom": cutoff_angstrom,
        "ewald_tolerance": ewald_tolerance,
        "platform": engine.platform_name,
        "openmm": mm.__version__,
        "chunk_frames": chunk_frames,
        "float_dtype": float_dtype,
    }
    n_frames = steps // save_interval
    return run_resumable(
        engine,
        out_path,
        config=config,
        static=_water_static(n_molecules, box),
        metadata=_water_metadata(config, params, box, engine.pme_parameters(), n_frames, command),
        equilibration_steps=equilibration_steps,
        n_frames=n_frames,
        save_interval=save_interval,
        timestep_fs=timestep_fs,
        chunk_frames=chunk_frames,
        float_dtype=float_dtype,
        progress=progress,
        stop_after_chunks=stop_after_chunks,
    )


def _checked_model(model: str, steps: int, save_interval: int) -> WaterModel:
    """The parameters of ``model``, after checking it and the save schedule."""
    if model not in WATER_MODELS:
        raise ValueError(f"model must be one of {sorted(WATER_MODELS)}, got {model!r}")
    if steps % save_interval != 0:
        raise ValueError(f"steps ({steps}) must be a multiple of save_interval ({save_interval})")
    return WATER_MODELS[model]


def _thermostat_info(
    thermostat: str, friction_per_ps: float, nose_hoover_collision_per_ps: float
) -> dict[str, Any]:
    """The ``thermostat`` entry of the run's config and metadata."""
    if thermostat == "langevin":
        return {
            "name": "langevin",
            "implementation": "openmm.LangevinMiddleIntegrator",
            "friction_per_ps": friction_per_ps,
        }
    return {
        "name": "nose-hoover",
        "implementation": "openmm.NoseHooverIntegrator (chain 3)",
        "collision_frequency_per_ps": nose_hoover_collision_per_ps,
    }


def _water_metadata(
    config: Mapping[str, Any],
    params: WaterModel,
    box: float,
    pme_parameters: Mapping[str, Any],
    n_frames: int,
    command: str | None,
) -> dict[str, Any]:
    """The file's ``metadata`` record, from the run's ``config`` and the system it built."""
    n_molecules, cutoff_angstrom = config["n_molecules"], config["cutoff_angstrom"]
    return {
        "format": "stabie-npz/1",
        "generator": "stabie_jax.data.generate water",
        "units": stabie_npz_units(periodic=True),
        "method": f"{params.name} classical force field, OpenMM",
        "water_model": params._asdict(),
        "n_molecules": n_molecules,
        "atom_order": "O, H, H per molecule",
        "density_g_per_cm3": config["density_g_per_cm3"],
        "box_angstrom": box,
        "electrostatics": {
            "method": "PME",
            "cutoff_angstrom": cutoff_angstrom,
            "ewald_tolerance": config["ewald_tolerance"],
            **pme_parameters,
        },
        "lennard_jones": f"O-O only, plain cutoff {cutoff_angstrom} Å, no tail correction",
        "temperature_kelvin": config["temperature_kelvin"],
        "timestep_fs": config["timestep_fs"],
        "equilibration_steps": config["equilibration_steps"],
        "production_steps": config["steps"],
        "save_interval_steps": config["save_interval"],
        "n_frames": n_frames,
        "seed": config["seed"],
        "thermostat": config["thermostat"],
        "com_motion_removed": True,
        "kinetic_degrees_of_freedom": 9 * n_molecules - 3,
        "positions_unwrapped": True,
        "velocities": "on-step: mean of the half-step velocities v(t-dt/2), v(t+dt/2)",
        "start": "simple cubic grid, random orientations, OpenMM energy minimisation, "
        "Maxwell-Boltzmann velocities",
        "platform": config["platform"],
        "periodic": True,
        "versions": package_versions("openmm"),
        "command": command,
        "created_utc": utc_now(),
    }


def _water_static(n_molecules: int, box: float) -> dict[str, np.ndarray]:
    """Per-system arrays stored once: atomic numbers, masses (amu), cubic cell (Å), pbc."""
    return {
        "atomic_numbers": np.tile(WATER_ATOMIC_NUMBERS, n_molecules).astype(np.int64),
        "masses": np.tile(water_masses(), n_molecules),
        "cell": np.eye(3) * box,
        "pbc": np.array([True, True, True]),
    }
