"""Evaluation of trained potentials: stable simulation time, observables, test errors, reports.

The modules:

* :mod:`~stabie_jax.evaluation.stable_times` - :func:`evaluate_stability` (replicas from held-out
  structures, simulated in chunks, frozen at their first failed check, observables accumulated
  over stable chunks; resumable) and the temperature transfer;
* :mod:`~stabie_jax.evaluation.state` - :class:`EvalState`, :class:`StabilityResult`;
* :mod:`~stabie_jax.evaluation.metrics` - dynamics references (VACF, MSD and diffusivity),
  energy and force errors on test frames, the paired stability test;
* :mod:`~stabie_jax.evaluation.store` - finished results keyed by what produced them (a rerun
  with the same protocol reuses them); :mod:`~stabie_jax.evaluation.models` - several models
  under one protocol, each evaluated once;
* :mod:`~stabie_jax.evaluation.report` - ``report.json`` / ``report.md`` with versions, machine
  and command; :mod:`~stabie_jax.evaluation.plots` - the figures (imported on demand:
  matplotlib).

The names of ``stable_times``, ``state`` and ``metrics`` are available here, and with them the
observable errors and reference observables of :mod:`stabie_jax.observables` that an evaluation
uses (h(r), RDF and VACF errors; the h(r) reference at a temperature, Boltzmann-reweighted).

Example:
  >>> from stabie_jax import evaluation
  >>> evaluation.h_of_r_errors([50.0, 50.0], [50.0, 50.0])["mae"]
  0.0
"""

from stabie_jax.evaluation.metrics import (
    VACF_WINDOW,
    diffusivity_curve_m2_per_s,
    paired_stability_comparison,
    pareto_front_mask,
    qm_test_errors,
    reference_msd,
    reference_vacf,
    unwrap_positions,
    velocities_from_positions,
)
from stabie_jax.evaluation.stable_times import (
    STOP_FRACTION,
    WATER_STOP_FRACTION,
    evaluate_stability,
    evaluate_temperature_transfer,
    h_of_r_observable,
    median_improvement_replica,
    rdf_name,
    rdf_observables,
)
from stabie_jax.evaluation.state import (
    EvalState,
    StabilityResult,
    TemperatureTransferResult,
)
from stabie_jax.observables.errors import h_of_r_errors, rdf_errors, vacf_mae
from stabie_jax.observables.references import (
    effective_sample_size_vs_temperature,
    h_of_r_reference_at,
    reweighted_h_of_r_reference,
)

__all__ = [
    "EvalState",
    "STOP_FRACTION",
    "StabilityResult",
    "TemperatureTransferResult",
    "VACF_WINDOW",
    "WATER_STOP_FRACTION",
    "diffusivity_curve_m2_per_s",
    "effective_sample_size_vs_temperature",
    "evaluate_stability",
    "evaluate_temperature_transfer",
    "h_of_r_errors",
    "h_of_r_observable",
    "h_of_r_reference_at",
    "median_improvement_replica",
    "paired_stability_comparison",
    "pareto_front_mask",
    "qm_test_errors",
    "rdf_errors",
    "rdf_name",
    "rdf_observables",
    "reference_msd",
    "reference_vacf",
    "reweighted_h_of_r_reference",
    "unwrap_positions",
    "vacf_mae",
    "velocities_from_positions",
]
