"""Physics checks of generated flexible-water data, and the thermostat equipartition study.

:func:`validate_water` reports, for one water file:

* temperature per class of motion (molecular centre-of-mass translation vs intramolecular),
  from the on-step velocities;
* O–H bond and H–O–H angle, potential energy per molecule, the largest frame-to-frame
  displacement (positions are unwrapped);
* intermolecular O–O/O–H/H–H RDFs (means and standard errors over 5 blocks) and their first
  peaks;
* O self-diffusion from the MSD, uncorrected and with the Yeh–Hummer finite-size correction
  (η = :data:`ASSUMED_VISCOSITY_PA_S` assumed for SPC/Fw; literature value
  :data:`LITERATURE_D_SPCFW`);
* energies and forces recomputed through OpenMM's double-precision Reference platform, and
  central differences of E (h = 1e-4 Å) — skipped with a note when ``openmm`` is missing;
* agreement with an independent SPC/Fw data set (``shared``: RDFs, O–H bond-length distribution,
  uncorrected D computed by the same code), with block standard errors.

:func:`thermostat_study` runs short 64-water simulations with Langevin (1 fs) and Nosé–Hoover
(1 fs and 0.5 fs) to measure equipartition (translational vs intramolecular temperature).
The report is assembled by :mod:`stabie_jax.data.generate.validate`.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import numpy as np

from stabie_jax import units
from stabie_jax.data.generate import analysis

__all__ = [
    "ASSUMED_VISCOSITY_PA_S",
    "LITERATURE_D_SPCFW",
    "thermostat_study",
    "validate_water",
]

LITERATURE_D_SPCFW = 2.32e-9  # m²/s, Wu, Tepper & Voth (2006), large box
ASSUMED_VISCOSITY_PA_S = 0.75e-3


def _water_arrays(path: pathlib.Path) -> dict[str, Any]:
    """Positions (Å), velocities (Å/fs), masses, box and frame spacing of a water file.

    Reads the stabie npz written by the generator, or the independent reference layout
    (``R``, ``V``, ``masses``, ``cell``, ``dt_fs``).
    """
    data = np.load(path)
    if "positions" in data.files:
        meta = json.loads(str(data["metadata"]))
        return {
            "positions": data["positions"],
            "velocities": data["velocities"],
            "masses": data["masses"],
            "box": float(data["cell"][0, 0]),
            "dt_fs": meta["timestep_fs"] * meta["save_interval_steps"],
            "energies_ev": data["energies"],
            "forces": data["forces"],
            "metadata": meta,
        }
    return {
        "positions": data["R"],
        "velocities": data["V"] if "V" in data.files else None,
        "masses": data["masses"],
        "box": float(data["cell"][0, 0]),
        "dt_fs": float(data["dt_fs"]),
        "energies_ev": units.kcal_per_mol_to_ev(data["E"]) if "E" in data.files else None,
        "forces": None,
        "metadata": {},
    }


def _rdfs(w: dict[str, Any], stride: int) -> dict[str, np.ndarray]:
    n = w["positions"].shape[1]
    is_o = np.arange(n) % 3 == 0
    mol = np.arange(n) // 3
    r = w["positions"][::stride]
    out = {}
    for name, a, b in (("OO", is_o, is_o), ("OH", is_o, ~is_o), ("HH", ~is_o, ~is_o)):
        blocks = [
            analysis.intermolecular_rdf(chunk, w["box"], a, b, mol)[1]
            for chunk in np.array_split(r, 5)
        ]
        rc = analysis.intermolecular_rdf(r[:1], w["box"], a, b, mol)[0]
        out["r"] = rc
        out[name] = np.mean(blocks, axis=0)
        out[name + "_sem"] = np.std(blocks, axis=0, ddof=1) / np.sqrt(5)
    return out


def _first_peak(rc, g, name):
    window = {"OO": rc < 3.3, "OH": rc < 2.6, "HH": rc < 3.0}[name]
    i = int(np.argmax(np.where(window, g, 0.0)))
    return float(rc[i]), float(g[i])


def _diffusion(w: dict[str, Any]) -> dict[str, Any]:
    n = w["positions"].shape[1]
    is_o = np.arange(n) % 3 == 0
    total_ps = len(w["positions"]) * w["dt_fs"] / 1000.0
    fit_to = min(50.0, total_ps / 2)
    fit_from = min(10.0, fit_to / 5)
    d, _, _ = analysis.msd_diffusion(
        w["positions"], w["masses"], is_o, w["dt_fs"], fit_from, fit_to
    )
    half = len(w["positions"]) // 2
    halves = [
        analysis.msd_diffusion(
            part, w["masses"], is_o, w["dt_fs"], fit_from, min(fit_to, total_ps / 4)
        )[0]
        for part in (w["positions"][:half], w["positions"][half:])
    ]
    correction = analysis.yeh_hummer_correction(w["box"], 300.0, ASSUMED_VISCOSITY_PA_S)
    return {
        "trajectory_ps": total_ps,
        "fit_window_ps": [fit_from, fit_to],
        "D_msd_m2_s": d,
        "D_msd_halves_m2_s": halves,
        "yeh_hummer_correction_m2_s": correction,
        "D_corrected_m2_s": d + correction,
    }


def validate_water(path: pathlib.Path, shared: pathlib.Path | None) -> dict[str, Any]:
    """Structure, temperature per class, diffusion and force checks of a water data set.

    Args:
      path: a water file: the generator's stabie npz, or the independent reference layout
        (``R``, ``V``, ``masses``, ``cell``, ``dt_fs``, optionally ``E`` in kcal/mol).
      shared: directory holding ``spcfw_water_64_300K.npz`` to compare with, or None.

    Returns:
      JSON-serialisable results (see the module docstring).
    """
    w = _water_arrays(path)
    bonds, angles = analysis.water_geometry(w["positions"])
    res = _structure_and_temperature(w, path, bonds, angles)
    rdf = _rdfs(w, stride=1)
    res["rdf_first_peaks"] = {
        name: dict(zip(("r_a", "g"), _first_peak(rdf["r"], rdf[name], name), strict=True))
        for name in ("OO", "OH", "HH")
    }
    res["diffusion"] = _diffusion(w)
    try:
        res["openmm_recomputation"] = _openmm_recomputation(w)
    except ImportError as err:
        res["openmm_recomputation"] = f"skipped: {err}"

    ref_file = None if shared is None else shared / "spcfw_water_64_300K.npz"
    if ref_file is not None and ref_file.exists():
        res["shared_reference_comparison"] = _reference_comparison(ref_file, w, rdf, bonds)
    else:
        res["shared_reference_comparison"] = "skipped: reference data not present"
    return res


def _structure_and_temperature(
    w: dict[str, Any], path: pathlib.Path, bonds: np.ndarray, angles: np.ndarray
) -> dict[str, Any]:
    """Temperatures, geometry, energy per molecule and largest displacement of one file."""
    r, v, m = w["positions"], w["velocities"], w["masses"]
    n_frames, n_atoms = r.shape[:2]
    n_mol = n_atoms // 3
    t = analysis.kinetic_temperature(v, m, dof=3 * n_atoms - 3)
    return {
        "file": str(path),
        "n_frames": int(n_frames),
        "frame_spacing_fs": w["dt_fs"],
        "box_angstrom": w["box"],
        "thermostat": w["metadata"].get("thermostat"),
        "kinetic_temperature_kelvin_mean": float(t.mean()),
        "kinetic_temperature_kelvin_sem": float(analysis.block_sem(t)),
        "class_temperatures_on_step_kelvin": analysis.molecular_class_temperatures(v, m),
        "OH_bond_mean_a": float(bonds.mean()),
        "OH_bond_std_a": float(bonds.std()),
        "HOH_angle_mean_deg": float(angles.mean()),
        "HOH_angle_std_deg": float(angles.std()),
        "epot_per_molecule_kcal_mol": float(
            units.ev_to_kcal_per_mol(w["energies_ev"].mean()) / n_mol
        ),
        "max_frame_to_frame_displacement_a": float(np.abs(np.diff(r, axis=0)).max()),
    }


def _openmm_recomputation(w: dict[str, Any]) -> list[dict[str, Any]]:
    """Energies/forces of the first and last frame through OpenMM's Reference platform."""
    from stabie_jax.data.generate import water

    r = w["positions"]
    n_frames, n_atoms = r.shape[:2]
    system = water.build_water_system(n_atoms // 3, w["box"], water.WATER_MODELS["spcfw"])
    fn = water.make_energy_force_fn(system, "Reference")
    checks = []
    for i in (0, n_frames - 1):
        x = r[i].astype(np.float64)
        e, f = fn(x)
        rng = np.random.default_rng(i)
        idx = [(int(rng.integers(n_atoms)), int(rng.integers(3))) for _ in range(3)]
        fd = analysis.finite_difference_forces(lambda y: fn(y)[0], x, idx, 1e-4)
        checks.append(
            {
                "frame": int(i),
                "abs_energy_diff_ev": float(abs(e - w["energies_ev"][i])),
                "force_rel_err": float(np.linalg.norm(f - w["forces"][i]) / np.linalg.norm(f)),
                "max_abs_fd_minus_stored_ev_per_a": float(
                    np.abs(fd - np.array([w["forces"][i][a, k] for a, k in idx])).max()
                ),
            }
        )
    return checks


def _reference_comparison(
    ref_file: pathlib.Path, w: dict[str, Any], rdf: dict[str, np.ndarray], bonds: np.ndarray
) -> dict[str, Any]:
    """RDFs, O–H bond distribution, diffusion and temperatures against an independent file."""
    n_frames = w["positions"].shape[0]
    ref = _water_arrays(ref_file)
    ref_rdf = _rdfs(ref, stride=max(1, round(len(ref["positions"]) / n_frames)))
    comparison: dict[str, Any] = {"file": str(ref_file), "n_frames": len(ref["positions"])}
    for name in ("OO", "OH", "HH"):
        diff = rdf[name] - ref_rdf[name]
        sem = np.sqrt(rdf[name + "_sem"] ** 2 + ref_rdf[name + "_sem"] ** 2)
        significant = np.abs(diff) > 3 * np.maximum(sem, 1e-3)
        comparison[f"rdf_{name}"] = {
            "reference_first_peak": dict(
                zip(("r_a", "g"), _first_peak(ref_rdf["r"], ref_rdf[name], name), strict=True)
            ),
            "max_abs_diff": float(np.abs(diff).max()),
            "rms_diff": float(np.sqrt((diff**2).mean())),
            "bins_beyond_3_sem": int(significant.sum()),
            "n_bins": int(len(diff)),
        }
    ref_bonds, _ = analysis.water_geometry(ref["positions"][::10])
    comparison["OH_bond"] = _bond_comparison(bonds, ref_bonds, n_frames)
    comparison["diffusion"] = _diffusion(ref)
    if ref["velocities"] is not None:
        comparison["class_temperatures_on_step_kelvin"] = analysis.molecular_class_temperatures(
            ref["velocities"][::10], ref["masses"]
        )
    return comparison


def _bond_comparison(bonds: np.ndarray, ref_bonds: np.ndarray, n_frames: int) -> dict[str, float]:
    """O–H bond-length means (with a block SEM of the difference) and histogram distance."""
    edges = np.linspace(0.85, 1.25, 81)
    h_ours = np.histogram(bonds, edges, density=True)[0]
    h_ref = np.histogram(ref_bonds, edges, density=True)[0]
    return {
        "reference_mean_a": float(ref_bonds.mean()),
        "reference_std_a": float(ref_bonds.std()),
        "mean_diff_a": float(bonds.mean() - ref_bonds.mean()),
        "mean_diff_sem_a": float(
            np.hypot(
                analysis.block_sem(bonds.reshape(n_frames, -1).mean(1)),
                analysis.block_sem(ref_bonds.reshape(len(ref_bonds), -1).mean(1)),
            )
        ),
        "histogram_total_variation": float(
            0.5 * np.abs(h_ours - h_ref).sum() * (edges[1] - edges[0])
        ),
    }


def thermostat_study(
    equilibration_ps: float = 10.0, sample_ps: float = 20.0, seed: int = 11
) -> list[dict[str, Any]]:
    """Equipartition of 64 SPC/Fw waters under three thermostat/timestep choices."""
    from stabie_jax.data.generate import water

    box = water.box_length_angstrom(64, 0.997)
    model = water.WATER_MODELS["spcfw"]
    system = water.build_water_system(64, box, model)
    start = water.initial_water_positions(64, box, model, np.random.default_rng(seed))
    out = []
    for thermostat, dt in (("langevin", 1.0), ("nose-hoover", 1.0), ("nose-hoover", 0.5)):
        t0 = time.time()
        engine = water.OpenMMEngine(system, start, 300.0, dt, seed, thermostat=thermostat)
        engine.advance(round(equilibration_ps * 1000 / dt))
        every = round(10.0 / dt)
        frames = [engine.sample(every) for _ in range(round(sample_ps * 100))]
        vel = np.stack([f["velocities"] for f in frames])
        masses = np.tile(water.water_masses(), 64)
        classes = analysis.molecular_class_temperatures(vel, masses)
        blocks = [analysis.molecular_class_temperatures(v, masses) for v in np.array_split(vel, 5)]
        sem = {
            f"{k}_sem": float(np.std([b[k] for b in blocks], ddof=1) / np.sqrt(5)) for k in classes
        }
        out.append(
            {
                "thermostat": thermostat,
                "timestep_fs": dt,
                "equilibration_ps": equilibration_ps,
                "sample_ps": sample_ps,
                **classes,
                **sem,
                "wall_s": round(time.time() - t0, 1),
            }
        )
    return out
