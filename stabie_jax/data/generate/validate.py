"""Physics validation of generated reference data; writes a Markdown report.

Usage::

    python -m stabie_jax.data.generate.validate \\
        --aspirin stabie_jax/data/builtin/aspirin_xtb_500K.npz \\
        --water stabie_jax/data/builtin/water_spcfw_64_300K.npz [--water longer_run.npz] \\
        --shared-reference DATA_DIR/spcfw_water_64 --thermostat-study \\
        --output benchmarks/results/reference_data.md

Checks (each skipped with a note when its input or engine is missing):

* aspirin (xTB): kinetic temperature (3N degrees of freedom: Langevin thermalises all momenta),
  every frame keeps the covalent-bond graph of frame 0 (covalent radii × 1.2), stored
  energies/forces equal a fresh GFN2-xTB evaluation, forces equal −∇E by central differences;
* water: temperature per class of motion (molecular centre-of-mass translation vs
  intramolecular), O–H bond and H–O–H angle, potential energy per molecule, intermolecular
  O–O/O–H/H–H RDFs and their first peaks, O self-diffusion from the MSD (uncorrected and with
  the Yeh–Hummer finite-size correction, η = 0.75 mPa·s assumed for SPC/Fw), force checks
  through OpenMM's double-precision Reference platform;
* agreement with an independent SPC/Fw data set (``--shared-reference``: RDFs, O–H bond-length
  distribution, uncorrected D computed by the same code), with block standard errors;
* ``--thermostat-study``: short 64-water runs with Langevin (1 fs) and Nosé–Hoover (1 fs and
  0.5 fs) to measure equipartition (translational vs intramolecular temperature).
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import sys
import time
from typing import Any

import numpy as np

from stabie_jax import units
from stabie_jax.data.generate import analysis

__all__ = [
    "ASSUMED_VISCOSITY_PA_S",
    "LITERATURE_D_SPCFW",
    "main",
    "render_markdown",
    "thermostat_study",
    "validate_aspirin",
    "validate_water",
]

LITERATURE_D_SPCFW = 2.32e-9  # m²/s, Wu, Tepper & Voth (2006), large box
ASSUMED_VISCOSITY_PA_S = 0.75e-3


def _block_sem(values: np.ndarray, n_blocks: int = 5) -> np.ndarray:
    blocks = np.array_split(np.asarray(values), n_blocks, axis=0)
    means = np.stack([b.mean(axis=0) for b in blocks])
    return means.std(axis=0, ddof=1) / np.sqrt(n_blocks)


def _fd_forces(energy_fn, positions, indices, h):
    out = []
    for atom, axis in indices:
        plus, minus = positions.copy(), positions.copy()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        out.append(-(energy_fn(plus) - energy_fn(minus)) / (2 * h))
    return np.array(out)


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
        "kinetic_temperature_kelvin_sem": float(_block_sem(t)),
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
        from stabie_jax.data.generate.molecule import make_xtb_calculator

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
            fd = _fd_forces(energy, r[i].copy(), idx, 1e-3)
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
        res["xtb_recomputation"] = calc_check
    except ImportError as err:
        res["xtb_recomputation"] = f"skipped: {err}"
    return res


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
    """Structure, temperature per class, diffusion and force checks of a water data set."""
    w = _water_arrays(path)
    r, v, m = w["positions"], w["velocities"], w["masses"]
    n_frames, n_atoms = r.shape[:2]
    n_mol = n_atoms // 3
    bonds, angles = analysis.water_geometry(r)
    t = analysis.kinetic_temperature(v, m, dof=3 * n_atoms - 3)
    res: dict[str, Any] = {
        "file": str(path),
        "n_frames": int(n_frames),
        "frame_spacing_fs": w["dt_fs"],
        "box_angstrom": w["box"],
        "thermostat": w["metadata"].get("thermostat"),
        "kinetic_temperature_kelvin_mean": float(t.mean()),
        "kinetic_temperature_kelvin_sem": float(_block_sem(t)),
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
    rdf = _rdfs(w, stride=1)
    res["rdf_first_peaks"] = {
        name: dict(zip(("r_a", "g"), _first_peak(rdf["r"], rdf[name], name), strict=True))
        for name in ("OO", "OH", "HH")
    }
    res["diffusion"] = _diffusion(w)
    try:
        from stabie_jax.data.generate import water

        system = water.build_water_system(n_mol, w["box"], water.WATER_MODELS["spcfw"])
        fn = water.make_energy_force_fn(system, "Reference")
        checks = []
        for i in (0, n_frames - 1):
            x = r[i].astype(np.float64)
            e, f = fn(x)
            rng = np.random.default_rng(i)
            idx = [(int(rng.integers(n_atoms)), int(rng.integers(3))) for _ in range(3)]
            fd = _fd_forces(lambda y: fn(y)[0], x, idx, 1e-4)
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
        res["openmm_recomputation"] = checks
    except ImportError as err:
        res["openmm_recomputation"] = f"skipped: {err}"

    ref_file = None if shared is None else shared / "spcfw_water_64_300K.npz"
    if ref_file is not None and ref_file.exists():
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
        edges = np.linspace(0.85, 1.25, 81)
        h_ours = np.histogram(bonds, edges, density=True)[0]
        h_ref = np.histogram(ref_bonds, edges, density=True)[0]
        comparison["OH_bond"] = {
            "reference_mean_a": float(ref_bonds.mean()),
            "reference_std_a": float(ref_bonds.std()),
            "mean_diff_a": float(bonds.mean() - ref_bonds.mean()),
            "mean_diff_sem_a": float(
                np.hypot(
                    _block_sem(bonds.reshape(n_frames, -1).mean(1)),
                    _block_sem(ref_bonds.reshape(len(ref_bonds), -1).mean(1)),
                )
            ),
            "histogram_total_variation": float(
                0.5 * np.abs(h_ours - h_ref).sum() * (edges[1] - edges[0])
            ),
        }
        comparison["diffusion"] = _diffusion(ref)
        if ref["velocities"] is not None:
            comparison["class_temperatures_on_step_kelvin"] = analysis.molecular_class_temperatures(
                ref["velocities"][::10], ref["masses"]
            )
        res["shared_reference_comparison"] = comparison
    else:
        res["shared_reference_comparison"] = "skipped: reference data not present"
    return res


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


def _fmt(x, digits=3):
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def render_markdown(results: dict[str, Any]) -> str:
    """The report as Markdown (numbers first, full JSON at the end)."""
    lines = [
        "# Reference data validation (stabie_jax.data.generate)",
        "",
        f"Generated {results['date_utc']} on {results['machine']} by",
        f"`{results['command']}`.",
        "",
    ]
    a = results.get("aspirin")
    if isinstance(a, dict):
        lines += _aspirin_section(a)
    for w in results.get("water", []):
        lines += _water_section(w)
    study = results.get("thermostat_study")
    if isinstance(study, list):
        lines += _thermostat_section(study)
    lines += ["## All numbers (JSON)", "", "```json", json.dumps(results, indent=1), "```", ""]
    return "\n".join(lines)


def _aspirin_section(a: dict) -> list[str]:
    lines = []
    lines += [
        "## Aspirin, GFN2-xTB, 500 K",
        "",
        f"- {a['n_frames']} frames, {a['frame_spacing_fs']} fs apart.",
        f"- Kinetic temperature (3N dof) {a['kinetic_temperature_kelvin_mean']:.1f} ± "
        f"{a['kinetic_temperature_kelvin_sem']:.1f} K (block SEM; frame std "
        f"{a['kinetic_temperature_kelvin_std']:.0f} K), target {a['target_kelvin']} K.",
        f"- Covalent bonds in frame 0: {a['covalent_bonds_frame0']}; frames whose bond graph "
        f"differs from frame 0: {a['frames_with_changed_bond_graph']}; smallest interatomic "
        f"distance {a['min_interatomic_distance_a']:.3f} Å.",
        f"- Energy {a['energy_ev_mean']:.3f} ± {a['energy_ev_std']:.3f} eV (mean ± std); "
        f"force RMS {a['force_rms_ev_per_a']:.3f} eV/Å.",
    ]
    if isinstance(a["xtb_recomputation"], list):
        worst = {
            k: max(c[k] for c in a["xtb_recomputation"])
            for k in a["xtb_recomputation"][0]
            if k != "frame"
        }
        lines.append(
            f"- Fresh GFN2-xTB on 3 frames: |ΔE| ≤ {worst['abs_energy_diff_ev']:.1e} eV, "
            f"max |ΔF| ≤ {worst['max_abs_force_diff_ev_per_a']:.1e} eV/Å; central finite "
            f"differences of E (h = 1e-3 Å) vs stored F: ≤ "
            f"{worst['max_abs_fd_minus_stored_ev_per_a']:.1e} eV/Å."
        )
    lines.append("")
    return lines


def _water_section(w: dict) -> list[str]:
    lines = []
    d = w["diffusion"]
    ct = w["class_temperatures_on_step_kelvin"]
    lines += [
        f"## Water, SPC/Fw, 64 molecules, 300 K: `{w['file']}`",
        "",
        f"- {w['n_frames']} frames, {w['frame_spacing_fs']} fs apart; box "
        f"{w['box_angstrom']:.4f} Å; thermostat {json.dumps(w['thermostat'])}.",
        f"- Kinetic temperature (on-step velocities, 3N−3 dof) "
        f"{w['kinetic_temperature_kelvin_mean']:.1f} ± "
        f"{w['kinetic_temperature_kelvin_sem']:.1f} K. Per class: molecular COM translation "
        f"{ct['com_translational_kelvin']:.1f} K, "
        f"intramolecular (rotation+vibration) {ct['intramolecular_kelvin']:.1f} K. On-step "
        "Verlet velocities under-report the under-resolved O–H stretch, so the intramolecular "
        "value is biased low; translation, which controls diffusion, is the class to check.",
        f"- O–H {w['OH_bond_mean_a']:.4f} ± {w['OH_bond_std_a']:.4f} Å (literature ≈ 1.03); "
        f"H–O–H {w['HOH_angle_mean_deg']:.2f} ± {w['HOH_angle_std_deg']:.2f}° (≈ 107.7).",
        f"- Potential energy {w['epot_per_molecule_kcal_mol']:.3f} kcal/mol per molecule.",
        "- RDF first peaks (intermolecular, bin 0.05 Å): "
        + "; ".join(
            f"{k} r = {p['r_a']:.3f} Å, g = {p['g']:.2f}" for k, p in w["rdf_first_peaks"].items()
        )
        + " (literature O–O ≈ 2.75 Å).",
        f"- O self-diffusion (MSD, {d['trajectory_ps']:.0f} ps, fit {d['fit_window_ps'][0]:.0f}"
        f"–{d['fit_window_ps'][1]:.0f} ps): D = {d['D_msd_m2_s']:.3g} m²/s uncorrected "
        f"(halves: {', '.join(f'{x:.3g}' for x in d['D_msd_halves_m2_s'])}); Yeh–Hummer "
        f"correction +{d['yeh_hummer_correction_m2_s']:.3g} (η = 0.75 mPa·s assumed) → "
        f"**{d['D_corrected_m2_s']:.3g} m²/s**, "
        f"{100 * (d['D_corrected_m2_s'] / LITERATURE_D_SPCFW - 1):+.0f}% vs 2.32e-9 "
        "(Wu et al. 2006).",
        f"- Max frame-to-frame displacement {w['max_frame_to_frame_displacement_a']:.2f} Å "
        "(positions unwrapped).",
    ]
    if isinstance(w["openmm_recomputation"], list):
        c = w["openmm_recomputation"]
        lines.append(
            "- OpenMM Reference platform (double precision) on first/last frame: |ΔE| ≤ "
            f"{max(x['abs_energy_diff_ev'] for x in c):.1e} eV, ‖ΔF‖/‖F‖ ≤ "
            f"{max(x['force_rel_err'] for x in c):.1e}; central differences (h = 1e-4 Å) vs "
            f"stored F ≤ {max(x['max_abs_fd_minus_stored_ev_per_a'] for x in c):.1e} eV/Å."
        )
    lines += _reference_comparison(w, d, ct)
    lines.append("")
    return lines


def _reference_comparison(w: dict, d: dict, ct: dict) -> list[str]:
    """Rows comparing one water file with the independent SPC/Fw reference."""
    comp = w["shared_reference_comparison"]
    if not isinstance(comp, dict):
        return []
    lines = []
    lines += [
        "",
        "### Agreement with the independent SPC/Fw reference (`--shared-reference`)",
        "",
        "| quantity | this data | reference | difference |",
        "|---|---|---|---|",
    ]
    for name in ("OO", "OH", "HH"):
        c = comp[f"rdf_{name}"]
        ours = w["rdf_first_peaks"][name]
        ref = c["reference_first_peak"]
        lines.append(
            f"| g_{name} first peak (r Å, g) | {ours['r_a']:.3f}, {ours['g']:.2f} | "
            f"{ref['r_a']:.3f}, {ref['g']:.2f} | max |Δg| {c['max_abs_diff']:.3f}, "
            f"RMS {c['rms_diff']:.3f}; {c['bins_beyond_3_sem']}/{c['n_bins']} bins "
            "beyond 3 SEM |"
        )
    b = comp["OH_bond"]
    lines.append(
        f"| O–H bond mean ± std (Å) | {w['OH_bond_mean_a']:.4f} ± {w['OH_bond_std_a']:.4f}"
        f" | {b['reference_mean_a']:.4f} ± {b['reference_std_a']:.4f} | "
        f"{b['mean_diff_a']:+.4f} ± {b['mean_diff_sem_a']:.4f} (SEM); histogram total "
        f"variation {b['histogram_total_variation']:.3f} |"
    )
    rd = comp["diffusion"]
    lines.append(
        f"| D uncorrected, same code (m²/s) | {d['D_msd_m2_s']:.3g} | "
        f"{rd['D_msd_m2_s']:.3g} (halves "
        f"{', '.join(f'{x:.3g}' for x in rd['D_msd_halves_m2_s'])})"
        f" | {100 * (d['D_msd_m2_s'] / rd['D_msd_m2_s'] - 1):+.0f}% |"
    )
    if "class_temperatures_on_step_kelvin" in comp:
        rc = comp["class_temperatures_on_step_kelvin"]
        lines.append(
            f"| T COM / intramolecular (K) | {ct['com_translational_kelvin']:.1f} / "
            f"{ct['intramolecular_kelvin']:.1f} | {rc['com_translational_kelvin']:.1f} / "
            f"{rc['intramolecular_kelvin']:.1f} | |"
        )
    return lines


def _thermostat_section(study: list) -> list[str]:
    lines = []
    lines += [
        "## Thermostat study: equipartition of 64 SPC/Fw waters at 300 K",
        "",
        "Short runs from the same start (energy minimised grid), "
        f"{study[0]['equilibration_ps']:.0f} ps equilibration + {study[0]['sample_ps']:.0f} "
        "ps sampled every 10 fs; on-step velocities; ± is the SEM of 5 blocks.",
        "",
        "| thermostat | dt (fs) | T COM translation (K) | T intramolecular (K) | T total (K) |",
        "|---|---|---|---|---|",
    ]
    for s in study:
        lines.append(
            f"| {s['thermostat']} | {s['timestep_fs']} | {s['com_translational_kelvin']:.1f} ± "
            f"{s['com_translational_kelvin_sem']:.1f} | {s['intramolecular_kelvin']:.1f} ± "
            f"{s['intramolecular_kelvin_sem']:.1f} | {s['total_kelvin']:.1f} |"
        )
    lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m stabie_jax.data.generate.validate")
    parser.add_argument("--aspirin", type=pathlib.Path)
    parser.add_argument(
        "--water",
        type=pathlib.Path,
        action="append",
        default=[],
        help="water data set (repeatable)",
    )
    parser.add_argument("--shared-reference", type=pathlib.Path)
    parser.add_argument("--thermostat-study", action="store_true")
    parser.add_argument("--output", type=pathlib.Path, required=True)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({platform.machine()}, {platform.processor() or 'cpu'})",
        "command": " ".join(
            ["python -m stabie_jax.data.generate.validate", *(argv or sys.argv[1:])]
        ),
    }
    if args.aspirin is not None:
        results["aspirin"] = validate_aspirin(args.aspirin)
    results["water"] = [validate_water(path, args.shared_reference) for path in args.water]
    if args.thermostat_study:
        results["thermostat_study"] = thermostat_study()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render_markdown(results))
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
