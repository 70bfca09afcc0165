"""Stability criteria (stabie_jax.stability): flag broken bonds, collisions and bad RDFs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import shared_file

from stabie_jax import data, stability
from stabie_jax import observables as obs

# A synthetic "molecule": water-like O-H-H plus a C-O fragment, with small thermal noise.
SYNTH_Z = np.array([8, 1, 1, 6, 8])
SYNTH_POS = np.array(
    [[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0], [3.0, 0, 0], [4.2, 0, 0]], np.float32
)


def _synthetic_frames(n_frames, key):
    return jnp.asarray(SYNTH_POS) + 0.03 * jax.random.normal(key, (n_frames, 5, 3))


def _bonds(positions, z):
    """Covalent bonds of one structure (the bond finder the pipelines use)."""
    return data.find_bonds(np.asarray(positions)[None], z).bonds


def test_bonds_and_molecules_of_the_synthetic_structure():
    bonds = _bonds(SYNTH_POS, SYNTH_Z)
    assert bonds.tolist() == [[0, 1], [0, 2], [3, 4]]
    assert data.molecule_labels(5, bonds).tolist() == [0, 0, 0, 1, 1]


def test_bond_criterion_flags_broken_bond_and_nan():
    bonds = _bonds(SYNTH_POS, SYNTH_Z)
    eq = obs.bond_lengths(jnp.asarray(SYNTH_POS), bonds)
    frames = _synthetic_frames(10, jax.random.PRNGKey(0))  # [F, N, 3]
    broken = frames.at[4, 2].add(jnp.array([0.0, 0.6, 0.0]))  # H pulled 0.6 Å away
    with jax.debug_nans(False):  # NaN input on purpose
        nan = frames.at[7, 1, 0].set(jnp.nan)
        batch = jnp.stack([frames, broken, nan], axis=1)  # [F, R=3, N, 3]
        stable, dev = stability.bond_length_deviation(batch, bonds, eq, 0.25, frame_axis=0)
    assert np.asarray(stable).tolist() == [True, False, False]
    assert float(dev[0]) < 0.25
    assert float(dev[1]) == pytest.approx(0.6, abs=0.15)
    assert not np.isfinite(float(dev[2]))
    # Evaluation threshold 0.5 Å still flags the 0.6 Å stretch; per-frame use without reduction.
    stable_f, _ = stability.bond_length_deviation(broken, bonds, eq, 0.5)
    assert np.asarray(stable_f).tolist() == [True] * 4 + [False] + [True] * 5


def test_min_intermolecular_distance_flags_collision():
    ids = np.array([0, 0, 0, 1, 1])
    frames = _synthetic_frames(6, jax.random.PRNGKey(1))
    crash = frames.at[3, 3].set(frames[3, 1] + jnp.array([0.5, 0.3, 0.0]))  # C onto H
    batch = jnp.stack([frames, crash], axis=1)
    stable, dmin = stability.min_intermolecular_distance(batch, ids, 1.2, frame_axis=0)
    assert np.asarray(stable).tolist() == [True, False]
    assert float(dmin[1]) == pytest.approx(np.hypot(0.5, 0.3), abs=0.1)
    # Periodic: two molecules 1.0 Å apart through the boundary collide.
    pbc = jnp.array([[[0.2, 5, 5], [1.1, 5, 5], [9.2, 5, 5], [8.3, 5, 5]]])
    stable, dmin = stability.min_intermolecular_distance(pbc, [0, 0, 1, 1], box=10.0)
    assert float(dmin[0]) == pytest.approx(1.0, abs=1e-5) and not bool(stable[0])


def test_rdf_mae_criterion_on_ideal_gas_and_broken_structure():
    box = np.array([10.0, 10.0, 10.0])
    species = np.array([8] * 16 + [1] * 32)
    key1, key2 = jax.random.split(jax.random.PRNGKey(2))
    ref_frames = jax.random.uniform(key1, (60, 48, 3)) * box
    refs = {
        p: jnp.mean(obs.rdf(ref_frames, species, p, box, r_max=5.0, n_bins=50), 0)
        for p in [(8, 8), (8, 1), (1, 1)]
    }
    gas = jax.random.uniform(key2, (40, 2, 48, 3)) * box
    gas = gas.at[:, 1].multiply(0.3)  # replica 1: all atoms squeezed into a 3 Å corner
    stable, mae = stability.rdf_mae_criterion(gas, species, box, refs, 3.0, r_max=5.0)
    assert np.asarray(stable).tolist() == [True, False]
    # Replica 0 differs from the reference only by sampling noise (mostly at small r).
    assert float(mae[0]) < 1.5 and float(mae[1]) > 3.0
    with jax.debug_nans(False):  # NaN input on purpose
        nan = gas.at[5, 0, 3, 0].set(jnp.nan)
        stable, _ = stability.rdf_mae_criterion(nan, species, box, refs, 3.0, r_max=5.0)
    assert np.asarray(stable).tolist() == [False, False]
    assert float(stability.rdf_mae(jnp.ones(500), jnp.zeros(500), 6.0)) == pytest.approx(6.0)


def test_rmd17_aspirin_reference_frames_pass_and_broken_bond_fails():
    data = np.load(shared_file("rmd17_aspirin", "rmd17_aspirin_train_01.npz"))
    pos = jnp.asarray(data["coords"][:200], jnp.float32)
    z = data["nuclear_charges"]
    bonds = _bonds(pos[0], z)
    assert len(bonds) == 21  # aspirin C9H8O4: 21 covalent bonds
    eq = jnp.mean(obs.bond_lengths(pos, bonds), axis=0)
    stable, dev = stability.bond_length_deviation(pos, bonds, eq, stability.BOND_DEVIATION_TRAIN)
    assert bool(jnp.all(stable)), float(dev.max())
    # Pull the first C-H hydrogen 0.7 Å further out along its bond.
    i, j = next((a, b) for a, b in bonds if z[b] == 1 or z[a] == 1)
    h, heavy = (j, i) if z[j] == 1 else (i, j)
    u = (pos[:, h] - pos[:, heavy]) / jnp.linalg.norm(pos[:, h] - pos[:, heavy], axis=-1)[:, None]
    broken = pos.at[:, h].add(0.7 * u)
    stable, _ = stability.bond_length_deviation(broken, bonds, eq, stability.BOND_DEVIATION_EVAL)
    assert not bool(jnp.any(stable))


def test_spcfw_water_frames_pass_collision_and_rdf_criteria():
    path = shared_file("spcfw_water_64", "spcfw_water_64_300K.npz")
    data = np.load(path)
    pos = jnp.asarray(data["R"][::500], jnp.float32)  # 20 frames, 5 ps apart
    z = np.asarray(data["z"])
    box = np.diag(data["cell"])
    ids = np.repeat(np.arange(64), 3)
    stable, dmin = stability.min_intermolecular_distance(pos, ids, 1.2, box=box)
    assert bool(jnp.all(stable)), float(dmin.min())
    crash = pos.at[:, 3].set(pos[:, 0] + jnp.array([0.8, 0.0, 0.0]))  # molecule 1's O onto O 0
    stable, _ = stability.min_intermolecular_distance(crash, ids, 1.2, box=box)
    assert not bool(jnp.any(stable))
    refs = {
        p: jnp.mean(obs.rdf(pos[:10], z, p, box, r_max=6.0, n_bins=500), 0)
        for p in [(8, 8), (8, 1), (1, 1)]
    }
    # The other 10 frames (same liquid) agree; the O-O first peak sits near 2.75 Å.
    stable, mae = stability.rdf_mae_criterion(pos[10:, None], z, box, refs, 3.0)
    assert bool(stable[0]), float(mae[0])
    centres, _ = obs.rdf_bins(6.0, 500)
    assert centres[int(jnp.argmax(refs[(8, 8)]))] == pytest.approx(2.75, abs=0.15)
