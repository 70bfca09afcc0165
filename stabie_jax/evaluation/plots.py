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

Examples:
  >>> plot_fraction_unstable({"baseline": (t, f0), "StABlE": (t, f1)}, "unstable.png")
  ... # doctest: +SKIP
"""

from __future__ import annotations

import os
import pathlib
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from stabie_jax import units
from stabie_jax.evaluation.metrics import pareto_front_mask

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

REFERENCE_STYLE = dict(color="black", lw=1.6, label="reference")
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
DPI = 150
M2_PER_S_TO_1E9 = 1e9
"""Plot diffusivities in units of 10⁻⁹ m²/s (the paper's)."""


def _save(fig, path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, format="png")  # Agg renderer; no pyplot state
    if not path.exists() or os.path.getsize(path) == 0:
        raise RuntimeError(f"matplotlib did not write {path}")
    return path


def _color(label: str, i: int) -> str:
    """Paper colours: "baseline" blue, "StABlE" orange; every other label (e.g. a third model
    such as "authors_StABlE") cycles through the remaining colours by its position ``i``."""
    low = str(label).lower()
    if low == "baseline":
        return "tab:blue"
    if low == "stable":
        return "tab:orange"
    return COLORS[2 + i % (len(COLORS) - 2)]


def _figure(ncols: int = 1, figsize=(5.5, 4)):
    """A pyplot-free Agg figure (no global backend state, safe in threads and notebooks)."""
    fig = Figure(figsize=figsize)
    axes = fig.subplots(1, ncols, squeeze=False)
    return fig, axes[0]


def _finite(y) -> bool:
    y = np.asarray(y, np.float64)
    return y.size > 0 and bool(np.isfinite(y).any())


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


def plot_h_of_r(
    r,
    reference,
    curves: Mapping[str, Sequence[float]],
    path,
    *,
    title: str = "Distribution of interatomic distances",
    inset: bool = True,
) -> pathlib.Path:
    """h(r) of the reference and the models, with an inset of ``h − h_ref``.

    Args:
      r: ``[K]`` Å, bin centres.
      reference: ``[K]`` reference h(r) (same normalisation as the curves, e.g. sum 100).
      curves: ``{label: h [K]}``; all-NaN curves (no stable frames) are listed as such.
      path: output PNG.
      title: axes title.
      inset: draw the difference inset.
    """
    r = np.asarray(r)
    ref = np.asarray(reference)
    fig, (ax,) = _figure(figsize=(6, 4.2))
    ax.plot(r, ref, **REFERENCE_STYLE)
    for i, (label, h) in enumerate(curves.items()):
        if not _finite(h):
            label = f"{label} (no stable frames)"
        ax.plot(r, np.asarray(h), color=_color(label, i), lw=1.2, label=label)
    ax.set_xlabel("r (Å)")
    ax.set_ylabel("h(r) (normalised to sum 100)")
    ax.set_xlim(r[0], r[-1])
    ax.legend(loc="upper left")
    ax.set_title(title)
    if inset:
        ins = ax.inset_axes([0.58, 0.55, 0.39, 0.4])
        for i, (label, h) in enumerate(curves.items()):
            ins.plot(r, np.asarray(h) - ref, color=_color(label, i), lw=0.8)
        ins.axhline(0.0, color="black", lw=0.6)
        ins.set_title("h − h_ref", fontsize=8)
        ins.tick_params(labelsize=7)
        ins.set_xlabel("r (Å)", fontsize=7)
    return _save(fig, path)


def plot_vacf(
    lag_fs,
    curves: Mapping[str, Sequence[float]],
    path,
    *,
    reference=None,
    title: str = "Velocity autocorrelation function",
) -> pathlib.Path:
    """Normalised VACF ``C(τ)`` against lag.

    Args:
      lag_fs: ``[W]`` fs.
      curves: ``{label: C [W]}``.
      path: output PNG.
      reference: optional ``[W]`` reference VACF.
      title: axes title.
    """
    lag = np.asarray(lag_fs)
    fig, (ax,) = _figure(figsize=(5.5, 4))
    if reference is not None:
        ax.plot(lag, np.asarray(reference), **REFERENCE_STYLE)
    for i, (label, c) in enumerate(curves.items()):
        ax.plot(lag, np.asarray(c), color=_color(label, i), lw=1.4, label=label)
    ax.axhline(0.0, color="grey", lw=0.6)
    ax.set_xlabel("lag τ (fs)")
    ax.set_ylabel("VACF  ⟨v(0)·v(τ)⟩ / ⟨v·v⟩")
    ax.legend()
    ax.set_title(title)
    return _save(fig, path)


def plot_element_rdfs(
    r,
    reference: Mapping[str, Sequence[float]],
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    path,
    *,
    titles: Mapping[str, str] | None = None,
) -> pathlib.Path:
    """Element-conditioned RDFs, one panel per pair (O–O, O–H, H–H).

    Args:
      r: ``[K]`` Å.
      reference: ``{pair_name: g_ref [K]}`` (panel order).
      curves: ``{label: {pair_name: g [K]}}``.
      path: output PNG.
      titles: optional ``{pair_name: panel title}`` (e.g. ``{"rdf_8_8": "O–O"}``).
    """
    r = np.asarray(r)
    names = list(reference)
    fig, axes = _figure(len(names), figsize=(4.2 * len(names), 3.8))
    for ax, name in zip(axes, names, strict=True):
        ax.plot(r, np.asarray(reference[name]), **REFERENCE_STYLE)
        for i, (label, rdfs) in enumerate(curves.items()):
            ax.plot(r, np.asarray(rdfs[name]), color=_color(label, i), lw=1.2, label=label)
        ax.set_xlabel("r (Å)")
        ax.set_ylabel("g(r)")
        ax.set_title((titles or {}).get(name, name))
        ax.grid(alpha=0.3)
    axes[0].legend()
    return _save(fig, path)


def plot_diffusivity_convergence(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path,
    *,
    reference: tuple[Sequence[float], Sequence[float]] | float | None = None,
    title: str = "Diffusivity convergence (oxygen)",
) -> pathlib.Path:
    """Running diffusivity estimate ``MSD(t)/(6t)`` against lag time.

    Args:
      curves: ``{label: (lag_ps [L], D [L] or [R, L] m²/s)}``; with ``[R, L]`` the replica
        mean (NaN-aware) is drawn with a band of ±1 standard deviation.
      path: output PNG.
      reference: reference curve ``(lag_ps, D m²/s)`` or a constant value (m²/s, dashed).
      title: axes title.
    """
    fig, (ax,) = _figure(figsize=(5.5, 4))
    if isinstance(reference, float | int):
        ax.axhline(reference * M2_PER_S_TO_1E9, color="black", ls="--", label="reference")
    elif reference is not None:
        ax.plot(
            np.asarray(reference[0]), np.asarray(reference[1]) * M2_PER_S_TO_1E9, **REFERENCE_STYLE
        )
    for i, (label, (t, d)) in enumerate(curves.items()):
        d = np.asarray(d, np.float64) * M2_PER_S_TO_1E9
        color = _color(label, i)
        if d.ndim == 2:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN lags
                mean, std = np.nanmean(d, axis=0), np.nanstd(d, axis=0)
            ax.fill_between(np.asarray(t), mean - std, mean + std, color=color, alpha=0.2)
            d = mean
        ax.plot(np.asarray(t), d, color=color, lw=1.6, label=label)
    ax.set_xlabel("lag time t (ps)")
    ax.set_ylabel("MSD / 6t  (10⁻⁹ m²/s)")
    ax.set_xlim(left=0)
    ax.legend()
    ax.set_title(title)
    return _save(fig, path)


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


def plot_log_log_panels(panels, path) -> pathlib.Path:
    """Side-by-side log–log panels of named curves (benchmark scaling plots).

    Panels without any curve are left out (a benchmark that measured one system has nothing to
    draw against system size). Ticks are labelled at 1, 2 and 5 times powers of ten as plain
    numbers, minor ticks unlabelled, so labels do not overlap.

    Args:
      panels: sequence of dicts with ``title``, ``xlabel``, ``ylabel`` and ``series``
        ``{label: (x [K], y [K])}``; optional ``marker`` (default ``"o-"``).
      path: PNG path.

    Raises:
      ValueError: a curve has non-positive or non-finite values (not drawable on log axes), or
        no panel has a curve.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    panels = [p for p in panels if p["series"]]
    if not panels:
        raise ValueError("plot_log_log_panels: no panel has a curve")
    fig, axes = _figure(len(panels), figsize=(5.5 * len(panels), 4.2))
    for ax, panel in zip(axes, panels, strict=True):
        for label, (x, y) in panel["series"].items():
            x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
            if x.shape != y.shape or not (
                np.all(np.isfinite(x * y)) and (x > 0).all() and (y > 0).all()
            ):
                raise ValueError(
                    f"{panel['title']!r}, curve {label!r}: log axes need positive finite x and "
                    f"y of equal length, got x {x.tolist()} and y {y.tolist()}"
                )
            ax.plot(x, y, panel.get("marker", "o-"), label=label)
        ax.set(xscale="log", yscale="log", xlabel=panel["xlabel"], ylabel=panel["ylabel"])
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FuncFormatter(_log_tick))
            axis.set_minor_formatter(NullFormatter())
        ax.set_title(panel["title"])
        ax.legend(fontsize=8)
    return _save(fig, path)


def _log_tick(value: float, _position=None) -> str:
    """``50``, ``0.2``, or ``5×10⁶`` beyond 10⁴ (and below 10⁻³)."""
    if value <= 0:
        return ""
    if 1e-3 <= value < 1e4:
        return f"{value:g}"
    exponent = int(np.floor(np.log10(value) + 1e-9))
    mantissa = value / 10.0**exponent
    head = "" if abs(mantissa - 1.0) < 1e-6 else f"{mantissa:g}\\times"
    return f"${head}10^{{{exponent}}}$"


def plot_neff(
    temperatures_kelvin,
    n_eff,
    path,
    *,
    threshold: float | None = 1000.0,
    sample_temperature_kelvin: float | None = None,
    chosen_kelvin: Sequence[float] = (),
    title: str = "Effective sample size of temperature reweighting",
) -> pathlib.Path:
    """N_eff against reweighting temperature (the paper's Fig. 8).

    See docs/method.md, Temperature transfer and N_eff.

    Args:
      temperatures_kelvin: ``[T]`` K.
      n_eff: ``[T]``.
      path: output PNG.
      threshold: minimum N_eff line (paper: 1000), or None.
      sample_temperature_kelvin: temperature of the samples (vertical line).
      chosen_kelvin: temperatures actually evaluated (markers, e.g. 350 and 700).
      title: axes title.
    """
    t, n = np.asarray(temperatures_kelvin), np.asarray(n_eff)
    fig, (ax,) = _figure(figsize=(5.5, 4))
    ax.plot(t, n, "o-", color="tab:blue", ms=3, label="N_eff")
    if threshold is not None:
        ax.axhline(threshold, color="tab:red", ls="--", label=f"N_eff = {threshold:g}")
    if sample_temperature_kelvin is not None:
        ax.axvline(
            sample_temperature_kelvin,
            color="grey",
            ls=":",
            label=f"data at {sample_temperature_kelvin:g} K",
        )
    for tc in chosen_kelvin:
        ax.scatter([tc], [np.interp(tc, t, n)], color="tab:orange", zorder=3, s=50)
        ax.annotate(
            f"{tc:g} K", (tc, np.interp(tc, t, n)), textcoords="offset points", xytext=(5, 5)
        )
    ax.set_xlabel("temperature (K)")
    ax.set_ylabel("effective sample size N_eff")
    if n.size and np.nanmax(n) > 0 and np.nanmin(n) > 0 and np.nanmax(n) / np.nanmin(n) > 100:
        ax.set_yscale("log")
    ax.legend()
    ax.set_title(title)
    return _save(fig, path)


def plot_pretraining_curve(
    records: Sequence[Mapping],
    path,
    *,
    target_force_mae: float | None = None,
    title: str = "Pretraining",
) -> pathlib.Path:
    """Validation (and training) force MAE against wall clock, learning rate on a twin axis.

    Args:
      records: pretraining ``metrics.jsonl`` records (keys ``epoch``,
        ``val_force_mae_kcal_per_mol_per_angstrom``; optional ``wall_seconds``,
        ``train_force_mae_ev_per_angstrom``, ``lr``), e.g.
        ``stabie_jax.metrics_log.read_records(...)``.
      path: output PNG.
      target_force_mae: kcal/mol/Å, drawn as a horizontal line when given.
      title: axes title (the best validation MAE and its epoch are appended).
    """
    key = "val_force_mae_kcal_per_mol_per_angstrom"
    rows = [r for r in records if r.get(key) is not None]
    if not rows:
        raise ValueError(f"plot_pretraining_curve: no records with {key!r}")
    wall = all("wall_seconds" in r for r in rows[1:])
    x = np.array([r.get("wall_seconds", 0.0) / 60.0 if wall else r["epoch"] for r in rows])
    val = np.array([r[key] for r in rows], np.float64)
    fig, (ax,) = _figure(figsize=(6.5, 4))
    ax.plot(x, val, color="tab:blue", lw=1.4, label="validation (EMA weights)")
    train = [
        (xi, r["train_force_mae_ev_per_angstrom"] * units.EV_IN_KCAL_PER_MOL)
        for xi, r in zip(x, rows, strict=True)
        if r.get("train_force_mae_ev_per_angstrom") is not None
    ]
    if train:
        tx, ty = np.array(train).T
        ax.plot(tx, ty, color="tab:blue", lw=0.8, alpha=0.5, ls=":", label="training")
    if target_force_mae is not None:
        ax.axhline(target_force_mae, color="tab:red", ls="--", lw=1.0, label="target")
    ax.set_xlabel("wall clock (min)" if wall else "epoch")
    ax.set_ylabel("force MAE (kcal/mol/Å)")
    if np.all(val > 0) and val.max() / val.min() > 10:
        ax.set_yscale("log")
    lr = [(xi, r["lr"]) for xi, r in zip(x, rows, strict=True) if r.get("lr") is not None]
    handles, labels = ax.get_legend_handles_labels()
    if lr:
        ax2 = ax.twinx()
        lx, ly = np.array(lr).T
        ax2.plot(lx, ly, color="tab:green", lw=0.8, ls="--", label="learning rate")
        ax2.set_ylabel("learning rate")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="best", fontsize=8)
    best = int(np.argmin(val))
    ax.set_title(
        f"{title}: best validation force MAE {val[best]:.3g} kcal/mol/Å "
        f"(epoch {rows[best]['epoch']})",
        fontsize=9,
    )
    return _save(fig, path)


GRADIENT_KEYS = ("obs_grad_norm", "qm_grad_norm", "update_norm", "obs_share")
"""Learning-epoch metrics drawn in the training plot's lower panel when the records have them."""


def plot_training_curve(
    records: Sequence[Mapping],
    path,
    *,
    title: str = "StABlE training",
    lr_scale: float = 1.0,
    lr_label: str = "learning rate",
) -> pathlib.Path:
    """Unstable fraction against epoch with learning phases shaded, learning rate on a twin axis;
    below it, when the records carry them, what each learning step was made of.

    The lower panel (log scale) shows, per learning epoch, the norm of the observable gradient
    and of the λ-weighted QM gradient (in the units of the hyperparameter convention, e.g. the
    authors'), and ‖Δθ‖ of the applied update; the observable share of the update
    (``⟨g_obs, g⟩/‖g‖²``, 1 = all observable, 0 = all QM) is on a twin axis.

    Args:
      records: the driver's ``metrics.jsonl`` records (keys ``epoch``, ``phase``
        ``"simulation"``/``"learning"``, ``unstable_fraction``, ``learning_rate``; optional
        ``obs_loss``, ``simulated_ps`` and the :data:`GRADIENT_KEYS`), e.g.
        ``stabie_jax.metrics_log.read_records(...)``.
      path: output PNG.
      title: axes title.
      lr_scale: factor drawn on the learning rate (e.g. back to the α the user configured when
        the driver ran a converted rate).
      lr_label: label of the learning-rate axis.
    """
    if not records:
        raise ValueError("plot_training_curve: no records (is metrics.jsonl empty?)")
    missing = [k for k in ("epoch", "phase", "unstable_fraction") if k not in records[0]]
    if missing:
        raise ValueError(f"plot_training_curve: records lack keys {missing}")
    epoch = np.array([r["epoch"] for r in records], np.float64)
    frac = np.array(
        [np.nan if r["unstable_fraction"] is None else r["unstable_fraction"] for r in records],
        np.float64,
    )
    learning = np.array([r["phase"] == "learning" for r in records])
    lr = lr_scale * np.array([r.get("learning_rate") or 0.0 for r in records], np.float64)
    steps = [r for r in records if r["phase"] == "learning" and r.get("obs_grad_norm") is not None]
    if steps:
        fig = Figure(figsize=(6.5, 6.5))
        ax, ax_g = fig.subplots(2, 1, sharex=True, gridspec_kw=dict(height_ratios=(3, 2)))
    else:
        fig, (ax,) = _figure(figsize=(6.5, 4))
    shaded = False
    start = None
    for i, on in enumerate(np.append(learning, False)):
        if on and start is None:
            start = i
        elif not on and start is not None:
            for a in (ax, ax_g) if steps else (ax,):
                a.axvspan(
                    epoch[start] - 0.5,
                    epoch[i - 1] + 0.5,
                    color="tab:orange",
                    alpha=0.15,
                    label=None if shaded or a is not ax else "learning phase",
                )
            shaded, start = True, None
    ax.plot(epoch, frac, color="tab:blue", lw=1.6, label="fraction unstable")
    ax.set_xlabel("epoch")
    ax.set_ylabel("fraction of unstable replicas")
    ax.set_ylim(-0.02, 1.02)
    ax2 = ax.twinx()
    ax2.plot(epoch, lr, color="tab:green", lw=1.0, ls="--", drawstyle="steps-mid", label=lr_label)
    ax2.set_ylabel(lr_label)
    handles = ax.get_legend_handles_labels()
    handles2 = ax2.get_legend_handles_labels()
    ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], loc="best", fontsize=8)
    if "simulated_ps" in records[-1]:
        title = f"{title} ({records[-1]['simulated_ps']:.3g} ps simulated per replica)"
    ax.set_title(title, fontsize=10)
    if steps:
        _plot_gradient_panel(ax_g, steps)
    return _save(fig, path)


def _plot_gradient_panel(ax, steps: Sequence[Mapping]) -> None:
    """Lower panel of :func:`plot_training_curve`: gradient norms, update norm, share."""
    e = np.array([r["epoch"] for r in steps], np.float64)
    # a NaN after the last step of each learning phase, so phases are not joined by a line
    cut = np.flatnonzero(np.diff(e) > 1) + 1

    def series(key):
        y = np.array([np.nan if r.get(key) is None else r[key] for r in steps], np.float64)
        return np.insert(y, cut, np.nan)

    e = np.insert(e, cut, np.nan)

    styles = {
        "obs_grad_norm": ("tab:red", "-", "‖∇L_obs‖"),
        "qm_grad_norm": ("tab:purple", "-", "‖λ∇L_QM‖"),
        "update_norm": ("black", ":", "‖Δθ‖ applied"),
    }
    for key, (color, ls, label) in styles.items():
        y = series(key)
        positive = np.where(y > 0, y, np.nan)
        if _finite(positive):
            ax.plot(e, positive, color=color, ls=ls, lw=1.2, marker=".", ms=3, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("norm (convention units)")
    share = series("obs_share")
    lines, labels = ax.get_legend_handles_labels()
    if _finite(share):
        ax_s = ax.twinx()
        ax_s.plot(e, share, color="tab:olive", lw=1.0, marker="x", ms=3, label="observable share")
        ax_s.set_ylabel("observable share of the step")
        ax_s.set_ylim(min(-0.05, np.nanmin(share) - 0.05), max(1.05, np.nanmax(share) + 0.05))
        more = ax_s.get_legend_handles_labels()
        lines, labels = lines + more[0], labels + more[1]
    ax.legend(lines, labels, loc="best", fontsize=7, ncol=2)
