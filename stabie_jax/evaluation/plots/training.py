"""Training figures: the pretraining learning curve and the StABlE training curve (unstable
fraction, learning phases, learning rate and the make-up of each learning step).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from stabie_jax import units
from stabie_jax.evaluation.plots._style import _figure, _finite, _save

__all__ = ["GRADIENT_KEYS", "plot_pretraining_curve", "plot_training_curve"]


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
