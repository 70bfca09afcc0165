"""Figures of an evaluation run (PNG, matplotlib's non-interactive Agg backend).

One function per figure of the paper's evidence: fraction of unstable replicas against time,
h(r) against the reference with a difference inset, VACF, element RDFs, diffusivity
convergence, the stability/force-error Pareto front, N_eff against temperature and the StABlE
training curve. Each takes plain arrays or dicts (no stabie_jax objects), writes one PNG and
returns its path. Curves are keyed by label (``{"baseline": ..., "StABlE": ...}``); the
reference is drawn in black, labels containing "baseline" in blue and "StABlE" in orange (as in
the paper), other labels in further colours.

Units on the axes: time in ps, distances in Å, lags in fs, diffusivity in 10⁻⁹ m²/s, force MAE
in the unit the caller states (``force_unit``).

The modules (every public name is available here):

* :mod:`~stabie_jax.evaluation.plots.stability` - fraction of unstable replicas with
  :func:`wilson_interval` bands, the stability/force-error Pareto front;
* :mod:`~stabie_jax.evaluation.plots.observables` - h(r), VACF, element RDFs, diffusivity
  convergence, N_eff against temperature;
* :mod:`~stabie_jax.evaluation.plots.training` - pretraining and StABlE training curves
  (:data:`GRADIENT_KEYS`);
* :mod:`~stabie_jax.evaluation.plots.scaling` - log–log benchmark scaling panels;
* ``_style`` - the shared colours, reference style, figure and PNG helpers.

Examples:
  >>> plot_fraction_unstable({"baseline": (t, f0), "StABlE": (t, f1)}, "unstable.png")
  ... # doctest: +SKIP
"""

from stabie_jax.evaluation.plots.observables import (
    plot_diffusivity_convergence,
    plot_element_rdfs,
    plot_h_of_r,
    plot_neff,
    plot_vacf,
)
from stabie_jax.evaluation.plots.scaling import plot_log_log_panels
from stabie_jax.evaluation.plots.stability import (
    plot_fraction_unstable,
    plot_pareto_front,
    wilson_interval,
)
from stabie_jax.evaluation.plots.training import (
    GRADIENT_KEYS,
    plot_pretraining_curve,
    plot_training_curve,
)

__all__ = [
    "plot_diffusivity_convergence",
    "plot_element_rdfs",
    "GRADIENT_KEYS",
    "plot_fraction_unstable",
    "plot_h_of_r",
    "plot_log_log_panels",
    "plot_neff",
    "plot_pareto_front",
    "plot_pretraining_curve",
    "plot_training_curve",
    "plot_vacf",
    "wilson_interval",
]
