"""Observables against analytic results (stabie_jax.observables)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stabie_jax import observables as obs
from stabie_jax import units
from stabie_jax.md import free_space, make_simulator


def test_h_of_r_dimer_peak_and_normalisation():
    pos = jnp.array([[[0.0, 0, 0], [2.0, 0, 0]], [[0.0, 0, 0], [0, 3.5, 0]]])
    h = obs.h_of_r(pos, r_max=10.0, n_bins=500)
    centers = obs.h_of_r_centers(10.0, 500)
    np.testing.assert_allclose(np.asarray(h.sum(-1)), 100.0, rtol=1e-5)
    assert centers[int(jnp.argmax(h[0]))] == pytest.approx(2.0, abs=0.02)
    assert centers[int(jnp.argmax(h[1]))] == pytest.approx(3.5, abs=0.02)
    # Width: the Gaussian with sigma 0.01 Å spans ~1 bin (0.02 Å) on each side only.
    assert float(h[0][jnp.abs(centers - 2.0) > 0.1].sum()) < 1e-6


def test_h_of_r_smeared_matches_reference_histogram():
    """Smeared per-frame h(r) averaged over frames ≈ histogram reference (same grid)."""
    key = jax.random.PRNGKey(0)
    pos = 3.0 * jax.random.uniform(key, (200, 8, 3))
    h = jnp.mean(obs.h_of_r(pos, r_max=6.0, n_bins=60, sigma=0.05), axis=0)
    ref = obs.h_of_r_reference(pos, r_max=6.0, n_bins=60)
    assert float(ref.sum()) == pytest.approx(100.0, rel=1e-5)
    assert float(ref[0]) == 0.0
    # Both describe the same distances: their mean distance equals the exact mean pair
    # distance (the reference's bins [e_i, e_i+1] are half a bin off the smeared centres).
    d = np.asarray(obs.pair_distances(pos)).ravel()
    centers = obs.h_of_r_centers(6.0, 60)
    edges = np.linspace(obs.H_OF_R_MIN, 6.0, 61)
    mid = 0.5 * (edges[1:] + edges[:-1])
    assert float(np.sum(centers * np.asarray(h)) / 100) == pytest.approx(d.mean(), rel=0.01)
    assert float(np.sum(mid * np.asarray(ref)) / 100) == pytest.approx(d.mean(), rel=0.01)
    # And their cumulative distributions agree to within the half-bin offset.
    assert np.abs(np.cumsum(h) - np.cumsum(ref)).max() < 5.0


def test_ideal_gas_rdf_is_one():
    box = np.array([10.0, 10.0, 12.0])
    n, frames = 60, 300
    key = jax.random.PRNGKey(1)
    pos = jax.random.uniform(key, (frames, n, 3)) * box
    species = np.array([8] * 20 + [1] * 40)
    for pair in [(8, 8), (8, 1), (1, 1)]:
        g = jnp.mean(obs.rdf(pos, species, pair, box, r_max=5.0, n_bins=25), axis=0)
        assert float(jnp.mean(g[5:])) == pytest.approx(1.0, abs=0.02)
        gs = jnp.mean(obs.rdf(pos, species, pair, box, r_max=5.0, n_bins=100, sigma=0.05), 0)
        # Beyond the smearing width the smeared RDF is 1 as well.
        assert float(jnp.mean(gs[20:-5])) == pytest.approx(1.0, abs=0.02)
    with pytest.raises(ValueError, match="half the smallest cell height"):
        obs.rdf(pos, species, (8, 8), box, r_max=6.0)


def test_rdf_minimum_image_counts_pair_across_boundary():
    box = 10.0
    pos = jnp.array([[[0.2, 5, 5], [9.7, 5, 5]]])  # 0.5 Å apart through the boundary
    g = obs.rdf(pos, np.array([1, 1]), (1, 1), box, r_max=2.0, n_bins=20)
    assert int(jnp.argmax(g[0])) == 5  # bin [0.5, 0.6)


def test_vacf_harmonic_oscillators_follow_cosine():
    """Independent 3-D harmonic oscillators under weak-thermostat MD: C(t) = cos(ω t)."""
    n = 64
    mass, k = 12.0, 10.0  # amu, eV/Å²: period 68 fs
    omega = math.sqrt(k / mass)  # internal time⁻¹
    dt = units.fs_to_internal(0.5)

    def energy_fn(params, positions, neighbor=None):
        return 0.5 * k * jnp.sum(positions**2)

    sim = make_simulator(
        energy_fn,
        np.full(n, mass),
        dt=dt,
        kT=units.kT(300.0),
        space=free_space(),
        tau=5000 * dt,  # thermostat far slower than the oscillation
    )
    pos0 = 0.05 * jax.random.normal(jax.random.PRNGKey(2), (1, n, 3))
    state = sim.init({}, jax.random.PRNGKey(3), pos0)
    # 1 ps of origins (15 periods) so the cross terms between random phases average out.
    _, traj = sim.simulate({}, state, 2200, 2)
    c = obs.vacf(traj.velocities, window=100)[0]  # [100], frames 1 fs apart
    t = np.arange(100) * 2 * dt
    np.testing.assert_allclose(np.asarray(c), np.cos(omega * t), atol=0.03)
    assert float(c[0]) == pytest.approx(1.0)


def test_msd_ballistic_and_random_walk_diffusivity():
    key1, key2 = jax.random.split(jax.random.PRNGKey(4))
    # Ballistic: r(t) = r0 + v t with zero mean velocity -> MSD = <|v - v_com|²> t².
    v = jax.random.normal(key1, (50, 3))
    v = v - v.mean(0)
    t = jnp.arange(20.0)
    pos = v[None] * t[:, None, None]
    msd = obs.mean_squared_displacement(pos, max_lag=10)
    np.testing.assert_allclose(msd, jnp.mean(jnp.sum(v**2, -1)) * jnp.arange(11.0) ** 2, rtol=1e-5)
    # Random walk with known D: steps of variance 2 D Δt per axis.
    d_true, dt_frame = 0.3, 0.5
    steps = jnp.sqrt(2 * d_true * dt_frame) * jax.random.normal(key2, (2000, 200, 3))
    walk = jnp.cumsum(steps, axis=0)
    msd = obs.mean_squared_displacement(walk, max_lag=40)
    d = obs.diffusivity(msd, dt_frame, fit_start=5, fit_stop=41)
    assert float(d) == pytest.approx(d_true, rel=0.05)
    # Units: 1 Å²/ps = 1e-8 m²/s.
    one = 1.0 / units.PICOSECOND_IN_INTERNAL
    assert float(obs.diffusivity_to_angstrom2_per_ps(one)) == pytest.approx(1.0)
    assert float(obs.diffusivity_to_m2_per_s(one)) == pytest.approx(1e-8)


def test_msd_removes_centre_of_mass_drift():
    pos = jnp.zeros((10, 4, 3)) + jnp.arange(10.0)[:, None, None]  # rigid translation
    np.testing.assert_allclose(obs.mean_squared_displacement(pos, 5), 0.0, atol=1e-10)


def test_bond_lengths_angles_and_distributions():
    theta = np.deg2rad(104.5)
    water = np.array([[0, 0, 0], [0.96, 0, 0], [0.96 * np.cos(theta), 0.96 * np.sin(theta), 0]])
    pos = jnp.asarray(np.stack([water, water + np.array([5.0, 0, 0])]).reshape(1, 6, 3))
    bonds, angles = obs.water_bonds_and_angles(2)
    assert bonds.tolist() == [[0, 1], [0, 2], [3, 4], [3, 5]]
    np.testing.assert_allclose(obs.bond_lengths(pos, bonds), 0.96, rtol=1e-6)
    np.testing.assert_allclose(obs.bond_angles(pos, angles), theta, rtol=1e-5)
    # Periodic minimum image: a bond through the boundary has its short length.
    wrapped = jnp.array([[[0.1, 0, 0], [9.5, 0, 0]]])
    disp = obs.minimum_image_displacement(jnp.array([10.0, 10.0, 10.0]))
    np.testing.assert_allclose(obs.bond_lengths(wrapped, [[0, 1]], disp), 0.6, rtol=1e-5)
    # Distributions integrate to one; the smeared one peaks at the value.
    vals = 1.0 + 0.02 * jax.random.normal(jax.random.PRNGKey(5), (3, 5000))
    for sigma in (None, 0.005):
        centers, dens = obs.distribution(vals, 0.8, 1.2, 80, sigma=sigma)
        np.testing.assert_allclose(dens.sum(-1) * (centers[1] - centers[0]), 1.0, rtol=1e-3)
        assert centers[int(jnp.argmax(dens[0]))] == pytest.approx(1.0, abs=0.02)


def test_observables_jit_and_batch():
    pos = jax.random.uniform(jax.random.PRNGKey(6), (4, 3, 5, 3)) * 4
    h = jax.jit(lambda r: obs.h_of_r(r, 6.0, 50))(pos)
    assert h.shape == (4, 3, 50)
    np.testing.assert_allclose(h[2, 1], obs.h_of_r(pos[2, 1], 6.0, 50), rtol=1e-5)


def test_triclinic_cell_equals_the_same_lattice_described_by_a_cubic_box():
    """A cubic lattice of side L is also spanned by the sheared cell a, b, c + a: minimum-image
    distances, the RDF, JAX-MD's displacement and the intermolecular criterion must not see the
    difference. A second route: brute force over the 27 neighbouring images."""
    from stabie_jax import md, stability

    L = 12.0
    sheared = np.array([[L, 0, 0], [0, L, 0], [L, 0, L]])  # rows = lattice vectors
    space = md.periodic_space(sheared)
    assert space.box.shape == (3, 3)
    np.testing.assert_allclose(obs.cell_heights(space.box), [L / np.sqrt(2), L, L])
    assert obs.cell_volume(space.box) == pytest.approx(L**3)
    rng = np.random.default_rng(0)
    r = rng.uniform(-5.0, 20.0, (40, 3))  # unwrapped, some outside the cell
    d_cubic = obs.minimum_image_displacement(np.full(3, L))(r[:, None], r[None])
    d_sheared = obs.minimum_image_displacement(space.box)(r[:, None], r[None])
    d_jax_md = jax.vmap(jax.vmap(space.displacement_fn, (None, 0)), (0, None))(r, r)
    images = np.array(np.meshgrid(*[[-1, 0, 1]] * 3, indexing="ij")).reshape(3, -1).T @ sheared
    raw = r[:, None] - r[None]
    wrapped = raw - L * np.round(raw / L)
    brute = np.min(np.linalg.norm(wrapped[:, :, None] + images[None, None], axis=-1), axis=-1)
    short = brute < 0.5 * obs.cell_heights(space.box).min()
    for d in (d_cubic, d_sheared, d_jax_md):
        np.testing.assert_allclose(np.linalg.norm(d, axis=-1)[short], brute[short], atol=1e-4)
    z = np.where(np.arange(40) % 2, 1, 8)
    g_cubic = obs.rdf(jnp.asarray(r), z, (8, 1), np.full(3, L), r_max=4.0, n_bins=40)
    g_sheared = obs.rdf(jnp.asarray(r), z, (8, 1), space.box, r_max=4.0, n_bins=40)
    assert float(jnp.sum(g_cubic)) > 0
    np.testing.assert_allclose(g_sheared, g_cubic, rtol=1e-5)
    with pytest.raises(ValueError, match="half the smallest cell height"):
        obs.rdf(jnp.asarray(r), z, (8, 1), space.box, r_max=5.0, n_bins=40)
    ids = np.arange(40) // 2
    _, dmin_cubic = stability.min_intermolecular_distance(jnp.asarray(r), ids, box=np.full(3, L))
    _, dmin_sheared = stability.min_intermolecular_distance(jnp.asarray(r), ids, box=space.box)
    assert float(dmin_sheared) == pytest.approx(float(dmin_cubic), rel=1e-5)
