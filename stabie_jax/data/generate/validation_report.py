"""The reference-data validation report as Markdown: numbers first, full JSON at the end.

:func:`render_markdown` turns the results of
:func:`~stabie_jax.data.generate.validation_molecule.validate_aspirin`,
:func:`~stabie_jax.data.generate.validation_water.validate_water` and
:func:`~stabie_jax.data.generate.validation_water.thermostat_study` (plus ``date_utc``,
``machine`` and ``command``) into the page ``python -m stabie_jax.data.generate.validate``
writes, e.g. ``benchmarks/results/reference_data.md``. Sections are skipped when their check was.
"""

from __future__ import annotations

import json
from typing import Any

from stabie_jax.data.generate.validation_water import LITERATURE_D_SPCFW

__all__ = ["render_markdown"]


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
