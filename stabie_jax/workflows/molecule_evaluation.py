"""The paper's evaluation of molecule models (aspirin, Ac-Ala3-NHMe): baseline vs StABlE, paired.

Every model simulates the same held-out test structures (frames ``0..R−1``) with the same
momenta (:class:`~stabie_jax.workflows.evaluation_run.EvaluationRun`), checked against the
bond-length criterion every chunk, at the run's temperature and at each transfer temperature.
Per model: stable times, h(r) against the (Boltzmann-reweighted) reference, the configured
training observable when it is not h(r), the VACF, and energy/force errors on the test frames;
per pair with the baseline: the paired tests and the paper's observable protocol (h(r) of the
replica with the median stability gain).

* :class:`MoleculeEvaluation` - the protocol (units in the names);
* :func:`evaluate_molecule_models` - run every model once (finished models are reused from
  ``out/models/NAME``), returning the results and the report's numbers;
* :func:`~stabie_jax.workflows.molecule_report.write_molecule_report` - figures and
  ``report.{json,md}`` (module :mod:`~stabie_jax.workflows.molecule_report`).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from stabie_jax import checkpoint, data, losses, md, observables, stability, units
from stabie_jax import evaluation as ev
from stabie_jax.evaluation import models as evaluation_models
from stabie_jax.models.registry import replica_fault_check
from stabie_jax.trajectories import export_kept_frames
from stabie_jax.workflows.evaluation_run import EvaluationRun

__all__ = [
    "MoleculeEvaluation",
    "evaluate_molecule_models",
    "molecule_evaluation_simulator",
    "reference_vacf_of",
]


class MoleculeEvaluation(NamedTuple):
    """The evaluation protocol of a molecule (what ``config.evaluate`` holds, units in names).

    Attributes:
      run: the stability run shared by every model (:class:`EvaluationRun`).
      bond_deviation_angstrom: a replica is unstable once a bond length deviates by more, Å.
      integrator_kwargs: integrator keywords of :func:`stabie_jax.md.make_simulator`
        (``integrator`` and its ``tau``/``gamma``/...).
      replica_batch_size: replicas per ``vmap`` chunk (None = all at once).
      reference_temperature_kelvin: temperature the reference frames were sampled at; h(r)
        references at other temperatures are Boltzmann-reweighted from there.
      h_of_r_r_max_angstrom, h_of_r_n_bins, h_of_r_sigma_angstrom: the h(r) histogram.
      vacf_window_steps: VACF over this many consecutive steps per chunk (0 = off).
      transfer_temperatures_kelvin: also evaluate at these temperatures ...
      transfer_length_ps: ... for this long.
      training: the training observable at the evaluation temperature when it is not h(r)
        (h(r), the paper's observable, is always evaluated), else None.
      reference_vacf: ``(lag_fs [W], vacf [W])`` of the dataset (:func:`reference_vacf_of`),
        or None when the data have no consecutive velocities.
    """

    run: EvaluationRun
    bond_deviation_angstrom: float
    integrator_kwargs: dict
    replica_batch_size: int | None
    reference_temperature_kelvin: float
    h_of_r_r_max_angstrom: float = 10.0
    h_of_r_n_bins: int = 500
    h_of_r_sigma_angstrom: float | None = 0.01
    vacf_window_steps: int = 0
    transfer_temperatures_kelvin: tuple[float, ...] = ()
    transfer_length_ps: float = 0.0
    training: observables.BuiltObservable | None = None
    reference_vacf: tuple | None = None

    @property
    def h_of_r_bins(self) -> dict:
        return dict(r_max=self.h_of_r_r_max_angstrom, n_bins=self.h_of_r_n_bins)


def reference_vacf_of(dataset: data.Dataset, timestep_fs: float, window_steps: int):
    """Reference VACF from a dataset's velocities when its frames are consecutive in time.

    Returns ``(lag_fs [W], vacf [W])`` on the dataset's frame spacing, over about
    ``window_steps`` simulation steps of ``timestep_fs``, or None (no velocities or times, or
    frames not evenly spaced).
    """
    if dataset.velocities is None or dataset.time_fs is None:
        return None
    order = np.argsort(dataset.time_fs)
    spacing = np.diff(np.asarray(dataset.time_fs)[order])
    if spacing.size == 0 or not np.allclose(spacing, spacing[0]):
        return None
    frame_fs = float(spacing[0])
    window = max(2, int(round(window_steps * timestep_fs / frame_fs)))
    vacf = ev.reference_vacf(np.asarray(dataset.velocities)[order], window=window)
    return frame_fs * np.arange(window), np.asarray(vacf)


def molecule_evaluation_simulator(potential, module, atomic_numbers, temperature_kelvin, settings):
    """The replica simulator of the evaluation at ``temperature_kelvin``, free space, with the
    model's non-finite/overflow check (:func:`stabie_jax.md.with_nonfinite_check`)."""
    space = md.free_space()
    sim = md.make_simulator(
        potential.energy_fn,
        md.masses_from_atomic_numbers(atomic_numbers),
        dt=units.fs_to_internal(settings.run.timestep_fs),
        kT=units.kT(temperature_kelvin),
        space=space,
        history_every=settings.run.check_every_steps,
        history_length=1,
        mesh=md.replica_mesh(settings.run.n_replicas),
        replica_batch_size=settings.replica_batch_size,
        **settings.integrator_kwargs,
    )
    check = replica_fault_check(module, space.displacement_fn, sim.dt, sim.masses)
    return md.with_nonfinite_check(sim, check)


class _Prepared(NamedTuple):
    """What the protocol derives from the molecule once, for every model."""

    initial: jnp.ndarray  # [R, N, 3] Å
    stable_fn: Callable
    h_obs: Callable
    h_ref: np.ndarray
    test_frames: losses.LabelledFrames


def _prepare(settings: MoleculeEvaluation, molecule: data.MoleculeData) -> _Prepared:
    run = settings.run
    run.check_test_frames(molecule.test.n_frames)
    bonds, lengths = np.asarray(molecule.bonds.bonds), np.asarray(molecule.bonds.lengths)
    threshold = float(settings.bond_deviation_angstrom)

    def stable_fn(traj):
        return stability.bond_length_deviation(
            traj.positions, bonds, lengths, threshold, frame_axis=0
        )[0]

    return _Prepared(
        initial=jnp.asarray(molecule.test.positions[: run.n_replicas], jnp.float32),
        stable_fn=stable_fn,
        h_obs=ev.h_of_r_observable(sigma=settings.h_of_r_sigma_angstrom, **settings.h_of_r_bins),
        h_ref=observables.h_of_r_reference_at(
            molecule.reference.positions,
            molecule.reference.energies,
            run.temperature_kelvin,
            settings.reference_temperature_kelvin,
            **settings.h_of_r_bins,
        ),
        test_frames=losses.LabelledFrames.from_dataset(molecule.test),
    )


def _stability_entry(result) -> dict:
    return {
        "median_stable_time_ps": result.median_stable_time_ps,
        "mean_stable_time_ps": result.mean_stable_time_ps,
        "stable_time_ps": result.stable_time_ps,
        "censored": result.censored,
        "simulated_ps": result.simulated_ps,
    }


def _make_evaluate_one(settings, molecule, prep: _Prepared) -> Callable:
    """``(name, loaded, scratch) -> ((result, transfer), entry)`` for
    :func:`stabie_jax.evaluation.models.evaluate_each`."""
    run = settings.run
    z = molecule.atomic_numbers
    training = settings.training
    frame_observables = {"h_of_r": prep.h_obs}
    if training is not None:
        frame_observables[training.name] = observables.over_frames(training.frame_fn)

    def simulate(potential, loaded, temperature, total_steps, directory, desc):
        sim = molecule_evaluation_simulator(potential, loaded.module, z, temperature, settings)
        common = dict(total_steps=total_steps, checkpoint_dir=directory, desc=desc)
        if temperature == run.temperature_kelvin:
            return ev.evaluate_stability(
                sim,
                loaded.params,
                prep.initial,
                run.key,
                stable_fn=prep.stable_fn,
                frame_observables=frame_observables,
                vacf_window=settings.vacf_window_steps or None,
                **common,
                **run.stability_kwargs(),
            )
        return ev.evaluate_temperature_transfer(
            sim,
            loaded.params,
            prep.initial,
            run.key,
            stable_fn=prep.stable_fn,
            reference_positions=np.asarray(molecule.reference.positions),
            reference_energies=np.asarray(molecule.reference.energies),
            reference_temperature_kelvin=settings.reference_temperature_kelvin,
            sigma=settings.h_of_r_sigma_angstrom,
            **common,
            **run.stability_kwargs(),
            **settings.h_of_r_bins,
        )

    def evaluate_one(name, loaded, scratch):
        kept = {}  # trajectory files of this model, under evaluate/models/NAME/trajectories
        out_dir = evaluation_models.trajectory_dir(scratch)
        potential = checkpoint.make_model_potential(
            loaded.module, loaded.metadata, md.free_space().displacement_fn
        )
        T = run.temperature_kelvin
        result = simulate(
            potential, loaded, T, run.total_steps, scratch / "stability", f"{name} {T:g} K"
        )
        result, files = export_kept_frames(result, z, out_dir, tag=f"{T:g}K")
        kept.update(files)
        entry = {
            **_stability_entry(result),
            "h_of_r": ev.h_of_r_errors(result.observables["h_of_r"], prep.h_ref),
            "test_errors": ev.qm_test_errors(potential, loaded.params, prep.test_frames),
        }
        if training is not None:
            value = result.observables[training.name]
            entry[training.name] = training.error_fn(value, training.reference)
        transfer = {}
        for t2 in settings.transfer_temperatures_kelvin:
            t2, tag = float(t2), f"{float(t2):g}K"
            tr = simulate(
                potential,
                loaded,
                t2,
                run.steps(settings.transfer_length_ps),
                scratch / f"transfer_{tag}",
                f"{name} {t2:g} K",
            )
            kept_stability, files = export_kept_frames(tr.stability, z, out_dir, tag=tag)
            kept.update(files)
            transfer[tag] = tr = tr._replace(stability=kept_stability)
            entry[f"transfer_{tag}"] = {
                "median_stable_time_ps": tr.stability.median_stable_time_ps,
                "n_eff": tr.n_eff,
                "h_of_r": tr.h_of_r_errors,
            }
        if kept:
            entry["trajectories"] = {k: str(v) for k, v in kept.items()}
        return (result, transfer), entry

    return evaluate_one


def _paired(baseline, other) -> dict:
    """:func:`stabie_jax.evaluation.paired_stability_comparison` of two stability results."""
    if not np.array_equal(baseline.initial_momenta, other.initial_momenta):
        raise ValueError("evaluation results are not paired: initial momenta differ")
    return ev.paired_stability_comparison(
        baseline.stable_time_ps, baseline.censored, other.stable_time_ps, other.censored
    )


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


def _add_vacf_errors(settings: MoleculeEvaluation, results: dict, numbers: dict) -> None:
    """VACF MAE of each model against the reference, on the reference lags inside the window."""
    if settings.reference_vacf is None:
        return
    ref_lag, ref_vacf = settings.reference_vacf
    for name in numbers:
        r = results[name]
        if r.vacf is not None and np.all(np.isfinite(r.vacf)):
            keep = ref_lag <= r.vacf_lag_fs[-1] + 1e-9
            on_ref = np.interp(ref_lag[keep], r.vacf_lag_fs, r.vacf)
            numbers[name]["vacf_mae"] = ev.vacf_mae(on_ref, ref_vacf[keep])


def evaluate_molecule_models(
    settings: MoleculeEvaluation,
    molecule: data.MoleculeData,
    models: Mapping,
    out,
    fingerprint_fn: Callable[[str, object], str],
) -> tuple[dict, dict]:
    """Evaluate every model under ``settings``, each once, and compare each with the baseline.

    Args:
      settings: the protocol.
      molecule: the data (:func:`stabie_jax.data.load_molecule_data`); its test frames are the
        initial structures and the test set of the energy/force errors.
      models: ``{name: LoadedModel}`` (:func:`stabie_jax.evaluation.models.load_models`); the
        one named ``"baseline"`` is the reference of the paired comparisons.
      out: the evaluation directory (finished models are stored under ``out/models/NAME``).
      fingerprint_fn: ``(name, loaded) -> str``, everything a model's result depends on.

    Returns:
      ``(results, numbers)``: ``results[name]`` the :class:`~stabie_jax.evaluation.
      StabilityResult` at the run's temperature and ``results[name + "_transfer"]`` a dict of
      :class:`~stabie_jax.evaluation.TemperatureTransferResult` per transfer temperature;
      ``numbers[name]`` the JSON-able numbers of the report.
    """
    prep = _prepare(settings, molecule)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    evaluate_one = _make_evaluate_one(settings, molecule, prep)
    stored, numbers = evaluation_models.evaluate_each(
        dict(models), out, fingerprint_fn, evaluate_one
    )
    results = {}
    for name, (result, transfer) in stored.items():
        results[name], results[name + "_transfer"] = result, transfer
    _add_paired_comparisons(results, numbers, prep.h_ref)
    _add_vacf_errors(settings, results, numbers)
    return results, numbers
