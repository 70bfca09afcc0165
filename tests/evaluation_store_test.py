"""Evaluation results survive a save/load round trip; stale or corrupt stores are ignored."""

from __future__ import annotations

import numpy as np
import pytest

from stabie_jax import evaluation as ev
from stabie_jax.evaluation import store


def _result(seed: int = 0) -> ev.StabilityResult:
    rng = np.random.default_rng(seed)
    fields = dict.fromkeys(ev.StabilityResult._fields)
    fields.update(
        stable_time_ps=rng.uniform(0, 5, 6),
        censored=rng.uniform(size=6) > 0.5,
        times_ps=np.linspace(0, 5, 11),
        fraction_unstable=np.sort(rng.uniform(size=11)),
        median_stable_time_ps=2.5,
        mean_stable_time_ps=float("nan"),
        simulated_ps=5.0,
        chunk_ps=0.5,
        stopped_early=False,
        temperature_kelvin=500.0,
        initial_momenta=rng.normal(size=(6, 3, 3)).astype(np.float32),
        observables={"h_of_r": rng.uniform(size=7)},
        observables_per_replica={"h_of_r": rng.uniform(size=(6, 7))},
        observable_frames=np.arange(6),
    )
    return ev.StabilityResult(**fields)


def _assert_same(a, b):
    for field in ev.StabilityResult._fields:
        x, y = getattr(a, field), getattr(b, field)
        if isinstance(x, dict):
            assert set(x) == set(y)
            for k in x:
                np.testing.assert_array_equal(x[k], y[k])
        elif x is None:
            assert y is None
        else:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
            assert np.asarray(x).dtype == np.asarray(y).dtype or np.ndim(x) == 0


def test_round_trip_with_nested_transfer_results(tmp_path):
    result = _result(0)
    transfer = {
        "700K": ev.TemperatureTransferResult(
            temperature_kelvin=700.0,
            stability=_result(1),
            h_of_r_reference=np.ones(7),
            n_eff=123.5,
            h_of_r_errors={"mae": 0.25},
        )
    }
    fp = store.fingerprint({"protocol": {"ps": 5.0, "temps": (350.0, 700.0)}, "params": "abc"})
    store.save_result(tmp_path / "m", (result, transfer), fp, extra={"note": [1, 2]})
    (loaded, loaded_transfer), extra = store.load_result(tmp_path / "m", fp)
    _assert_same(result, loaded)
    _assert_same(transfer["700K"].stability, loaded_transfer["700K"].stability)
    assert loaded_transfer["700K"].n_eff == 123.5
    assert loaded_transfer["700K"].h_of_r_errors == {"mae": 0.25}
    assert extra == {"note": [1, 2]}


def test_stale_missing_and_corrupt_stores_are_ignored(tmp_path):
    fp = store.fingerprint({"params": "abc"})
    assert store.load_result(tmp_path / "absent", fp) is None
    store.save_result(tmp_path / "m", (_result(), {}), fp)
    assert store.load_result(tmp_path / "m", store.fingerprint({"params": "abd"})) is None
    (tmp_path / "m" / "result.npz").write_bytes(b"not a zip file")
    assert store.load_result(tmp_path / "m", fp) is None
    # Torn writes (a zip cut short, a JSON cut short) are recomputed, not a crash.
    store.save_result(tmp_path / "t", (_result(), {}), fp)
    assert store.load_result(tmp_path / "t", fp) is not None
    npz = tmp_path / "t" / "result.npz"
    whole = npz.read_bytes()
    assert whole[:2] == b"PK"  # a real zip, so the cut copy reaches zipfile (BadZipFile)
    npz.write_bytes(whole[: len(whole) // 2])
    assert store.load_result(tmp_path / "t", fp) is None
    store.save_result(tmp_path / "j", (_result(), {}), fp)
    layout = tmp_path / "j" / "result.json"
    layout.write_text(layout.read_text()[:40])
    assert store.load_result(tmp_path / "j", fp) is None


def test_a_kill_between_the_two_files_never_pairs_old_layout_with_new_arrays(tmp_path, monkeypatch):
    fp = store.fingerprint({"params": "abc"})
    store.save_result(tmp_path / "m", (_result(), {}), fp)
    first = store.load_result(tmp_path / "m", fp)[0]
    # New, valid arrays under the old layout (an older writer killed between the two
    # replaces): the recorded checksum no longer matches, so the store is recomputed.
    other = {"r": np.arange(3.0)}
    np.savez(tmp_path / "m" / "result.npz", **other)
    assert store.load_result(tmp_path / "m", fp) is None
    # The writer removes the old layout first: killed before the new one lands, nothing loads.
    store.save_result(tmp_path / "m", (_result(), {}), fp)
    real_replace = store.os.replace

    def killed_at_the_layout(src, dst):
        if str(dst).endswith("result.json"):
            raise KeyboardInterrupt("killed")
        real_replace(src, dst)

    monkeypatch.setattr(store.os, "replace", killed_at_the_layout)
    with pytest.raises(KeyboardInterrupt):
        store.save_result(tmp_path / "m", (_result(), {}), fp)
    monkeypatch.undo()
    assert store.load_result(tmp_path / "m", fp) is None
    store.save_result(tmp_path / "m", (_result(), {}), fp)
    again = store.load_result(tmp_path / "m", fp)[0]
    assert np.array_equal(again[0].stable_time_ps, first[0].stable_time_ps)


def test_fingerprint_is_order_independent_and_sensitive():
    a = store.fingerprint({"x": 1, "y": [1.0, 2.0]})
    assert a == store.fingerprint({"y": (1.0, 2.0), "x": 1})
    assert a != store.fingerprint({"x": 1, "y": [1.0, 2.0000001]})
