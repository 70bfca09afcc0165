"""Ab-initio-style NVT molecular dynamics of one molecule with GFN2-xTB (tblite) through ASE.

This produces reference data the same way MD17/rMD17 were produced (an NVT trajectory of one
molecule in vacuum with energies and forces from an electronic-structure method), but with the
semi-empirical tight-binding method GFN2-xTB (Bannwarth, Ehlert & Grimme, JCTC 15, 1652 (2019))
so that it runs in minutes on a laptop: about 15 ms per energy+force call for aspirin (21 atoms)
on one CPU core.

Thermostats (ASE implementations):

* ``langevin`` (default): :class:`ase.md.langevin.Langevin`, friction ``friction_per_fs``
  (default 0.01 fs⁻¹, i.e. a 100 fs velocity memory). A local stochastic thermostat is ergodic
  even for a single small molecule, where a deterministic global thermostat can fail to
  equipartition energy between modes.
* ``nose-hoover``: :class:`ase.md.nose_hoover_chain.NoseHooverChainNVT`, chain of 3, damping time
  ``nose_hoover_damping_fs`` (default 50 fs).

Saved velocities are ASE's on-step velocities v(t) (both integrators finish each step with a
half kick at the new forces). The molecule is free in space: no cell, no periodicity; centre of
mass momentum and angular momentum are zeroed at the start.

Examples:
  >>> atoms = embed_smiles("CC(=O)Oc1ccccc1C(=O)O", seed=0)            # doctest: +SKIP
  >>> generate_molecule(atoms, "aspirin.npz", temperature_kelvin=500.0,
  ...                   timestep_fs=0.5, equilibration_steps=2000, steps=20000,
  ...                   save_interval=10, seed=0)                       # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from stabie_jax import units
from stabie_jax.data.generate.extras import package_versions, require, utc_now
from stabie_jax.data.generate.resumable import run_resumable, stabie_npz_units

__all__ = [
    "AseEngine",
    "THERMOSTATS",
    "embed_smiles",
    "generate_molecule",
    "load_geometry",
    "make_xtb_calculator",
]

THERMOSTATS = ("langevin", "nose-hoover")

# Keys under which known npz layouts store the atomic numbers and coordinates (Å).
_NPZ_LAYOUTS = (
    ("nuclear_charges", "coords"),  # rMD17
    ("z", "R"),  # sGDML MD17 / MD22
    ("atomic_numbers", "positions"),  # stabie npz
)


def load_geometry(path: str | os.PathLike):
    """First frame of a geometry file as :class:`ase.Atoms`.

    Anything :func:`ase.io.read` understands (xyz, extxyz, pdb, sdf, cif, ...) plus ``.npz``
    datasets in the rMD17, sGDML (MD17/MD22) or stabie layouts (coordinates in Å).

    Args:
      path: file name.

    Returns:
      ``ase.Atoms`` without cell or periodicity.
    """
    import ase
    import ase.io

    path = pathlib.Path(path)
    if not path.exists():
        raise ValueError(f"geometry file {path} does not exist")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            for z_key, r_key in _NPZ_LAYOUTS:
                if z_key in data.files and r_key in data.files:
                    positions = np.asarray(data[r_key], dtype=np.float64)
                    positions = positions[0] if positions.ndim == 3 else positions
                    return ase.Atoms(numbers=np.asarray(data[z_key]), positions=positions)
            raise ValueError(
                f"{path}: no known coordinate keys (expected one of "
                f"{[' + '.join(p) for p in _NPZ_LAYOUTS]}), found {data.files}"
            )
    atoms = ase.io.read(path, index=0)
    atoms.set_cell(None)
    atoms.set_pbc(False)
    return atoms


def embed_smiles(smiles: str, seed: int = 0):
    """3-D geometry of a SMILES string (hydrogens added) by RDKit ETKDG + MMFF94 relaxation.

    Args:
      smiles: SMILES string, e.g. ``"CC(=O)Oc1ccccc1C(=O)O"`` (aspirin).
      seed: random seed of the embedding.

    Returns:
      ``ase.Atoms``: heavy atoms in SMILES order followed by hydrogens, Å.
    """
    import ase

    chem = require("rdkit.Chem", "Building a geometry from --smiles")
    all_chem = require("rdkit.Chem.AllChem", "Building a geometry from --smiles")
    mol = chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"RDKit could not parse the SMILES string {smiles!r}")
    mol = chem.AddHs(mol)
    params = all_chem.ETKDGv3()
    params.randomSeed = int(seed)
    if all_chem.EmbedMolecule(mol, params) != 0:
        raise ValueError(f"RDKit could not embed {smiles!r} in 3-D; pass a --geometry file instead")
    all_chem.MMFFOptimizeMolecule(mol, maxIters=2000)
    numbers = [atom.GetAtomicNum() for atom in mol.GetAtoms()]
    return ase.Atoms(numbers=numbers, positions=mol.GetConformer().GetPositions())


def make_xtb_calculator(
    method: str = "GFN2-xTB",
    charge: int = 0,
    multiplicity: int = 1,
    accuracy: float = 1.0,
    electronic_temperature_kelvin: float = 300.0,
):
    """tblite's ASE calculator (energies eV, forces eV/Å).

    Args:
      method: ``"GFN2-xTB"`` (default), ``"GFN1-xTB"`` or ``"IPEA1-xTB"``.
      charge: total charge, e.
      multiplicity: spin multiplicity 2S+1.
      accuracy: tblite numerical accuracy (smaller is tighter; 1.0 is tblite's default).
      electronic_temperature_kelvin: Fermi smearing temperature of the SCF, K.
    """
    tblite_ase = require("tblite.ase", "The 'molecule' generator (GFN2-xTB)")
    return tblite_ase.TBLite(
        method=method,
        charge=charge,
        multiplicity=multiplicity,
        accuracy=accuracy,
        electronic_temperature=electronic_temperature_kelvin,
        verbosity=0,
    )


class AseEngine:
    """ASE dynamics wrapped in the :class:`~stabie_jax.data.generate.resumable.Engine` protocol.

    Args:
      atoms: ``ase.Atoms`` with a calculator attached; velocities are (re)drawn from the
        Maxwell–Boltzmann distribution at ``temperature_kelvin`` with zero net momentum and
        angular momentum.
      thermostat: ``"langevin"`` or ``"nose-hoover"``.
      temperature_kelvin: target temperature, K.
      timestep_fs: timestep, fs.
      seed: seeds the velocity draw and the Langevin noise.
      friction_per_fs: Langevin friction, fs⁻¹.
      nose_hoover_damping_fs: Nosé–Hoover chain damping time, fs.
    """

    def __init__(
        self,
        atoms,
        thermostat: str,
        temperature_kelvin: float,
        timestep_fs: float,
        seed: int,
        friction_per_fs: float = 0.01,
        nose_hoover_damping_fs: float = 50.0,
    ):
        from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta

        if thermostat not in THERMOSTATS:
            raise ValueError(f"thermostat must be one of {THERMOSTATS}, got {thermostat!r}")
        self.atoms = atoms
        self.thermostat = thermostat
        self.rng = np.random.Generator(np.random.PCG64(seed))
        thermalize_momenta(atoms, temperature_kelvin, rng=self.rng)
        Stationary(atoms)
        ZeroRotation(atoms)
        dt = units.fs_to_internal(timestep_fs)
        if thermostat == "langevin":
            from ase.md.langevin import Langevin

            # friction: fs⁻¹ → internal inverse time (divide by internal time units per fs).
            self.dyn = Langevin(
                atoms,
                timestep=dt,
                temperature_K=temperature_kelvin,
                friction=friction_per_fs / units.fs_to_internal(1.0),
                fixcm=False,
                rng=self.rng,
            )
        else:
            from ase.md.nose_hoover_chain import NoseHooverChainNVT

            self.dyn = NoseHooverChainNVT(
                atoms,
                timestep=dt,
                temperature_K=temperature_kelvin,
                tdamp=units.fs_to_internal(nose_hoover_damping_fs),
                tchain=3,
            )

    def advance(self, n_steps: int) -> None:
        """Run ``n_steps`` MD steps."""
        self.dyn.run(n_steps)

    def sample(self, n_steps: int) -> dict[str, np.ndarray]:
        """Run ``n_steps`` steps and return the final frame (Å, Å/fs, eV, eV/Å)."""
        self.dyn.run(n_steps)
        return {
            "positions": self.atoms.get_positions(),
            # Å per internal time unit → Å/fs: multiply by internal time units per fs.
            "velocities": self.atoms.get_velocities() * units.fs_to_internal(1.0),
            "energies": np.float64(self.atoms.get_potential_energy()),
            "forces": self.atoms.get_forces(),
        }

    def get_state(self) -> dict[str, np.ndarray]:
        """Positions, momenta, RNG state and (Nosé–Hoover) chain variables."""
        state = {
            "positions": self.atoms.get_positions(),
            "momenta": self.atoms.get_momenta(),
            "rng_state": np.asarray(json.dumps(self.rng.bit_generator.state)),
        }
        if self.thermostat == "nose-hoover":
            # ASE keeps the chain variables privately; they are part of the dynamical state.
            state["nhc_eta"] = self.dyn._thermostat._eta.copy()
            state["nhc_p_eta"] = self.dyn._thermostat._p_eta.copy()
        return state

    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Inverse of :meth:`get_state`."""
        self.atoms.set_positions(np.asarray(state["positions"]))
        self.atoms.set_momenta(np.asarray(state["momenta"]))
        self.rng.bit_generator.state = json.loads(str(state["rng_state"]))
        if self.thermostat == "nose-hoover":
            self.dyn._q = self.atoms.get_positions()
            self.dyn._p = self.atoms.get_momenta()
            self.dyn._thermostat._eta = np.array(state["nhc_eta"], dtype=np.float64)
            self.dyn._thermostat._p_eta = np.array(state["nhc_p_eta"], dtype=np.float64)


def generate_molecule(
    atoms,
    out_path: str | os.PathLike,
    *,
    temperature_kelvin: float,
    timestep_fs: float,
    equilibration_steps: int,
    steps: int,
    save_interval: int,
    seed: int,
    thermostat: str = "langevin",
    friction_per_fs: float = 0.01,
    nose_hoover_damping_fs: float = 50.0,
    method: str = "GFN2-xTB",
    charge: int = 0,
    multiplicity: int = 1,
    calculator=None,
    chunk_frames: int = 100,
    float_dtype: str = "float32",
    progress: bool = True,
    command: str | None = None,
    extra_metadata: Mapping[str, Any] | None = None,
    stop_after_chunks: int | None = None,
) -> pathlib.Path:
    """Run NVT MD of one molecule and write a stabie npz file (resumable).

    Args:
      atoms: starting geometry (``ase.Atoms``, Å); not modified.
      out_path: final ``.npz`` path; ``<out_path>.partial/`` holds an unfinished run, which a
        call with identical settings resumes.
      temperature_kelvin, timestep_fs: thermostat target (K) and timestep (fs).
      equilibration_steps: unsaved steps before production.
      steps: production steps; must be a multiple of ``save_interval``.
      save_interval: steps between saved frames.
      seed: seeds the initial velocities and the Langevin noise.
      thermostat: ``"langevin"`` or ``"nose-hoover"``.
      friction_per_fs, nose_hoover_damping_fs: Langevin friction (fs⁻¹) and Nosé–Hoover chain
        damping time (fs).
      method: tblite method name (ignored when ``calculator`` is given).
      charge, multiplicity: molecular charge (e) and spin multiplicity.
      calculator: any ASE calculator to use instead of tblite (e.g. for tests); recorded in the
        metadata by class name.
      chunk_frames, float_dtype, progress, stop_after_chunks: as in :func:`run_resumable`
        (frames per checkpointed chunk, storage dtype of positions/velocities/forces, tqdm
        progress bar, a simulated kill for tests).
      command: the command line to record in the metadata.
      extra_metadata: more JSON-serialisable metadata (e.g. the SMILES string).

    Returns:
      Path of the finished file, with the keys listed in :mod:`stabie_jax.data.generate`
      (``positions``, ``energies``, ``forces``, ``velocities``, ``atomic_numbers``,
      ``masses``, ``time_fs``, ``metadata``; no ``cell``/``pbc``).
    """
    if steps % save_interval != 0:
        raise ValueError(f"steps ({steps}) must be a multiple of save_interval ({save_interval})")
    if temperature_kelvin <= 0 or timestep_fs <= 0:
        raise ValueError("temperature_kelvin and timestep_fs must be positive")
    atoms, method_name, versions = _free_molecule(atoms, calculator, method, charge, multiplicity)
    engine = AseEngine(
        atoms,
        thermostat,
        temperature_kelvin,
        timestep_fs,
        seed,
        friction_per_fs=friction_per_fs,
        nose_hoover_damping_fs=nose_hoover_damping_fs,
    )
    config = {
        "generator": "molecule",
        "atomic_numbers": atoms.get_atomic_numbers().tolist(),
        "start_positions": np.round(atoms.get_positions(), 8).tolist(),
        "method": method_name,
        "charge": charge,
        "multiplicity": multiplicity,
        "temperature_kelvin": temperature_kelvin,
        "timestep_fs": timestep_fs,
        "equilibration_steps": equilibration_steps,
        "steps": steps,
        "save_interval": save_interval,
        "seed": seed,
        "thermostat": _thermostat_info(thermostat, friction_per_fs, nose_hoover_damping_fs),
        "chunk_frames": chunk_frames,
        "float_dtype": float_dtype,
    }
    n_frames = steps // save_interval
    return run_resumable(
        engine,
        out_path,
        config=config,
        static=_molecule_static(atoms),
        metadata=_molecule_metadata(config, atoms, n_frames, versions, command, extra_metadata),
        equilibration_steps=equilibration_steps,
        n_frames=n_frames,
        save_interval=save_interval,
        timestep_fs=timestep_fs,
        chunk_frames=chunk_frames,
        float_dtype=float_dtype,
        progress=progress,
        stop_after_chunks=stop_after_chunks,
    )


def _free_molecule(atoms, calculator, method: str, charge: int, multiplicity: int):
    """A copy of ``atoms`` without cell or periodicity, with its calculator attached.

    Returns ``(atoms, method_name, versions)``: tblite's GFN method (built here when
    ``calculator`` is None) or the class name of the given calculator, and the package versions
    to record.
    """
    atoms = atoms.copy()
    atoms.set_cell(None)
    atoms.set_pbc(False)
    if calculator is None:
        calculator = make_xtb_calculator(method, charge=charge, multiplicity=multiplicity)
        method_name = method
        versions = package_versions("tblite", "rdkit")
    else:
        method_name = type(calculator).__name__
        versions = package_versions()
    atoms.calc = calculator
    return atoms, method_name, versions


def _thermostat_info(
    thermostat: str, friction_per_fs: float, nose_hoover_damping_fs: float
) -> dict[str, Any]:
    """The ``thermostat`` entry of the run's config and metadata."""
    thermostat_info: dict[str, Any] = {"name": thermostat}
    if thermostat == "langevin":
        thermostat_info.update(
            implementation="ase.md.langevin.Langevin", friction_per_fs=friction_per_fs
        )
    else:
        thermostat_info.update(
            implementation="ase.md.nose_hoover_chain.NoseHooverChainNVT",
            chain_length=3,
            damping_fs=nose_hoover_damping_fs,
        )
    return thermostat_info


def _molecule_metadata(
    config: Mapping[str, Any],
    atoms,
    n_frames: int,
    versions: Mapping[str, str],
    command: str | None,
    extra_metadata: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The file's ``metadata`` record, from the run's ``config`` and the prepared ``atoms``."""
    return {
        "format": "stabie-npz/1",
        "generator": "stabie_jax.data.generate molecule",
        "units": stabie_npz_units(periodic=False),
        "method": config["method"],
        "energy_reference": "total electronic energy of the method (no atomic energies removed)",
        "charge": config["charge"],
        "multiplicity": config["multiplicity"],
        "temperature_kelvin": config["temperature_kelvin"],
        "timestep_fs": config["timestep_fs"],
        "equilibration_steps": config["equilibration_steps"],
        "production_steps": config["steps"],
        "save_interval_steps": config["save_interval"],
        "n_frames": n_frames,
        "seed": config["seed"],
        "thermostat": config["thermostat"],
        "velocities": "on-step v(t)",
        "periodic": False,
        "formula": atoms.get_chemical_formula(),
        "versions": versions,
        "command": command,
        "created_utc": utc_now(),
        **dict(extra_metadata or {}),
    }


def _molecule_static(atoms) -> dict[str, np.ndarray]:
    """Per-system arrays stored once: atomic numbers and masses (amu)."""
    return {
        "atomic_numbers": atoms.get_atomic_numbers().astype(np.int64),
        "masses": atoms.get_masses().astype(np.float64),
    }
