"""Shared look of the figures: the paper's colours, the reference style, pyplot-free Agg
figures and PNG output.

Private to :mod:`stabie_jax.evaluation.plots`; the figure modules draw with these helpers so
that every PNG has the same colours, resolution and save checks.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
from matplotlib.figure import Figure

__all__ = ["COLORS", "DPI", "REFERENCE_STYLE"]

REFERENCE_STYLE = dict(color="black", lw=1.6, label="reference")
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
DPI = 150


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
