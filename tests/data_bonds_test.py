"""Tests for stabie_jax.data.bonds: bond detection, minimum image, molecules, real data."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import shared_file

from stabie_jax.data import (
    Dataset,
    bond_lengths,
    bonds_from_dataset,
    covalent_cutoffs,
    find_bonds,
    intermolecular_mask,
    load_dataset,
    minimum_image,
    molecule_labels,
    molecule_members,
    pair_distances,
)

WATER = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])


def test_covalent_cutoffs_from_ase_radii():
    cut = covalent_cutoffs([8, 1, 6], tolerance=1.0)
    # Cordero radii: O 0.66, H 0.31, C 0.76 Å.
    np.testing.assert_allclose(cut[0, 1], 0.97)
    np.testing.assert_allclose(cut[2, 2], 1.52)
    np.testing.assert_allclose(cut, cut.T)


def test_single_water_bonds_and_lengths():
    graph = find_bonds(WATER, [8, 1, 1])
    assert graph.bonds.tolist() == [[0, 1], [0, 2]]
    np.testing.assert_allclose(graph.lengths, [0.96, np.hypot(0.24, 0.93)])


def test_fraction_threshold_and_mean_length():
    # Bond 0-1 stretched beyond 1.2*(0.66+0.31)=1.164 Å in 1 of 10 frames.
    frames = np.repeat(WATER[None], 10, axis=0).copy()
    frames[:, 1, 0] = np.linspace(0.9, 1.0, 10)
    frames[9, 1, 0] = 1.3
    strict = find_bonds(frames, [8, 1, 1], min_fraction=1.0)
    loose = find_bonds(frames, [8, 1, 1], min_fraction=0.9)
    assert strict.bonds.tolist() == [[0, 2]]
    assert loose.bonds.tolist() == [[0, 1], [0, 2]]
    np.testing.assert_allclose(loose.lengths[0], frames[:, 1, 0].mean())


def test_minimum_image_across_the_box():
    cell = 10.0 * np.eye(3)
    positions = WATER.copy()
    positions[1, 0] = 9.5  # H on the other side of the box: 0.5 Å via the boundary
    positions[2] += [0.0, 0.0, 9.7]  # and 0.97 Å away along z through the boundary
    graph = find_bonds(positions, [8, 1, 1], cell=cell)
    assert graph.bonds.tolist() == [[0, 1], [0, 2]]
    np.testing.assert_allclose(graph.lengths[0], 0.5)
    # Without periodicity the same atoms are far apart: no bonds.
    assert find_bonds(positions, [8, 1, 1]).bonds.shape == (0, 2)
    # Non-periodic along z: only the x-bond survives.
    assert find_bonds(positions, [8, 1, 1], cell=cell, pbc=[True, True, False]).bonds.tolist() == [
        [0, 1]
    ]


def test_minimum_image_triclinic_matches_brute_force():
    rng = np.random.default_rng(0)
    cell = np.array([[6.0, 0.0, 0.0], [1.0, 6.5, 0.0], [0.5, -0.7, 7.0]])
    for d in rng.uniform(-15, 15, size=(50, 3)):
        images = [d + np.array(n) @ cell for n in itertools.product(range(-3, 4), repeat=3)]
        shortest = min(np.linalg.norm(images, axis=1))
        wrapped = np.linalg.norm(minimum_image(d, cell))
        if shortest < 2.5:  # within half the smallest cell height the reduction is exact
            np.testing.assert_allclose(wrapped, shortest, atol=1e-12)
        assert wrapped >= shortest - 1e-12


def test_pair_distances_and_bond_lengths_agree():
    rng = np.random.default_rng(1)
    positions = rng.uniform(0, 8, size=(3, 5, 3))
    cell = 8.0 * np.eye(3)
    d = pair_distances(positions, cell)
    bonds = np.array([[0, 1], [2, 4]])
    np.testing.assert_allclose(bond_lengths(positions, bonds, cell), d[:, bonds[:, 0], bonds[:, 1]])
    np.testing.assert_allclose(d, np.swapaxes(d, 1, 2))
    assert np.all(d <= np.sqrt(3) * 4.0 + 1e-12)


def test_molecules_of_three_waters_shuffled_order():
    # Atom order: O0, O1, H(of 1), H(of 0), O2, H(of 2), H(of 0), H(of 1), H(of 2).
    offsets = np.array([0.0, 5.0, 10.0])
    pos = np.zeros((9, 3))
    owner = [0, 1, 1, 0, 2, 2, 0, 1, 2]
    hydrogen_count = [0, 0, 0]
    for atom, mol in enumerate(owner):
        if atom in (0, 1, 4):
            pos[atom] = [offsets[mol], 0, 0]
        else:
            pos[atom] = [offsets[mol], 0, 0] + WATER[1 + hydrogen_count[mol]]
            hydrogen_count[mol] += 1
    z = [8 if atom in (0, 1, 4) else 1 for atom in range(9)]
    graph = find_bonds(pos, z)
    assert len(graph.bonds) == 6
    labels = molecule_labels(9, graph.bonds)
    assert labels.tolist() == owner
    members = molecule_members(labels)
    assert members.tolist() == [[0, 3, 6], [1, 2, 7], [4, 5, 8]]
    mask = intermolecular_mask(labels)
    assert mask[0, 1] and not mask[0, 3] and mask.sum() == 81 - 27


def test_molecule_members_pads_with_minus_one():
    labels = molecule_labels(4, np.array([[0, 2]]))
    assert labels.tolist() == [0, 1, 0, 2]
    assert molecule_members(labels).tolist() == [[0, 2], [1, -1], [3, -1]]
    with pytest.raises(ValueError, match="outside"):
        molecule_labels(2, np.array([[0, 5]]))


def test_bonds_from_dataset_uses_cell_and_frames():
    frames = np.repeat(WATER[None], 3, axis=0)
    frames[:, 1, 0] = [9.1, 9.2, 9.3]  # O–H through the boundary of a 10 Å box
    ds = Dataset(
        positions=frames,
        energies=np.zeros(3),
        forces=np.zeros((3, 3, 3)),
        atomic_numbers=np.array([8, 1, 1]),
        cell=10.0 * np.eye(3),
    )
    graph = bonds_from_dataset(ds, frames=[0, 2])
    np.testing.assert_allclose(graph.lengths[0], 0.8)


def test_real_aspirin_has_21_bonds():
    ds = load_dataset(shared_file("rmd17_aspirin", "rmd17_aspirin_train_01.npz"))
    graph = bonds_from_dataset(ds)
    assert graph.bonds.shape == (21, 2)  # 21 atoms, one ring: 20 tree edges + 1
    assert molecule_labels(ds.n_atoms, graph.bonds).max() == 0
    z = ds.atomic_numbers
    pairs = sorted(tuple(sorted((int(z[i]), int(z[j])))) for i, j in graph.bonds)
    assert pairs.count((1, 6)) == 7 and pairs.count((1, 8)) == 1
    assert pairs.count((6, 6)) == 8 and pairs.count((6, 8)) == 5
    ch = graph.lengths[[tuple(sorted((int(z[i]), int(z[j])))) == (1, 6) for i, j in graph.bonds]]
    assert np.all(np.abs(ch - 1.10) < 0.02)  # C–H ≈ 1.10 Å
    # Bonds hold in every frame; max deviation from the mean stays below the 0.25 Å criterion.
    deviation = np.abs(bond_lengths(ds.positions, graph.bonds) - graph.lengths)
    assert deviation.max() < 0.25


def test_real_water_64_molecules_128_oh_bonds():
    ds = load_dataset(shared_file("spcfw_water_64", "spcfw_water_64_300K.npz"))
    graph = bonds_from_dataset(ds, frames=np.arange(0, ds.n_frames, 50))
    assert graph.bonds.shape == (128, 2)
    z = ds.atomic_numbers
    assert all({int(z[i]), int(z[j])} == {1, 8} for i, j in graph.bonds)
    assert graph.lengths.mean() == pytest.approx(1.031, abs=0.005)  # PROVENANCE: 1.0310 Å
    labels = molecule_labels(ds.n_atoms, graph.bonds)
    assert labels.max() + 1 == 64
    np.testing.assert_array_equal(molecule_members(labels), np.arange(192).reshape(64, 3))
    # Intermolecular distances stay above the 1.2 Å stability threshold in reference data.
    mask = intermolecular_mask(labels)
    d = pair_distances(ds.positions[::500], ds.cell)
    assert d[:, mask].min() > 1.2
