"""The evaluation of periodic models (64-water, any bulk system): baseline vs StABlE, paired.

Every model simulates the same held-out test structures with the same momenta
(:class:`~stabie_jax.workflows.evaluation_run.EvaluationRun`), checked every chunk against the
criterion of :func:`~stabie_jax.workflows.periodic.periodic_stable_fn` (water: the element-pair
RDFs of the chunk, ``"rdf_mae"``); reported per model: stable times, the element-pair RDF errors
against the reference frames and the diffusivity of the heaviest element (water: oxygen).

* :class:`PeriodicEvaluation` - the protocol;
* :func:`evaluate_periodic_models` - run every model once (finished models are reused);
* :func:`write_periodic_report` - figures and ``report.{json,md}``.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import ase.data
import jax.numpy as jnp
import numpy as np

from stabie_jax import evaluation as ev
from stabie_jax import observables
from stabie_jax.evaluation import models as evaluation_models
from stabie_jax.evaluation import plots, report
from stabie_jax.observables.kinds.rdf import element_pairs
from stabie_jax.trajectories import export_kept_frames, trajectory_links
from stabie_jax.workflows.evaluation_run import EvaluationRun
from stabie_jax.workflows.periodic import (
    PeriodicData,
    PeriodicMD,
    cell_of_box,
    periodic_simulator,
    periodic_stable_fn,
)

__all__ = [
    "EVALUATION_CRITERIA",
    "PeriodicEvaluation",
    "criterion_text",
    "evaluate_periodic_models",
    "pair_label",
    "reference_rdfs",
    "write_periodic_report",
]

EVALUATION_CRITERIA = ("rdf_mae", "min_intermolecular", "bond_deviation")
"""Stability criteria of a periodic evaluation."""

RDF_BINS = 500
"""Bins of the evaluation's element-pair RDFs (to ``rdf_r_max_angstrom``)."""


class PeriodicEvaluation(NamedTuple):
    """The evaluation protocol of a periodic system.

    Attributes:
      run: the stability run shared by every model (:class:`EvaluationRun`).
      md: the simulator's MD settings (:class:`~stabie_jax.workflows.periodic.PeriodicMD`,
        with the evaluation's integrator).
      criterion: one of :data:`EVALUATION_CRITERIA`.
      threshold: the criterion's threshold: RDF MAE (``"rdf_mae"``) or a distance in Å.
      rdf_r_max_angstrom: range of the element-pair RDFs, Å.
    """

    run: EvaluationRun
    md: PeriodicMD
    criterion: str
    threshold: float
    rdf_r_max_angstrom: float = 6.0


def pair_label(pair) -> str:
    """``"O–H"`` for the atomic numbers ``(8, 1)``.

    >>> pair_label((8, 1))
    'O–H'
    """
    return "–".join(ase.data.chemical_symbols[int(a)] for a in pair)


def criterion_text(criterion: str, threshold: float) -> str:
    """The criterion in words, for reports and figures.

    >>> criterion_text("min_intermolecular", 1.2)
    'intermolecular distance < 1.2 Å'
    """
    if criterion == "rdf_mae":
        return f"RDF MAE > {threshold:g}"
    if criterion == "min_intermolecular":
        return f"intermolecular distance < {threshold:g} Å"
    return f"bond deviation > {threshold:g} Å"


def reference_rdfs(periodic: PeriodicData, r_max: float) -> dict:
    """``{pair: g [RDF_BINS]}``: each element pair's RDF averaged over the reference frames."""
    z = periodic.atomic_numbers
    positions = jnp.asarray(periodic.reference.positions)
    return {
        p: np.asarray(
            jnp.mean(observables.rdf(positions, z, p, periodic.box, r_max, RDF_BINS), axis=0)
        )
        for p in element_pairs(z)
    }


def _make_evaluate_one(settings: PeriodicEvaluation, periodic: PeriodicData, ref: dict) -> Callable:
    """``(name, loaded, scratch) -> (result, entry)`` for
    :func:`stabie_jax.evaluation.models.evaluate_each`."""
    run = settings.run
    run.check_test_frames(periodic.test.n_frames)
    z = periodic.atomic_numbers
    pairs = element_pairs(z)
    r_max = settings.rdf_r_max_angstrom
    stable_fn = periodic_stable_fn(
        settings.criterion, settings.threshold, periodic, {"rdfs": ref, "r_max": r_max}
    )
    initial = jnp.asarray(periodic.test.positions[: run.n_replicas], jnp.float32)
    reference = {ev.rdf_name(p): ref[p] for p in pairs}

    def evaluate_one(name, loaded, scratch):
        T = run.temperature_kelvin
        _, sim, _, _ = periodic_simulator(
            loaded, periodic, settings.md, T, run.check_every_steps, run.n_replicas
        )
        result = ev.evaluate_stability(
            sim,
            loaded.params,
            initial,
            run.key,
            stable_fn=stable_fn,
            total_steps=run.total_steps,
            frame_observables=ev.rdf_observables(z, periodic.box, pairs, r_max),
            msd_atoms=z == z.max(),  # the heaviest element (water: oxygen)
            checkpoint_dir=scratch / "stability",
            desc=f"{name} {T:g} K",
            **run.stability_kwargs(),
        )
        result, kept = export_kept_frames(
            result,
            z,
            evaluation_models.trajectory_dir(scratch),
            tag=f"{T:g}K",
            cell=cell_of_box(periodic.box),
        )
        rdfs = {ev.rdf_name(p): result.observables[ev.rdf_name(p)] for p in pairs}
        entry = {
            "median_stable_time_ps": result.median_stable_time_ps,
            "mean_stable_time_ps": result.mean_stable_time_ps,
            "stable_time_ps": result.stable_time_ps,
            "rdf_errors": ev.rdf_errors(rdfs, reference, r_max),
            "diffusivity_m2_per_s": None
            if result.diffusivity_m2_per_s is None
            else np.asarray(result.diffusivity_m2_per_s)[-1],
        }
        if kept:
            entry["trajectories"] = {k: str(v) for k, v in kept.items()}
        return result, entry

    return evaluate_one


def evaluate_periodic_models(
    settings: PeriodicEvaluation,
    periodic: PeriodicData,
    models: Mapping,
    out,
    fingerprint_fn: Callable[[str, object], str],
) -> tuple[dict, dict]:
    """Evaluate every model under ``settings``, each once.

    Args:
      settings: the protocol.
      periodic: the data (:func:`~stabie_jax.workflows.periodic.load_periodic_data`); its test
        frames are the initial structures, its reference frames give the reference RDFs.
      models: ``{name: LoadedModel}`` (:func:`stabie_jax.evaluation.models.load_models`).
      out: the evaluation directory (finished models are stored under ``out/models/NAME``).
      fingerprint_fn: ``(name, loaded) -> str``, everything a model's result depends on.

    Returns:
      ``(results, numbers)``: ``{name: StabilityResult}`` and the report's numbers per model.
    """
    ref = reference_rdfs(periodic, settings.rdf_r_max_angstrom)
    pathlib.Path(out).mkdir(parents=True, exist_ok=True)
    return evaluation_models.evaluate_each(
        dict(models), pathlib.Path(out), fingerprint_fn, _make_evaluate_one(settings, periodic, ref)
    )


def write_periodic_report(
    settings: PeriodicEvaluation,
    periodic: PeriodicData,
    results: dict,
    numbers: dict,
    out,
    *,
    system: str,
    title: str,
    config: Mapping | None = None,
    wall_clock_seconds: Mapping | None = None,
    training_records: Sequence[Mapping] = (),
    training_plot_kwargs: Mapping | None = None,
) -> dict:
    """Figures (fraction unstable, element RDFs, training curve) and ``out/report.{json,md}``.

    Arguments as :func:`~stabie_jax.workflows.molecule_evaluation.write_molecule_report`.
    Returns ``{name: numbers}`` without the per-replica stable times (the stage's summary).
    """
    out = pathlib.Path(out)
    run = settings.run
    T = run.temperature_kelvin
    z = periodic.atomic_numbers
    pairs = element_pairs(z)
    r_max = settings.rdf_r_max_angstrom
    ref = reference_rdfs(periodic, r_max)
    criterion = criterion_text(settings.criterion, settings.threshold)
    figures = {
        "fraction_unstable": plots.plot_fraction_unstable(
            {n: (results[n].times_ps, results[n].fraction_unstable) for n in results},
            out / "fraction_unstable.png",
            title=f"{system}: fraction of unstable replicas at {T:g} K",
            n_replicas=run.n_replicas,
            criterion=criterion,
        ),
        "rdfs": plots.plot_element_rdfs(
            observables.rdf_bins(r_max, RDF_BINS)[0],
            {ev.rdf_name(p): ref[p] for p in pairs},
            {
                n: {ev.rdf_name(p): results[n].observables[ev.rdf_name(p)] for p in pairs}
                for n in results
            },
            out / "rdfs.png",
        ),
    }
    if training_records:
        figures["training"] = plots.plot_training_curve(
            training_records, out / "training.png", **(training_plot_kwargs or {})
        )
    heaviest = ase.data.chemical_symbols[int(z.max())]
    table = {
        name: {
            "median stable time (ps)": r["median_stable_time_ps"],
            **{
                f"{pair_label(p)} RDF MAE": r["rdf_errors"][ev.rdf_name(p)]["rdf_mae"]
                for p in pairs
            },
            f"D {heaviest} (m²/s)": r["diffusivity_m2_per_s"],
        }
        for name, r in numbers.items()
    }
    report.write_report(
        out,
        title=title,
        results={"comparison": table, "details": numbers},
        config=config,
        wall_clock_seconds=wall_clock_seconds,
        plots=figures,
        trajectories=trajectory_links(numbers),
    )
    return {n: {k: v for k, v in r.items() if k != "stable_time_ps"} for n, r in numbers.items()}
