"""Stability figures: fraction of unstable replicas against time (with Wilson bands) and the
stability/force-error Pareto front of a hyperparameter sweep.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from stabie_jax.evaluation.metrics import pareto_front_mask
from stabie_jax.evaluation.plots._style import _color, _figure, _save

__all__ = ["plot_fraction_unstable", "plot_pareto_front", "wilson_interval"]


def plot_fraction_unstable(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path,
    *,
    title: str = "Stability of MD replicas",
    n_replicas: int | None = None,
    criterion: str | None = None,
) -> pathlib.Path:
    """Fraction of unstable replicas against simulation time, with 95 % bands.

    The y-axis fits the data (0 to a little above the largest fraction), so that 2 % against
    8 % is visible; with ``n_replicas`` each curve gets its 95 % Wilson score band (binomial
    uncertainty of a fraction of ``n_replicas`` replicas).

    Args:
      curves: ``{label: (times_ps [C], fraction_unstable [C])}`` (e.g. from
        ``StabilityResult.times_ps`` / ``.fraction_unstable``); several models or temperatures.
      path: output PNG.
      title: axes title.
      n_replicas: replicas per curve (subtitle and bands).
      criterion: the instability criterion in words (subtitle), e.g. "bond deviation > 0.5 Å".
    """
    fig, (ax,) = _figure(figsize=(5.5, 4))
    top = 0.0
    for i, (label, (t, f)) in enumerate(curves.items()):
        t, f = np.asarray(t, np.float64), np.asarray(f, np.float64)
        color = _color(label, i)
        ax.step(t, f, where="post", color=color, lw=2, label=label)
        if n_replicas:
            lo, hi = wilson_interval(f, n_replicas)
            ax.fill_between(t, lo, hi, step="post", color=color, alpha=0.15, lw=0)
            top = max(top, float(np.nanmax(hi, initial=0.0)))
        top = max(top, float(np.nanmax(f, initial=0.0)))
    ax.set_xlabel("simulation time (ps)")
    ax.set_ylabel("fraction of unstable replicas")
    ax.set_ylim(-0.02 * max(top, 0.05), min(1.02, 1.1 * max(top, 0.05)))
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    details = [
        text
        for text in (
            None if n_replicas is None else f"{n_replicas} replicas (95 % bands)",
            None if criterion is None else f"unstable: {criterion}",
        )
        if text
    ]
    ax.set_title(title + ("\n" + "; ".join(details) if details else ""), fontsize=9)
    return _save(fig, path)


def wilson_interval(fraction, n: int, z: float = 1.959964) -> tuple[np.ndarray, np.ndarray]:
    """95 % Wilson score interval of binomial fractions ``fraction`` of ``n`` trials.

    >>> lo, hi = wilson_interval(np.array([0.0, 0.5]), 64)
    >>> [round(float(x), 3) for x in lo], [round(float(x), 3) for x in hi]
    ([0.0, 0.381], [0.057, 0.619])
    """
    p = np.asarray(fraction, np.float64)
    denom = 1.0 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def plot_pareto_front(
    force_mae,
    stable_time,
    path,
    *,
    labels: Sequence[str] | None = None,
    baseline: tuple[float, float] | None = None,
    force_unit: str = "eV/Å",
    stability_label: str = "median stable time (ps)",
    title: str = "Stability vs force error",
) -> pathlib.Path:
    """Scatter of runs (e.g. an α/λ sweep) with the Pareto front highlighted.

    The front is the set of runs not dominated by another with lower force MAE *and* longer
    stable time (:func:`stabie_jax.evaluation.metrics.pareto_front_mask`).

    Args:
      force_mae: ``[P]`` test force MAE per run.
      stable_time: ``[P]`` stability per run (ps, or an improvement over the baseline).
      path: output PNG.
      labels: optional ``[P]`` annotations (e.g. ``"α=1e-3, λ=10"``).
      baseline: optional ``(force_mae, stable_time)`` of the baseline model (star).
      force_unit: unit of ``force_mae`` for the axis label.
      stability_label: y-axis label.
      title: axes title.
    """
    x, y = np.asarray(force_mae, np.float64), np.asarray(stable_time, np.float64)
    front = pareto_front_mask(x, y)
    fig, (ax,) = _figure(figsize=(5.5, 4.2))
    ax.scatter(x[~front], y[~front], color="grey", s=30, label="dominated")
    order = np.argsort(x[front])
    ax.plot(x[front][order], y[front][order], "o-", color="tab:red", ms=7, label="Pareto front")
    if baseline is not None:
        ax.scatter(
            [baseline[0]],
            [baseline[1]],
            marker="*",
            s=160,
            color="tab:blue",
            label="baseline",
            zorder=3,
        )
    if labels is not None:
        for xi, yi, text in zip(x, y, labels, strict=True):
            ax.annotate(text, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(f"test force MAE ({force_unit})")
    ax.set_ylabel(stability_label)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    return _save(fig, path)
