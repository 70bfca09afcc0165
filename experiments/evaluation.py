"""Evaluation stage of the molecule experiments: baseline vs StABlE model, paired.

Reads the config (this is the config layer), builds the evaluation simulator and criterion, and
calls :mod:`stabie_jax.evaluation`; writes ``workdir/evaluate/report.json``, ``report.md`` and PNG
plots. The same initial structures (held-out test frames ``0..R−1``) and the same PRNG key are
used for both models.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from experiments import config_reader, stages
from stabie_jax import checkpoint, data, losses, md, metrics_log, observables, stability, units
from stabie_jax import evaluation as ev
from stabie_jax import stabie as stabie_lib
from stabie_jax.evaluation import models as evaluation_models
from stabie_jax.evaluation import plots, report
from stabie_jax.models.registry import replica_fault_check
from stabie_jax.trajectories import export_kept_frames, trajectory_links


def _paired(baseline, other) -> dict:
    """:func:`stabie_jax.evaluation.paired_stability_comparison` of two stability results."""
    if not np.array_equal(baseline.initial_momenta, other.initial_momenta):
        raise ValueError("evaluation results are not paired: initial momenta differ")
    return ev.paired_stability_comparison(
        baseline.stable_time_ps, baseline.censored, other.stable_time_ps, other.censored
    )


def _paired_summary(c: dict | None) -> str:
    if c is None:
        return "–"
    p = "–" if c["wilcoxon_p"] is None else f"{c['wilcoxon_p']:.3g}"
    return f"{c['longer']}/{c['shorter']}/{c['tied']}, p = {p}"


def _simulator(potential, module, z, temperature_kelvin, config, n_replicas):
    dt = units.fs_to_internal(float(config.md.timestep_fs))
    space = md.free_space()
    sim = md.make_simulator(
        potential.energy_fn,
        md.masses_from_atomic_numbers(z),
        dt=dt,
        kT=units.kT(temperature_kelvin),
        space=space,
        history_every=int(config.evaluate.check_every_steps),
        history_length=1,
        mesh=md.replica_mesh(n_replicas),
        replica_batch_size=config_reader.replica_batch_size(config),
        **config_reader.integrator_kwargs(config, "evaluate"),
    )
    check = replica_fault_check(module, space.displacement_fn, sim.dt, sim.masses)
    return md.with_nonfinite_check(sim, check)


def _reference_vacf(config, dt_fs: float, window_steps: int):
    """Reference VACF from the dataset's velocities when its frames are consecutive in time.

    Returns ``(lag_fs [W], vacf [W])`` on the reference frame spacing, or None.
    """
    full = data.load_dataset(
        config.data.source,
        download=bool(config.data.download),
        **config_reader.reader_options(config.data),
    )
    if full.velocities is None or full.time_fs is None:
        return None
    order = np.argsort(full.time_fs)
    spacing = np.diff(np.asarray(full.time_fs)[order])
    if spacing.size == 0 or not np.allclose(spacing, spacing[0]):
        return None
    frame_fs = float(spacing[0])
    window = max(2, int(round(window_steps * dt_fs / frame_fs)))
    vacf = ev.reference_vacf(np.asarray(full.velocities)[order], window=window)
    return frame_fs * np.arange(window), np.asarray(vacf)


def _vacf_on_lags(lag_fs, vacf, target_lag_fs):
    """Simulated VACF interpolated at the reference lags inside its window."""
    keep = target_lag_fs <= lag_fs[-1] + 1e-9
    return keep, np.interp(target_lag_fs[keep], lag_fs, vacf)


MIN_N_EFF = 1000.0
"""Effective sample size below which a reweighted h(r) reference is flagged (the paper's bar)."""


def small_n_eff_notes(numbers: dict, reference_temperature_kelvin: float) -> list[str]:
    """A warning (logged, and returned for the report) per transfer temperature whose h(r)
    reference rests on fewer than :data:`MIN_N_EFF` effective frames."""
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
    for note in notes.values():
        logging.warning(note)
    return list(notes.values())


def n_eff_curve(config, reference_energies) -> dict:
    """N_eff of reweighting the reference frames to 0.5–2× the temperature they were sampled
    at (``data.reference_temperature_kelvin``, else the simulation temperature; the two differ
    e.g. for 500 K data and 700 K runs)."""
    t_ref = config_reader.reference_temperature(config) or float(config.md.temperature_kelvin)
    temps, n_eff = ev.effective_sample_size_vs_temperature(
        np.asarray(reference_energies), t_ref, np.linspace(0.5 * t_ref, 2.0 * t_ref, 31)
    )
    return {"sample_temperature_kelvin": t_ref, "temperature_kelvin": temps, "n_eff": n_eff}


class _Protocol(NamedTuple):
    """The evaluation protocol of one molecule run, read from the config once."""

    temperature_kelvin: float
    dt_fs: float
    check: int  # steps per stability check
    total_steps: int
    n_replicas: int
    initial: jax.Array  # [R, N, 3] Å, held-out test frames 0..R-1
    key: jax.Array  # momenta of every model (paired comparison)
    threshold: float  # bond-length deviation, Å
    stable_fn: Callable
    h_kw: dict
    h_obs: Callable
    h_ref: np.ndarray
    reference_temperature_kelvin: float
    vacf_window: int
    test_frames: object
    data_spec: list
    # The configured training observable at the evaluation temperature when it is not h(r)
    # (h(r) is always evaluated: the paper's observable).
    training: observables.BuiltObservable | None = None


def _protocol(config, molecule) -> _Protocol:
    e = config.evaluate
    T = float(config.md.temperature_kelvin)
    dt_fs = float(config.md.timestep_fs)
    check = int(e.check_every_steps)
    n_rep = int(e.n_replicas)
    if n_rep > molecule.test.n_frames:
        raise ValueError(
            f"evaluate.n_replicas={n_rep} exceeds the {molecule.test.n_frames} held-out test "
            "frames used as initial structures; lower it or raise data.n_test"
        )
    bonds, lengths = np.asarray(molecule.bonds.bonds), np.asarray(molecule.bonds.lengths)
    threshold = float(e.bond_deviation_angstrom)

    def stable_fn(traj):
        return stability.bond_length_deviation(
            traj.positions, bonds, lengths, threshold, frame_axis=0
        )[0]

    h_kw = dict(r_max=float(config.observable.r_max_angstrom), n_bins=int(config.observable.n_bins))
    # Reference frames are canonical at data.reference_temperature_kelvin; h(r) references at
    # other temperatures (the run's, the transfer temperatures) are reweighted from there.
    reference_T = config_reader.reference_temperature(config) or T
    d = config.data
    return _Protocol(
        temperature_kelvin=T,
        dt_fs=dt_fs,
        check=check,
        total_steps=_steps(float(e.length_ps), dt_fs, check),
        n_replicas=n_rep,
        initial=jnp.asarray(molecule.test.positions[:n_rep], jnp.float32),
        key=jax.random.PRNGKey(int(config.seed) + 1000),
        threshold=threshold,
        stable_fn=stable_fn,
        h_kw=h_kw,
        h_obs=ev.h_of_r_observable(sigma=float(config.observable.sigma_angstrom), **h_kw),
        h_ref=observables.h_of_r_reference_at(
            molecule.reference.positions, molecule.reference.energies, T, reference_T, **h_kw
        ),
        reference_temperature_kelvin=reference_T,
        vacf_window=int(e.vacf_window_steps),
        test_frames=losses.LabelledFrames.from_dataset(molecule.test),
        data_spec=[
            d.source,
            d.test_source,
            d.labels,
            d.n_test,
            d.n_val,
            d.n_train,
            d.split_seed,
            d.contiguous,
            d.max_reference_frames,
        ],
        training=_training_observable(config, molecule, T),
    )


def _training_observable(config, molecule, temperature_kelvin):
    """The training observable at the evaluation temperature, or None when it is h(r)."""
    if config_reader.observable_kind(config) == "h_of_r":
        return None
    system = config_reader.molecule_observable_system(config, molecule, temperature_kelvin)
    return config_reader.training_observable(config, system)


def _steps(length_ps: float, dt_fs: float, check: int) -> int:
    """A run of about ``length_ps``, in whole stability-check intervals (at least one)."""
    return check * max(1, int(round(length_ps * 1000.0 / dt_fs / check)))


def _make_evaluate_one(config, molecule, pr: _Protocol) -> Callable:
    """``(name, loaded, scratch) -> ((result, transfer), entry)`` for
    :func:`stabie_jax.evaluation.models.evaluate_each`."""
    e = config.evaluate
    z = molecule.atomic_numbers
    energies = np.asarray(molecule.reference.energies)
    run = dict(
        stable_fn=pr.stable_fn,
        check_every_steps=pr.check,
        sample_every=int(e.sample_every),
        stop_fraction=float(e.stop_fraction),
        checkpoint_every_seconds=float(e.checkpoint_every_seconds),
        progress=bool(config.progress),
        tensorboard=bool(config.get("tensorboard", False)),
        keep_last_chunks=bool(e.get("save_trajectories", False)),
    )

    training_fn = observables.over_frames(pr.training.frame_fn) if pr.training else None

    def evaluate_one(name, loaded, scratch):
        kept = {}  # trajectory files of this model, under evaluate/models/NAME/trajectories
        potential = checkpoint.make_model_potential(
            loaded.module, loaded.metadata, md.free_space().displacement_fn
        )
        result = ev.evaluate_stability(
            _simulator(potential, loaded.module, z, pr.temperature_kelvin, config, pr.n_replicas),
            loaded.params,
            pr.initial,
            pr.key,
            total_steps=pr.total_steps,
            frame_observables={
                "h_of_r": pr.h_obs,
                **({pr.training.name: training_fn} if pr.training else {}),
            },
            vacf_window=pr.vacf_window or None,
            checkpoint_dir=scratch / "stability",
            desc=f"{name} {pr.temperature_kelvin:g} K",
            **run,
        )
        result, files = export_kept_frames(
            result, z, evaluation_models.trajectory_dir(scratch), tag=f"{pr.temperature_kelvin:g}K"
        )
        kept.update(files)
        entry = {
            "median_stable_time_ps": result.median_stable_time_ps,
            "mean_stable_time_ps": result.mean_stable_time_ps,
            "stable_time_ps": result.stable_time_ps,
            "censored": result.censored,
            "simulated_ps": result.simulated_ps,
            "h_of_r": ev.h_of_r_errors(result.observables["h_of_r"], pr.h_ref),
            "test_errors": ev.qm_test_errors(potential, loaded.params, pr.test_frames),
        }
        if pr.training is not None:
            value = result.observables[pr.training.name]
            entry[pr.training.name] = pr.training.error_fn(value, pr.training.reference)
        transfer = {}
        for t2 in tuple(e.transfer_temperatures_kelvin):
            t2 = float(t2)
            tr = ev.evaluate_temperature_transfer(
                _simulator(potential, loaded.module, z, t2, config, pr.n_replicas),
                loaded.params,
                pr.initial,
                pr.key,
                reference_positions=np.asarray(molecule.reference.positions),
                reference_energies=energies,
                reference_temperature_kelvin=pr.reference_temperature_kelvin,
                sigma=float(config.observable.sigma_angstrom),
                total_steps=_steps(float(e.transfer_length_ps), pr.dt_fs, pr.check),
                checkpoint_dir=scratch / f"transfer_{t2:g}K",
                desc=f"{name} {t2:g} K",
                **run,
                **pr.h_kw,
            )
            stability, files = export_kept_frames(
                tr.stability, z, evaluation_models.trajectory_dir(scratch), tag=f"{t2:g}K"
            )
            kept.update(files)
            tr = tr._replace(stability=stability)
            transfer[f"{t2:g}K"] = tr
            entry[f"transfer_{t2:g}K"] = {
                "median_stable_time_ps": tr.stability.median_stable_time_ps,
                "n_eff": tr.n_eff,
                "h_of_r": tr.h_of_r_errors,
            }
        if kept:
            entry["trajectories"] = {k: str(v) for k, v in kept.items()}
        return (result, transfer), entry

    return evaluate_one


def _add_paired_comparisons(results: dict, numbers: dict, h_ref) -> None:
    """Every other model against the baseline, pair by pair (same ICs and momenta), and the
    paper's observable protocol: h(r) of the replica with the median stability gain."""
    if "baseline" not in results:
        return
    baseline = results["baseline"]
    for name in numbers:
        if name == "baseline":
            continue
        numbers[name]["paired_vs_baseline"] = _paired(baseline, results[name])
        replica = ev.median_improvement_replica(baseline, results[name])
        per_replica = {
            model: results[model].observables_per_replica["h_of_r"][replica]
            for model in ("baseline", name)
        }
        numbers[name]["median_gain_replica"] = {
            "replica": replica,
            "stable_time_gain_ps": float(
                results[name].stable_time_ps[replica] - baseline.stable_time_ps[replica]
            ),
            "h_of_r_mae": ev.h_of_r_errors(per_replica[name], h_ref)["mae"],
            "baseline_h_of_r_mae": ev.h_of_r_errors(per_replica["baseline"], h_ref)["mae"],
        }
        for tag, tr in results[name + "_transfer"].items():
            at_tag = results["baseline_transfer"][tag].stability
            numbers[name][f"transfer_{tag}"]["paired_vs_baseline"] = _paired(at_tag, tr.stability)


def _vacf_curves(config, pr: _Protocol, results: dict, numbers: dict):
    """VACF of each model and, where the data allow one, its MAE against the reference."""
    vacf_ref = _reference_vacf(config, pr.dt_fs, pr.vacf_window) if pr.vacf_window else None
    curves = {}
    for name in numbers:
        r = results[name]
        if r.vacf is None:
            continue
        curves[name] = (np.asarray(r.vacf_lag_fs), np.asarray(r.vacf))
        if vacf_ref is not None and np.all(np.isfinite(r.vacf)):
            keep, sim_on_ref = _vacf_on_lags(r.vacf_lag_fs, r.vacf, vacf_ref[0])
            numbers[name]["vacf_mae"] = ev.vacf_mae(sim_on_ref, vacf_ref[1][keep])
    return curves, vacf_ref


def _figures(config, workdir, out, molecule, pr: _Protocol, results, numbers, vacf) -> dict:
    """Every PNG of the report: fraction unstable, h(r), VACF, N_eff, training curve."""
    e = config.evaluate
    figures = {}
    stability_kw = dict(
        n_replicas=int(e.n_replicas),
        criterion=f"a bond length deviates by > {float(e.bond_deviation_angstrom):g} Å",
    )
    figures["fraction_unstable"] = plots.plot_fraction_unstable(
        {n: (results[n].times_ps, results[n].fraction_unstable) for n in numbers},
        out / "fraction_unstable.png",
        title=f"{config.system}: fraction of unstable replicas at {pr.temperature_kelvin:g} K",
        **stability_kw,
    )
    figures["h_of_r"] = plots.plot_h_of_r(
        observables.h_of_r_centers(**pr.h_kw),
        pr.h_ref,
        {n: results[n].observables["h_of_r"] for n in numbers},
        out / "h_of_r.png",
    )
    curves, vacf_ref = vacf
    if curves:
        lag = next(iter(curves.values()))[0]
        figures["vacf"] = plots.plot_vacf(
            lag,
            {n: c[1] for n, c in curves.items()},
            out / "vacf.png",
            reference=None if vacf_ref is None else np.interp(lag, *vacf_ref),
        )
    if tuple(e.transfer_temperatures_kelvin):
        curve = n_eff_curve(config, molecule.reference.energies)
        numbers["n_eff_curve"] = curve
        figures["n_eff"] = plots.plot_neff(
            curve["temperature_kelvin"],
            curve["n_eff"],
            out / "n_eff.png",
            sample_temperature_kelvin=curve["sample_temperature_kelvin"],
            chosen_kelvin=[float(t) for t in e.transfer_temperatures_kelvin],
        )
        for t2 in e.transfer_temperatures_kelvin:
            tag = f"{float(t2):g}K"
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
                title=f"{config.system}: fraction of unstable replicas at {tag}",
                **stability_kw,
            )
    records = metrics_log.read_records(pathlib.Path(workdir) / "stabie" / stabie_lib.METRICS_FILE)
    if records:
        figures["training"] = plots.plot_training_curve(
            records, out / "training.png", **_configured_rate(config, workdir)
        )
    return figures


def _configured_rate(config, workdir) -> dict:
    """Plot the learning rate as the α the user configured: the driver runs the exact
    estimator's rate (converted from the authors' convention), recorded with the model."""
    try:
        meta = checkpoint.read_model_metadata(pathlib.Path(workdir) / stages.STABIE_MODEL)
        exact = float(meta.extra["stabie"]["exact_learning_rate"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    convention = config.stabie.get("hyperparameter_convention", "authors")
    return {
        "lr_scale": float(config.stabie.learning_rate) / exact,
        "lr_label": f"learning rate α ({convention} convention, as configured)",
    }


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
        if name != "n_eff_curve"
    }


def evaluate_molecule(config, workdir, molecule, pretrained_dir, stabie_dir, wall) -> dict:
    """Run the paper's evaluation for the baseline and (if trained) the StABlE model."""
    out = pathlib.Path(workdir) / "evaluate"
    out.mkdir(parents=True, exist_ok=True)
    pr = _protocol(config, molecule)
    models = evaluation_models.load_models(
        pretrained_dir, stabie_dir, str(config.evaluate.extra_models)
    )
    stored, numbers = evaluation_models.evaluate_each(
        models,
        out,
        lambda name, loaded: config_reader.evaluation_fingerprint(
            config, name, loaded.params, pr.data_spec
        ),
        _make_evaluate_one(config, molecule, pr),
    )
    results = {}
    for name, (result, transfer) in stored.items():
        results[name], results[name + "_transfer"] = result, transfer
    _add_paired_comparisons(results, numbers, pr.h_ref)
    vacf = _vacf_curves(config, pr, results, numbers)
    figures = _figures(config, workdir, out, molecule, pr, results, numbers, vacf)
    report.write_report(
        out,
        title=(
            f"{config.system} ({config.get('variant', '')}, data {config.data.source}): "
            f"{pr.n_replicas} replicas × "
            f"{pr.total_steps * pr.dt_fs / 1000.0:g} ps at {pr.temperature_kelvin:g} K, "
            f"bond-length deviation > {pr.threshold} Å"
        ),
        results={
            "comparison": _comparison_table(results, numbers, pr.n_replicas),
            "details": {n: v for n, v in numbers.items() if n != "n_eff_curve"},
            "n_eff_curve": numbers.get("n_eff_curve"),
        },
        config=config.to_dict(),
        wall_clock_seconds=wall,
        plots=figures,
        trajectories=trajectory_links(numbers),
        notes=[
            "Same held-out initial structures and momenta for both models.",
            f"Integrator: {config_reader.md_integrator(config, 'evaluate')} (the authors "
            "evaluated aspirin with Langevin, Ac-Ala3 and water with their Nosé–Hoover).",
            *small_n_eff_notes(numbers, pr.reference_temperature_kelvin),
        ],
    )
    return {
        n: {k: v for k, v in numbers[n].items() if k not in ("stable_time_ps", "censored")}
        for n in numbers
        if n != "n_eff_curve"
    }
