"""The report of the molecule evaluation: figures and ``report.{json,md}``.

:func:`write_molecule_report` turns :func:`~stabie_jax.workflows.molecule_evaluation.
evaluate_molecule_models`' results into the headline table (median/mean stable time, h(r) MAE,
energy and force MAE, unstable replicas, the paired test against the baseline), the figures
(fraction unstable at each temperature, h(r), VACF, N_eff vs temperature, the training curve)
and the report files; :func:`n_eff_curve` and :func:`small_n_eff_notes` say how far the h(r)
reference can be reweighted in temperature.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from stabie_jax import data, observables
from stabie_jax import evaluation as ev
from stabie_jax.evaluation import plots, report
from stabie_jax.trajectories import trajectory_links
from stabie_jax.workflows.molecule_evaluation import MoleculeEvaluation

__all__ = ["MIN_N_EFF", "n_eff_curve", "small_n_eff_notes", "write_molecule_report"]

MIN_N_EFF = 1000.0
"""Effective sample size below which a reweighted h(r) reference is flagged (the paper's bar)."""


def n_eff_curve(reference_energies, sample_temperature_kelvin: float) -> dict:
    """N_eff of reweighting the reference frames (energies in eV) from the temperature they
    were sampled at to 0.5–2× that temperature (31 points)."""
    t_ref = float(sample_temperature_kelvin)
    temps, n_eff = ev.effective_sample_size_vs_temperature(
        np.asarray(reference_energies), t_ref, np.linspace(0.5 * t_ref, 2.0 * t_ref, 31)
    )
    return {"sample_temperature_kelvin": t_ref, "temperature_kelvin": temps, "n_eff": n_eff}


def small_n_eff_notes(numbers: Mapping, reference_temperature_kelvin: float) -> list[str]:
    """A warning per transfer temperature whose h(r) reference rests on fewer than
    :data:`MIN_N_EFF` effective frames (one per temperature, whatever the number of models)."""
    notes = {}
    for entry in numbers.values():
        for key, transfer in entry.items() if isinstance(entry, dict) else ():
            n_eff = transfer.get("n_eff") if key.startswith("transfer_") else None
            if n_eff is not None and n_eff < MIN_N_EFF:
                temperature = key.removeprefix("transfer_")
                notes[temperature] = (
                    f"The {temperature} h(r) reference is reweighted from the "
                    f"{reference_temperature_kelvin:g} K frames with N_eff = {n_eff:.3g} "
                    f"(< {MIN_N_EFF:g}): its h(r) errors are unreliable; use reference frames "
                    "sampled nearer that temperature, or more of them."
                )
    return list(notes.values())


def _paired_summary(c: dict | None) -> str:
    if c is None:
        return "–"
    p = "–" if c["wilcoxon_p"] is None else f"{c['wilcoxon_p']:.3g}"
    return f"{c['longer']}/{c['shorter']}/{c['tied']}, p = {p}"


def _comparison_table(results: dict, numbers: dict, n_rep: int) -> dict:
    """The report's headline table, one row per model."""
    return {
        name: {
            "median stable time (ps)": r["median_stable_time_ps"],
            "mean stable time (ps)": r["mean_stable_time_ps"],
            "h(r) MAE": r["h_of_r"]["mae"],
            "energy MAE (kcal/mol)": r["test_errors"]["energy_mae_kcal_per_mol"],
            "force MAE (kcal/mol/Å)": r["test_errors"]["forces_mae_kcal_per_mol_per_angstrom"],
            "unstable replicas": f"{int(np.sum(~np.asarray(results[name].censored)))} / {n_rep}",
            "vs baseline: longer/shorter/tied, Wilcoxon p": _paired_summary(
                r.get("paired_vs_baseline")
            ),
        }
        for name, r in numbers.items()
    }


def _figures(settings, molecule, out, system, results, numbers, training_records, rate_kw):
    """Every PNG of the report: fraction unstable, h(r), VACF, N_eff, training curve."""
    T = settings.run.temperature_kelvin
    stability_kw = dict(
        n_replicas=settings.run.n_replicas,
        criterion=f"a bond length deviates by > {settings.bond_deviation_angstrom:g} Å",
    )
    figures = {
        "fraction_unstable": plots.plot_fraction_unstable(
            {n: (results[n].times_ps, results[n].fraction_unstable) for n in numbers},
            out / "fraction_unstable.png",
            title=f"{system}: fraction of unstable replicas at {T:g} K",
            **stability_kw,
        ),
        "h_of_r": plots.plot_h_of_r(
            observables.h_of_r_centers(**settings.h_of_r_bins),
            observables.h_of_r_reference_at(
                molecule.reference.positions,
                molecule.reference.energies,
                T,
                settings.reference_temperature_kelvin,
                **settings.h_of_r_bins,
            ),
            {n: results[n].observables["h_of_r"] for n in numbers},
            out / "h_of_r.png",
        ),
    }
    curves = {
        n: (np.asarray(results[n].vacf_lag_fs), np.asarray(results[n].vacf))
        for n in numbers
        if results[n].vacf is not None
    }
    if curves:
        lag = next(iter(curves.values()))[0]
        ref = settings.reference_vacf
        figures["vacf"] = plots.plot_vacf(
            lag,
            {n: c[1] for n, c in curves.items()},
            out / "vacf.png",
            reference=None if ref is None else np.interp(lag, *ref),
        )
    for tag in (f"{float(t):g}K" for t in settings.transfer_temperatures_kelvin):
        figures[f"fraction_unstable_{tag}"] = plots.plot_fraction_unstable(
            {
                n: (
                    results[n + "_transfer"][tag].stability.times_ps,
                    results[n + "_transfer"][tag].stability.fraction_unstable,
                )
                for n in numbers
                if n + "_transfer" in results
            },
            out / f"fraction_unstable_{tag}.png",
            title=f"{system}: fraction of unstable replicas at {tag}",
            **stability_kw,
        )
    if training_records:
        figures["training"] = plots.plot_training_curve(
            training_records, out / "training.png", **(rate_kw or {})
        )
    return figures


def write_molecule_report(
    settings: MoleculeEvaluation,
    molecule: data.MoleculeData,
    results: dict,
    numbers: dict,
    out,
    *,
    system: str,
    title: str,
    config: Mapping | None = None,
    wall_clock_seconds: Mapping | None = None,
    notes: Sequence[str] = (),
    training_records: Sequence[Mapping] = (),
    training_plot_kwargs: Mapping | None = None,
) -> dict:
    """Figures and ``out/report.{json,md}`` of :func:`evaluate_molecule_models`' output.

    Args:
      system: the system's name in the figure titles.
      title: the report's title.
      config: the run's configuration, recorded in the report.
      wall_clock_seconds: stage timings, recorded in the report.
      notes: lines added to the report's notes (a warning is added per transfer temperature
        whose reweighted h(r) reference has N_eff < :data:`MIN_N_EFF`).
      training_records: the StABlE metrics log (``stabie/metrics.jsonl``) for the training
        curve (none: no training figure).
      training_plot_kwargs: ``lr_scale``/``lr_label`` of
        :func:`stabie_jax.evaluation.plots.plot_training_curve`.

    Returns:
      ``{name: numbers}`` without the per-replica arrays (the stage's summary).
    """
    out = pathlib.Path(out)
    warnings = small_n_eff_notes(numbers, settings.reference_temperature_kelvin)
    for warning in warnings:
        logging.warning(warning)
    figures = _figures(
        settings, molecule, out, system, results, numbers, training_records, training_plot_kwargs
    )
    if settings.transfer_temperatures_kelvin:
        curve = n_eff_curve(molecule.reference.energies, settings.reference_temperature_kelvin)
        figures["n_eff"] = plots.plot_neff(
            curve["temperature_kelvin"],
            curve["n_eff"],
            out / "n_eff.png",
            sample_temperature_kelvin=curve["sample_temperature_kelvin"],
            chosen_kelvin=[float(t) for t in settings.transfer_temperatures_kelvin],
        )
    else:
        curve = None
    report.write_report(
        out,
        title=title,
        results={
            "comparison": _comparison_table(results, numbers, settings.run.n_replicas),
            "details": numbers,
            "n_eff_curve": curve,
        },
        config=config,
        wall_clock_seconds=wall_clock_seconds,
        plots=figures,
        trajectories=trajectory_links(numbers),
        notes=[*notes, *warnings],
    )
    return {
        n: {k: v for k, v in entry.items() if k not in ("stable_time_ps", "censored")}
        for n, entry in numbers.items()
    }
