"""The Observable registry: the built-ins against their functions, and adding a new observable."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import custom
from experiments.configs import custom as custom_config
from stabie_jax import md, observables


def _system(**kw):
    base = dict(
        atomic_numbers=np.array([8, 1, 1, 8, 1, 1]),
        reference_positions=np.zeros((1, 6, 3)),
        temperature_kelvin=300.0,
    )
    return observables.ObservableSystem(**{**base, **kw})


def test_builtins_are_registered_and_unknown_names_are_refused():
    assert observables.names(trainable=True) == ("bond_lengths", "h_of_r", "rdf")
    assert observables.names(trainable=False) == ("msd", "vacf")
    with pytest.raises(ValueError, match=r"config.observable.kind = 'g_of_x'.*one of"):
        observables.get("g_of_x")
    with pytest.raises(ValueError, match="'msd' is an evaluation-only observable"):
        observables.get("msd", trainable=True)
    with pytest.raises(ValueError, match="already registered"):
        observables.register(observables.get("rdf"))


def test_h_of_r_is_the_papers_h_of_r_and_its_reference():
    rng = np.random.default_rng(0)
    frames = rng.normal(size=(30, 5, 3)) * 1.5
    energies = rng.normal(size=30) * 0.05
    options = {"r_max_angstrom": 6.0, "n_bins": 60, "sigma_angstrom": 0.05}
    system = observables.ObservableSystem(
        np.ones(5, int), frames, 700.0, energies, reference_temperature_kelvin=500.0
    )
    built = observables.get("h_of_r").build(system, options)
    np.testing.assert_allclose(
        built.reference,
        observables.h_of_r_reference_at(frames, energies, 700.0, 500.0, r_max=6.0, n_bins=60),
    )
    np.testing.assert_allclose(
        built.frame_fn(jnp.asarray(frames[0])),
        observables.h_of_r(jnp.asarray(frames[0]), r_max=6.0, n_bins=60, sigma=0.05),
    )
    np.testing.assert_allclose(built.grid, observables.h_of_r_centers(6.0, 60))
    shifted = built.reference + 0.5
    assert built.error_fn(shifted, built.reference)["mae"] == pytest.approx(0.5)
    assert built.size == 60 and built.estimator == "global"
    with pytest.raises(ValueError, match="'h_of_r' is a free-space observable"):
        observables.get("h_of_r").build(system._replace(box=np.full(3, 10.0)), options)


def test_rdf_concatenates_the_element_pairs_and_scores_each_pair():
    rng = np.random.default_rng(1)
    box = np.full(3, 8.0)
    frames = rng.uniform(0, 8.0, size=(4, 6, 3))
    system = _system(reference_positions=frames, box=box)
    built = observables.get("rdf").build(system, {"rdf_r_max_angstrom": 3.5, "rdf_n_bins": 7})
    z = system.atomic_numbers
    pairs = ((8, 8), (8, 1), (1, 1))
    direct = [
        np.concatenate([observables.rdf(jnp.asarray(f), z, p, box, 3.5, 7) for p in pairs])
        for f in frames
    ]
    np.testing.assert_allclose(built.reference, np.mean(direct, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(built.frame_fn(jnp.asarray(frames[2])), direct[2], rtol=1e-5)
    # An offset of 0.2 in the O-H block only: that pair's RDF-MAE is r_max * 0.2.
    value = built.reference.copy()
    value[7:14] += 0.2
    err = built.error_fn(value, built.reference)
    assert err["rdf_8_1"]["rdf_mae"] == pytest.approx(3.5 * 0.2)
    assert err["rdf_8_8"]["mae"] == 0.0 and err["max_rdf_mae"] == pytest.approx(0.7)
    with pytest.raises(ValueError, match="'rdf' needs a periodic cell"):
        observables.get("rdf").build(system._replace(box=None), {})


def test_bond_lengths_reference_is_the_mean_lengths_under_the_minimum_image():
    box = np.full(3, 10.0)
    space = md.periodic_space(box)
    # Two waters with O-H lengths 0.9/1.1 and 1.0/1.0 Å; the second one wraps across the box.
    frame = np.array(
        [[1, 1, 1], [1.9, 1, 1], [1, 2.1, 1], [9.5, 5, 5], [0.5, 5, 5], [9.5, 6, 5]], float
    )
    hood = np.array([[0, 1, 2], [3, 4, 5]])
    system = _system(
        reference_positions=frame[None],
        box=box,
        displacement_fn=space.displacement_fn,
        neighbourhoods=hood,
    )
    built = observables.get("bond_lengths").build(system, {})
    np.testing.assert_allclose(built.reference, [0.95, 1.05], rtol=1e-6)
    np.testing.assert_allclose(
        built.frame_fn(jnp.asarray(frame)), [[0.9, 1.1], [1.0, 1.0]], rtol=1e-6
    )
    assert built.estimator == "localized" and built.size == 2
    assert built.error_fn(built.frame_fn(jnp.asarray(frame)), built.reference)["mae"] < 1e-6
    with pytest.raises(ValueError, match="'bond_lengths' needs identical molecules"):
        observables.get("bond_lengths").build(system._replace(neighbourhoods=None), {})


def test_vacf_and_msd_are_trajectory_observables_with_independent_references():
    # C(τ) = mean_t0 v(t0)·v(t0+τ) / mean_t0 v(t0)·v(t0) over the T − window + 1 origins, in numpy.
    velocities = np.random.default_rng(2).normal(size=(60, 2, 3)).cumsum(axis=0)
    system = _system(reference_velocities=velocities, frame_interval_fs=0.5)
    vacf = observables.get("vacf").build(system, {"vacf_window": 20})
    assert vacf.frame_fn is None and vacf.grid[1] == pytest.approx(0.5e-3)
    n0 = 60 - 20 + 1
    c = [np.mean(np.sum(velocities[:n0] * velocities[k : k + n0], -1)) for k in range(20)]
    np.testing.assert_allclose(vacf.reference, np.array(c) / c[0], rtol=1e-4)
    assert observables.get("vacf").build(_system(), {}).reference is None
    # Two atoms moving apart at ±v: the centre of mass stays, MSD(τ) = (vτ)².
    v = 0.01
    x = np.zeros((50, 2, 3))
    x[:, 0, 0], x[:, 1, 0] = v * np.arange(50), -v * np.arange(50)
    system = _system(atomic_numbers=np.array([1, 1]), reference_positions=x, frame_interval_fs=1.0)
    msd = observables.get("msd").build(system, {"msd_max_lag": 10})
    np.testing.assert_allclose(msd.reference, (v * np.arange(11)) ** 2, rtol=1e-5, atol=1e-9)
    assert msd.error_fn(msd.reference + 1e-3, msd.reference)["mae"] == pytest.approx(1e-3)


def test_a_new_observable_is_one_module_and_one_register_call(tmp_path):
    """The radius of gyration, registered here and nowhere else, is trained on and evaluated."""
    traced = []

    def build(system, options):
        def radius(positions):  # [N, 3] -> [1], Å
            traced.append(1)  # runs when the loss is traced: the pipeline used this function
            d = positions - positions.mean(axis=0)
            return jnp.sqrt(jnp.mean(jnp.sum(d**2, axis=-1)))[None]

        ref = np.asarray(jnp.mean(jax.vmap(radius)(system.reference_positions), axis=0))
        offset = float(options["offset_angstrom"])
        return observables.BuiltObservable(
            name="radius_of_gyration",
            label="R_g (Å)",
            grid=np.zeros(1),
            grid_label="",
            reference=ref + offset,
            frame_fn=radius,
            error_fn=observables.mean_absolute_error,
        )

    observables.register(observables.Observable("radius_of_gyration", "R_g", build))
    try:
        config = custom_config.get_config("smoke")
        config.progress = False
        config.data.source = "builtin:aspirin_xtb_500K"
        config.pretrain.overrides.max_epochs = 1
        config.observable.kind = "radius_of_gyration"
        config.observable.offset_angstrom = 100.0  # an option of this observable only
        config.stabie.bond_deviation_angstrom = 0.01  # every replica fails: a learning epoch
        config.stabie.max_epochs = 2
        config.stabie.max_learning_epochs = 1
        config.evaluate.transfer_temperatures_kelvin = ()
        custom.run(config, tmp_path / "run")
    finally:
        observables.unregister("radius_of_gyration")
    rows = [json.loads(line) for line in (tmp_path / "run" / "stabie" / "metrics.jsonl").open()]
    losses = [r["obs_loss"] for r in rows if "obs_loss" in r]
    assert traced, "the registered observable was never traced into the StABlE loss"
    assert losses, "no learning epoch ran: the test did not exercise the observable loss"
    # L_obs = (<R_g> - R_g,ref - 100 Å)²: aspirin's R_g moves by far less than 20 Å.
    assert all(80.0**2 < v < 120.0**2 for v in losses), losses
    # The evaluation scores both models on it too (|<R_g> - R_g,ref - 100 Å|), beside h(r).
    report = json.loads((tmp_path / "run" / "evaluate" / "report.json").read_text())
    for model in ("baseline", "StABlE"):
        details = report["results"]["details"][model]
        assert 80.0 < details["radius_of_gyration"]["mae"] < 120.0
        assert np.isfinite(details["h_of_r"]["mae"])
