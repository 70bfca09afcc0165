"""Tests of the benchmarks' shared harness (collected with the project's tests)."""

from __future__ import annotations

import re

import harness
import jax
import jax.numpy as jnp
import numpy as np

ASPIRIN = {1: 8, 6: 9, 8: 4}  # C9H8O4


def test_header_says_when_where_and_with_what():
    lines = harness.environment_lines(["benchmarks/x.py", "--label", "a b"], extra="X")
    text = "\n".join(lines)
    assert len(lines) == 5 and all(line.startswith("- ") for line in lines)
    assert re.search(r"^- date: \d{4}-\d\d-\d\d \d\d:\d\d UTC$", lines[0])
    assert lines[1] == "- command: `python benchmarks/x.py --label 'a b'`"
    assert "logical CPUs" in lines[2] and lines[2].endswith("; X")
    assert f"JAX backend: {jax.default_backend()}" in text
    assert f"jax {jax.__version__}" in lines[4] and "numpy" in lines[4]
    assert "not installed" not in text
    assert "no_such_package" not in harness.versions(("jax", "no_such_package"))
    assert harness.environment_lines("my command")[1] == "- command: `my command`"


def test_aspirin_geometry_staged_and_synthetic(monkeypatch, tmp_path):
    for shared in (harness.SHARED, tmp_path):  # the staged frame (if present), the stand-in
        monkeypatch.setattr(harness, "SHARED", shared)
        positions, z, source = harness.aspirin_geometry()
        assert positions.shape == (21, 3) and positions.dtype == np.float32
        assert dict(zip(*np.unique(z, return_counts=True), strict=True)) == ASPIRIN
        d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)[np.triu_indices(21, 1)]
        assert d.min() > 0.8, source  # no overlapping atoms
    assert source == "synthetic"


def test_paper_schnet_and_overrides():
    model = harness.paper_schnet()
    for key, value in harness.PAPER_SCHNET.items():
        assert getattr(model, key) == value
    assert harness.paper_schnet(undirected_edges=True).undirected_edges is True
    assert harness.paper_schnet(cutoff=4.0).cutoff == 4.0


def test_time_call_waits_for_every_call():
    calls = []

    def fn(x):
        calls.append(1)
        return jnp.sin(x)

    out = harness.time_call(fn, jnp.ones(3), repeats=4)
    assert len(calls) == 5  # one first call (compilation) + 4 timed ones
    assert 0.0 <= out["best_s"] <= out["median_s"] and out["first_s"] >= 0.0
