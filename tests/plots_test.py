"""Tests of stabie_jax.evaluation.plots:
every figure is a real, non-trivial PNG written by matplotlib."""

from __future__ import annotations

import struct

import matplotlib.image
import numpy as np
import pytest

from stabie_jax.evaluation import plots
from stabie_jax.evaluation.plots import _style, observables, scaling, stability, training

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_png(path, min_bytes=5_000):
    """PNG signature, plausible size, decodable, and not a blank canvas."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > min_bytes
    width, height = struct.unpack(">II", data[16:24])
    assert width > 300 and height > 200
    img = matplotlib.image.imread(path)
    assert img.shape[:2] == (height, width)
    assert np.std(img[..., :3]) > 0.02  # something was drawn
    return img


@pytest.fixture
def figures(monkeypatch):
    """The matplotlib figures the plot functions save, for checks on their axes."""
    figures = []
    real_save = _style._save

    def keep(fig, path):
        figures.append(fig)
        return real_save(fig, path)

    for module in (observables, scaling, stability, training):  # each imported _save
        monkeypatch.setattr(module, "_save", keep)
    return figures


def test_fraction_unstable(tmp_path):
    t = np.linspace(0, 300, 301)
    out = plots.plot_fraction_unstable(
        {"baseline": (t, 1 - np.exp(-t / 35)), "StABlE": (t, 1 - np.exp(-t / 140))},
        tmp_path / "sub" / "unstable.png",
    )
    assert out == tmp_path / "sub" / "unstable.png"
    check_png(out)


def test_fraction_unstable_axis_fits_small_fractions_and_shows_bands(tmp_path, figures):
    """8 % vs 2 % is not squashed into a 0-1 axis; the subtitle names replicas and criterion."""
    t = np.linspace(0, 10, 11)
    f0, f1 = np.minimum(0.01 * t, 0.08), np.minimum(0.002 * t, 0.02)
    plots.plot_fraction_unstable(
        {"baseline": (t, f0), "StABlE": (t, f1)},
        tmp_path / "u.png",
        n_replicas=64,
        criterion="a bond length deviates by > 0.5 Å",
    )
    (ax,) = figures[0].axes
    lo, hi = plots.wilson_interval(f0, 64)
    assert ax.get_ylim()[1] == pytest.approx(1.1 * hi.max())  # the band's top, not 1
    assert ax.get_ylim()[1] < 0.3
    assert "64 replicas" in ax.get_title() and "0.5 Å" in ax.get_title()
    assert len(ax.collections) == 2  # one band per curve
    check_png(tmp_path / "u.png")


def test_wilson_interval_matches_scipy():
    from scipy.stats import binomtest

    for k, n in ((0, 64), (5, 64), (32, 64), (64, 64), (3, 8)):
        lo, hi = plots.wilson_interval(np.array([k / n]), n)
        ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert (lo[0], hi[0]) == pytest.approx((ci.low, ci.high), abs=1e-6)


def test_h_of_r_with_inset_and_nan_curve(tmp_path):
    r = np.linspace(1e-6, 10, 500)
    ref = np.exp(-((r - 1.4) ** 2) / 0.01) + 0.5 * np.exp(-((r - 2.5) ** 2) / 0.05)
    ref = 100 * ref / ref.sum()
    curves = {"baseline": ref * 1.05, "StABlE": ref * 0.99, "empty": np.full(500, np.nan)}
    with_inset = check_png(plots.plot_h_of_r(r, ref, curves, tmp_path / "h.png"))
    without = check_png(plots.plot_h_of_r(r, ref, curves, tmp_path / "h2.png", inset=False))
    assert with_inset.shape == without.shape
    assert not np.allclose(with_inset, without)  # the inset is drawn


def test_vacf_rdfs_diffusivity(tmp_path):
    lag = np.arange(100) * 0.5
    c = np.cos(lag / 5) * np.exp(-lag / 20)
    check_png(
        plots.plot_vacf(lag, {"baseline": c, "StABlE": c * 0.9}, tmp_path / "v.png", reference=c)
    )
    r = np.linspace(0.006, 6, 500)
    g = 1 + np.exp(-r) * np.sin(3 * r)
    names = ["rdf_8_8", "rdf_8_1", "rdf_1_1"]
    ref = {n: g for n in names}
    img = check_png(
        plots.plot_element_rdfs(
            r,
            ref,
            {"StABlE": {n: g * 1.1 for n in names}},
            tmp_path / "rdf.png",
            titles={"rdf_8_8": "O–O"},
        )
    )
    assert img.shape[1] > 2 * img.shape[0]  # three panels side by side
    t = np.arange(101) * 1.0
    d = np.full((3, 101), 2.3e-9)
    d[:, 0] = np.nan
    d[2, 50:] = np.nan
    check_png(
        plots.plot_diffusivity_convergence(
            {"StABlE": (t, d), "baseline": (t, d[0] * 2)}, tmp_path / "d.png", reference=2.3e-9
        )
    )
    check_png(
        plots.plot_diffusivity_convergence(
            {"StABlE": (t, d[0])}, tmp_path / "d2.png", reference=(t, d[1])
        )
    )


def test_pareto_and_neff(tmp_path):
    check_png(
        plots.plot_pareto_front(
            [1.0, 2.0, 1.5, 3.0],
            [10, 30, 5, 30],
            tmp_path / "p.png",
            labels=["a", "b", "c", "d"],
            baseline=(0.9, 4.0),
        )
    )
    t = np.linspace(300, 800, 51)
    n = 10_000 * np.exp(-(((t - 500) / 150) ** 2))
    check_png(
        plots.plot_neff(
            t, n, tmp_path / "n.png", sample_temperature_kelvin=500, chosen_kelvin=(350, 700)
        )
    )


def test_training_curve_from_metrics_records(tmp_path):
    from stabie_jax import metrics_log

    path = tmp_path / "metrics.jsonl"
    for epoch in range(1, 41):
        learning = 15 <= epoch < 25
        metrics_log.append_record(
            path,
            {
                "epoch": epoch,
                "phase": "learning" if learning else "simulation",
                "unstable_fraction": min(epoch / 20, 0.8)
                if not learning
                else 0.8 - 0.05 * (epoch - 15),
                "learning_rate": 1e-3 if learning else 0.0,
                "obs_loss": 0.1 if learning else None,
                "simulated_ps": epoch * 1.0,
            },
        )
    out = plots.plot_training_curve(metrics_log.read_records(path), tmp_path / "train.png")
    img = check_png(out)
    # The learning phase is shaded orange: some pixels are orange-tinted.
    rgb = img[..., :3]
    tinted = (rgb[..., 0] > 0.95) & (rgb[..., 2] < 0.93) & (rgb[..., 1] > 0.85)
    assert tinted.sum() > 1000
    with pytest.raises(ValueError, match="no records"):
        plots.plot_training_curve([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="lack keys"):
        plots.plot_training_curve([{"epoch": 1}], tmp_path / "x.png")


def test_training_curve_shows_the_configured_rate_and_the_simulated_time(tmp_path, figures):
    records = [
        {"epoch": e, "phase": "learning", "unstable_fraction": 0.5, "learning_rate": 4e-5,
         "simulated_ps": 0.3 * e}
        for e in (1, 2)
    ]  # fmt: skip
    plots.plot_training_curve(records, tmp_path / "t.png", lr_scale=25.0, lr_label="α (authors)")
    ax, ax2 = figures[0].axes
    (line,) = ax2.get_lines()
    np.testing.assert_allclose(line.get_ydata(), 1e-3)  # 25 × 4e-5: the α the user set
    assert ax2.get_ylabel() == "α (authors)"
    assert "0.6 ps simulated" in ax.get_title()  # not "1 ps" (was rounded to integers)


def test_training_curve_draws_the_learning_steps_gradient_panel(tmp_path):
    records = []
    for epoch in range(1, 31):
        learning = epoch >= 10
        rec = {
            "epoch": epoch,
            "phase": "learning" if learning else "simulation",
            "unstable_fraction": 0.8 if not learning else 0.8 - 0.02 * (epoch - 10),
            "learning_rate": 1e-3 if learning else 0.0,
        }
        if learning:
            rec.update(
                obs_grad_norm=30.0 + epoch, qm_grad_norm=4.0, update_norm=1e-3, obs_share=0.95
            )
        records.append(rec)
    plain = check_png(
        plots.plot_training_curve(
            [{k: v for k, v in r.items() if k not in plots.GRADIENT_KEYS} for r in records],
            tmp_path / "plain.png",
        )
    )
    full = check_png(plots.plot_training_curve(records, tmp_path / "full.png"))
    assert full.shape[0] > 1.4 * plain.shape[0]  # a second panel below
    rgb = full[..., :3]
    red = (rgb[..., 0] > 0.7) & (rgb[..., 1] < 0.3) & (rgb[..., 2] < 0.3)  # tab:red obs norm
    purple = (rgb[..., 0] > 0.5) & (rgb[..., 1] < 0.5) & (rgb[..., 2] > 0.65)  # tab:purple QM
    assert red[full.shape[0] // 2 :].sum() > 50 and not red[: plain.shape[0] // 2].any()
    assert purple[full.shape[0] // 2 :].sum() > 50


def test_every_model_in_a_comparison_gets_its_own_colour():
    labels = ["baseline", "StABlE", "authors_StABlE", "ours_StABlE"]
    colours = [_style._color(label, i) for i, label in enumerate(labels)]
    assert colours[:2] == ["tab:blue", "tab:orange"]  # the paper's pair
    assert len(set(colours)) == len(labels)


def test_log_log_panels_draw_positive_curves_and_reject_non_positive(tmp_path):
    panel = dict(title="t", xlabel="R", ylabel="atom-steps/s", series={"a": ([1, 8], [5e3, 2e4])})
    path = plots.plot_log_log_panels([panel, {**panel, "marker": "s-"}], tmp_path / "s.png")
    assert path.stat().st_size > 1000
    bad = {**panel, "series": {"a": ([1, 8], [5e3, 0.0])}}  # zero cannot go on a log axis
    with pytest.raises(ValueError, match="curve 'a'"):
        plots.plot_log_log_panels([bad], tmp_path / "bad.png")


def test_log_log_panels_leave_out_empty_panels_and_label_ticks_plainly(tmp_path, figures):
    full = dict(title="t", xlabel="N", ylabel="s", series={"a": ([40, 160, 640], [0.2, 0.9, 5])})
    empty = dict(title="by size", xlabel="atoms", ylabel="s", series={})
    plots.plot_log_log_panels([full, empty], tmp_path / "p.png")
    (ax,) = figures[0].axes  # the empty panel is not drawn
    figures[0].canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
    assert "100" in labels and "200" in labels and "500" in labels, labels
    assert not any("times" in s or "^" in s for s in labels)  # no 3×10² style minor labels
    with pytest.raises(ValueError, match="no panel has a curve"):
        plots.plot_log_log_panels([empty], tmp_path / "e.png")
