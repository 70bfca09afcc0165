"""Physics checks of a generated xTB molecular data set (the built-in aspirin file).

* kinetic temperature with 3N degrees of freedom (Langevin thermalises all momenta), with a
  block standard error;
* every frame keeps the covalent-bond graph of frame 0 (covalent radii × 1.2), and the smallest
  interatomic distance;
* stored energies/forces equal a fresh GFN2-xTB evaluation on the first, middle and last frame,
  and forces equal −∇E by central differences (h = 1e-3 Å) on three random components each —
  skipped with a note when ``tblite`` (the ``reference`` extra) is missing.

The report is assembled by :mod:`stabie_jax.data.generate.validate`.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np

from stabie_jax.data.generate import analysis

__all__ = ["validate_aspirin"]


def validate_aspirin(path: pathlib.Path) -> dict[str, Any]:
    """Temperature, bond integrity and force checks of an xTB molecular data set."""
    data = np.load(path)
    meta = json.loads(str(data["metadata"]))
    z, r = data["atomic_numbers"], data["positions"].astype(np.float64)
    n_frames, n_atoms = r.shape[:2]
    t = analysis.kinetic_temperature(data["velocities"], data["masses"], dof=3 * n_atoms)
    bonds0 = analysis.covalent_bonds(z, r[0])
    broken = sum(analysis.covalent_bonds(z, frame) != bonds0 for frame in r)
    res: dict[str, Any] = {
        "file": str(path),
        "n_frames": int(n_frames),
        "n_atoms": int(n_atoms),
        "frame_spacing_fs": meta["timestep_fs"] * meta["save_interval_steps"],
        "target_kelvin": meta["temperature_kelvin"],
        "kinetic_temperature_kelvin_mean": float(t.mean()),
        "kinetic_temperature_kelvin_sem": float(analysis.block_sem(t)),
        "kinetic_temperature_kelvin_std": float(t.std()),
        "covalent_bonds_frame0": len(bonds0),
        "frames_with_changed_bond_graph": int(broken),
        "energy_ev_mean": float(data["energies"].mean()),
        "energy_ev_std": float(data["energies"].std()),
        "force_rms_ev_per_a": float(np.sqrt((data["forces"].astype(np.float64) ** 2).mean())),
        "min_interatomic_distance_a": float(
            min(
                np.linalg.norm(f[:, None] - f[None], axis=-1)[np.triu_indices(n_atoms, 1)].min()
                for f in r[:: max(1, n_frames // 200)]
            )
        ),
    }
    try:
        res["xtb_recomputation"] = _xtb_recomputation(data, z, r)
    except ImportError as err:
        res["xtb_recomputation"] = f"skipped: {err}"
    return res


def _xtb_recomputation(data, z: np.ndarray, r: np.ndarray) -> list[dict[str, Any]]:
    """Fresh GFN2-xTB energies/forces and central differences on the first/middle/last frame."""
    from stabie_jax.data.generate.molecule import make_xtb_calculator

    n_frames, n_atoms = r.shape[:2]
    calc_check = []
    for i in (0, n_frames // 2, n_frames - 1):
        from ase import Atoms

        atoms = Atoms(numbers=z, positions=r[i])
        atoms.calc = make_xtb_calculator()
        e, f = atoms.get_potential_energy(), atoms.get_forces()

        def energy(x, atoms=atoms):
            a = atoms.copy()
            a.calc = make_xtb_calculator(accuracy=0.01)
            a.positions = x
            return a.get_potential_energy()

        rng = np.random.default_rng(i)
        idx = [(int(rng.integers(n_atoms)), int(rng.integers(3))) for _ in range(3)]
        fd = analysis.finite_difference_forces(energy, r[i].copy(), idx, 1e-3)
        calc_check.append(
            {
                "frame": int(i),
                "abs_energy_diff_ev": float(abs(e - data["energies"][i])),
                "max_abs_force_diff_ev_per_a": float(np.abs(f - data["forces"][i]).max()),
                "max_abs_fd_minus_stored_ev_per_a": float(
                    np.abs(fd - np.array([data["forces"][i][a, k] for a, k in idx])).max()
                ),
            }
        )
    return calc_check
