"""Observable figures: h(r) with a difference inset, VACF, element RDFs, diffusivity
convergence and N_eff of temperature reweighting, each against its reference.
"""

from __future__ import annotations

import pathlib
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from stabie_jax.evaluation.plots._style import REFERENCE_STYLE, _color, _figure, _finite, _save

__all__ = [
    "M2_PER_S_TO_1E9",
    "plot_diffusivity_convergence",
    "plot_element_rdfs",
    "plot_h_of_r",
    "plot_neff",
    "plot_vacf",
]

M2_PER_S_TO_1E9 = 1e9
"""Plot diffusivities in units of 10⁻⁹ m²/s (the paper's)."""


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
