"""Benchmark scaling figures: side-by-side log–log panels with plainly labelled ticks."""

from __future__ import annotations

import pathlib

import numpy as np

from stabie_jax.evaluation.plots._style import _figure, _save

__all__ = ["plot_log_log_panels"]


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
