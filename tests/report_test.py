"""Tests of stabie_jax.evaluation.report:
JSON-safe conversion, report.json round trip, report.md tables."""

from __future__ import annotations

import json
import math
import time
from typing import NamedTuple

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from stabie_jax.evaluation import report


class Pair(NamedTuple):
    a: float
    b: np.ndarray


def test_to_jsonable_types():
    out = report.to_jsonable(
        {
            "f32": np.float32(1.5),
            "i64": np.int64(3),
            "bool": np.bool_(True),
            "nan": float("nan"),
            "inf": np.inf,
            "arr": np.array([1.0, np.nan, -np.inf, 2.0]),
            "jax": jnp.arange(3),
            "nt": Pair(0.25, np.eye(2)),
            "tuple": (1, 2.5),
            "cfg": ml_collections.ConfigDict({"lr": 1e-3, "nested": {"n": 2}}),
            7: "int key",
        }
    )
    assert out["f32"] == 1.5 and type(out["f32"]) is float
    assert out["i64"] == 3 and type(out["i64"]) is int
    assert out["bool"] is True
    assert out["nan"] is None and out["inf"] is None
    assert out["arr"] == [1.0, None, None, 2.0]
    assert out["jax"] == [0, 1, 2]
    assert out["nt"] == {"a": 0.25, "b": [[1.0, 0.0], [0.0, 1.0]]}
    assert out["tuple"] == [1, 2.5]
    assert out["cfg"] == {"lr": 1e-3, "nested": {"n": 2}}
    assert out["7"] == "int key"
    json.dumps(out, allow_nan=False)
    with pytest.raises(TypeError, match="cannot convert"):
        report.to_jsonable(object())


def test_timed_accumulates():
    timings = {}
    with report.timed(timings, "stage"):
        time.sleep(0.02)
    with report.timed(timings, "stage"):
        time.sleep(0.02)
    assert 0.035 < timings["stage"] < 1.0


def test_write_report_round_trip(tmp_path):
    png = tmp_path / "plots" / "unstable.png"
    png.parent.mkdir()
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    results = {
        "stability": {
            "baseline": {"median_stable_time_ps": np.float64(35.0), "n_censored": np.int64(0)},
            "stabie": {"median_stable_time_ps": 140.0, "n_censored": 12, "extra": float("nan")},
        },
        "qm_test": {"energy_mae_kcal_per_mol": {"baseline": 0.87, "stabie": 1.4}},
        "curve": {"times_ps": np.arange(20.0), "fraction": np.linspace(0, 1, 20)},
        "seed": 0,
    }
    config = ml_collections.ConfigDict({"model": {"cutoff_angstrom": 5.0}, "n_replicas": 256})
    json_path, md_path = report.write_report(
        tmp_path,
        title="aspirin test",
        results=results,
        config=config,
        wall_clock_seconds={"pretrain": 12.5, "evaluate": np.float32(3.0)},
        plots={"fraction unstable": png},
        notes=["reduced scale"],
        command="python -m experiments.aspirin",
    )
    loaded = report.read_report(tmp_path)
    assert json.loads(json_path.read_text()) == loaded
    assert loaded["results"]["stability"]["baseline"]["median_stable_time_ps"] == 35.0
    assert loaded["results"]["stability"]["stabie"]["extra"] is None
    np.testing.assert_allclose(loaded["results"]["curve"]["fraction"], np.linspace(0, 1, 20))
    assert loaded["config"] == {"model": {"cutoff_angstrom": 5.0}, "n_replicas": 256}
    assert loaded["wall_clock_seconds"] == {"pretrain": 12.5, "evaluate": 3.0}
    assert loaded["plots"] == {"fraction unstable": "plots/unstable.png"}
    versions = loaded["versions"]
    for name in ("python", "jax", "jaxlib", "jax-md", "flax", "optax", "e3nn-jax", "numpy"):
        assert versions[name], name
    import jax

    assert versions["jax"] == jax.__version__ and versions["numpy"] == np.__version__
    hw = loaded["hardware"]
    assert hw["cpu_model"] and hw["cpu_count"] >= 1
    assert len(hw["devices"]) == len(jax.devices())
    assert "NaN" not in json_path.read_text()

    md = md_path.read_text()
    assert md.startswith("# aspirin test")
    assert "| quantity | baseline | stabie |" in md
    assert "| median_stable_time_ps | 35 | 140 |" in md
    assert "| extra | – | – |" in md  # missing for baseline, NaN for stabie
    assert "| quantity | energy_mae_kcal_per_mol |" in md  # mapping of mappings: columns
    assert "| baseline | 0.87 |" in md
    assert "[20 values, see report.json]" in md
    assert "![fraction unstable](plots/unstable.png)" in md
    assert (tmp_path / "plots/unstable.png").exists()
    assert "| pretrain | 12.5 |" in md
    assert "| jax | " + jax.__version__ + " |" in md
    assert "> reduced scale" in md
    assert "| model.cutoff_angstrom | 5 |" in md


def test_read_report_missing(tmp_path):
    with pytest.raises(ValueError, match="no report.json"):
        report.read_report(tmp_path)


def test_markdown_of_stability_summary():
    """A real StabilityResult.summary() renders (numbers formatted to 4 significant digits)."""
    rep = {"title": "t", "results": {"s": {"x": math.pi, "flag": True, "n": None}}}
    md = report.markdown_report(rep)
    assert "| x | 3.142 |" in md and "| flag | yes |" in md and "| n | – |" in md
