"""Covalent bond graph, equilibrium bond lengths and molecules, from reference frames.

StABlE's stability criteria need to know which atoms are bonded: a molecule is unstable when a
bond length deviates from its equilibrium value by more than a threshold (0.25 Å in training,
0.5 Å in evaluation), and liquid water is unstable when two *different* molecules come closer than
1.2 Å. Both come from the reference data:

* two atoms ``i, j`` are bonded in a frame when ``d_ij < tolerance * (r_i + r_j)`` with ``r``
  the covalent radii of ``ase.data.covalent_radii`` (Cordero et al. 2008) and ``tolerance``
  1.2 by default (a common choice: it accepts stretched bonds, rejects 1-3 neighbours and
  hydrogen bonds);
* a pair is a bond of the graph when it is bonded in at least ``min_fraction`` (default 0.95)
  of the frames; its equilibrium length is the mean distance over all frames;
* distances use the minimum-image convention along periodic directions;
* molecules are the connected components of the bond graph.

Examples:
  >>> import numpy as np
  >>> r = np.array([[[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]]])  # one water
  >>> graph = find_bonds(r, np.array([8, 1, 1]))
  >>> graph.bonds.tolist(), np.round(graph.lengths, 2).tolist()
  ([[0, 1], [0, 2]], [0.96, 0.96])
  >>> molecule_labels(3, graph.bonds).tolist()
  [0, 0, 0]
"""

from __future__ import annotations

from typing import NamedTuple

import ase.data
import numpy as np

from stabie_jax.data.dataset import Dataset

__all__ = [
    "BondGraph",
    "bond_lengths",
    "bonds_from_dataset",
    "covalent_cutoffs",
    "find_bonds",
    "intermolecular_mask",
    "minimum_image",
    "molecule_labels",
    "molecule_members",
    "pair_distances",
]


class BondGraph(NamedTuple):
    """Covalent bonds of a system.

    Attributes:
      bonds: ``[n_bonds, 2]`` int64 atom pairs with ``i < j``, sorted lexicographically.
      lengths: ``[n_bonds]`` Å, mean length of each bond over the reference frames.
    """

    bonds: np.ndarray
    lengths: np.ndarray


def _as_pbc(cell, pbc) -> tuple[np.ndarray | None, np.ndarray]:
    if cell is None:
        if pbc is not None and np.any(pbc):
            raise ValueError(f"pbc={np.asarray(pbc).tolist()} needs a [3, 3] cell in Å.")
        return None, np.zeros(3, dtype=bool)
    cell = np.asarray(cell, dtype=np.float64)
    if cell.shape != (3, 3):
        raise ValueError(f"cell has shape {list(cell.shape)}; expected [3, 3] Å.")
    pbc = np.ones(3, dtype=bool) if pbc is None else np.asarray(pbc, dtype=bool)
    if pbc.shape != (3,):
        raise ValueError(f"pbc has shape {list(pbc.shape)}; expected [3].")
    return cell, pbc


def minimum_image(displacements, cell=None, pbc=None) -> np.ndarray:
    """Wraps displacement vectors ``[..., 3]`` Å to the minimum image along periodic axes.

    Exact for any cell when the true minimum-image distance is shorter than half the smallest
    cell height (always the case for bonds). Without ``cell`` the input is returned unchanged.
    """
    displacements = np.asarray(displacements, dtype=np.float64)
    cell, pbc = _as_pbc(cell, pbc)
    if cell is None or not pbc.any():
        return displacements
    fractional = displacements @ np.linalg.inv(cell)
    fractional[..., pbc] -= np.round(fractional[..., pbc])
    return fractional @ cell


def pair_distances(positions, cell=None, pbc=None) -> np.ndarray:
    """All pair distances ``[F, N, N]`` Å (minimum image) for positions ``[F, N, 3]`` Å."""
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim == 2:
        positions = positions[None]
    delta = positions[:, None, :, :] - positions[:, :, None, :]
    return np.linalg.norm(minimum_image(delta, cell, pbc), axis=-1)


def covalent_cutoffs(atomic_numbers, tolerance: float = 1.2) -> np.ndarray:
    """``[N, N]`` Å bond cutoffs ``tolerance * (r_i + r_j)`` from ASE's covalent radii."""
    z = np.asarray(atomic_numbers, dtype=np.int64)
    radii = ase.data.covalent_radii[z]
    return tolerance * (radii[:, None] + radii[None, :])


def find_bonds(
    positions,
    atomic_numbers,
    *,
    cell=None,
    pbc=None,
    tolerance: float = 1.2,
    min_fraction: float = 0.95,
    chunk_size: int = 32,
) -> BondGraph:
    """Covalent bonds present in at least ``min_fraction`` of the frames.

    Args:
      positions: ``[F, N, 3]`` (or ``[N, 3]``) Å reference frames.
      atomic_numbers: ``[N]``.
      cell: ``[3, 3]`` Å (rows are lattice vectors) for periodic systems, else None.
      pbc: ``[3]`` bool; default all True when ``cell`` is given.
      tolerance: factor on the sum of covalent radii.
      min_fraction: a pair is a bond when bonded in at least this fraction of frames.
      chunk_size: frames processed at once (memory ``chunk_size * N^2 * 24`` bytes).

    Returns:
      :class:`BondGraph` with the bonds and their mean lengths over all frames.
    """
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim == 2:
        positions = positions[None]
    if positions.ndim != 3 or positions.shape[-1] != 3 or positions.shape[0] < 1:
        raise ValueError(f"positions has shape {list(positions.shape)}; expected [F, N, 3] Å.")
    n_frames, n_atoms = positions.shape[:2]
    z = np.asarray(atomic_numbers)
    if z.shape != (n_atoms,):
        raise ValueError(f"atomic_numbers has shape {list(z.shape)}; expected [{n_atoms}].")
    if not 0.0 < min_fraction <= 1.0:
        raise ValueError(f"min_fraction={min_fraction}; expected a value in (0, 1].")
    cutoffs = covalent_cutoffs(z, tolerance)
    counts = np.zeros((n_atoms, n_atoms), dtype=np.int64)
    sums = np.zeros((n_atoms, n_atoms), dtype=np.float64)
    for start in range(0, n_frames, chunk_size):
        d = pair_distances(positions[start : start + chunk_size], cell, pbc)
        counts += np.sum(d < cutoffs, axis=0)
        sums += np.sum(d, axis=0)
    i, j = np.nonzero(np.triu(counts >= min_fraction * n_frames - 1e-9, k=1))
    bonds = np.stack([i, j], axis=1).astype(np.int64).reshape(-1, 2)
    return BondGraph(bonds=bonds, lengths=sums[i, j] / n_frames)


def bonds_from_dataset(
    dataset: Dataset,
    *,
    frames=None,
    tolerance: float = 1.2,
    min_fraction: float = 0.95,
) -> BondGraph:
    """:func:`find_bonds` on a :class:`Dataset` (its cell and pbc).

    Args:
      dataset: reference data.
      frames: optional frame indices to use (e.g. every 10th frame of a long trajectory, or the
        training split only); default all frames.
      tolerance, min_fraction: see :func:`find_bonds`.
    """
    positions = dataset.positions if frames is None else dataset.positions[np.asarray(frames)]
    return find_bonds(
        positions,
        dataset.atomic_numbers,
        cell=dataset.cell,
        pbc=dataset.pbc,
        tolerance=tolerance,
        min_fraction=min_fraction,
    )


def bond_lengths(positions, bonds, cell=None, pbc=None) -> np.ndarray:
    """Lengths ``[F, n_bonds]`` Å of ``bonds`` ``[n_bonds, 2]`` in frames ``[F, N, 3]`` Å."""
    positions = np.asarray(positions, dtype=np.float64)
    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    delta = positions[..., bonds[:, 1], :] - positions[..., bonds[:, 0], :]
    return np.linalg.norm(minimum_image(delta, cell, pbc), axis=-1)


def molecule_labels(n_atoms: int, bonds) -> np.ndarray:
    """Molecule index ``[N]`` of every atom: connected components of the bond graph.

    Molecules are numbered 0, 1, ... in the order of their lowest atom index, so 64 waters stored
    O, H, H, O, H, H, ... get labels 0, 0, 0, 1, 1, 1, ...
    """
    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    if bonds.size and (bonds.min() < 0 or bonds.max() >= n_atoms):
        raise ValueError(f"bonds reference atoms outside [0, {n_atoms}).")
    parent = np.arange(n_atoms)

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in bonds:
        ra, rb = root(int(a)), root(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([root(a) for a in range(n_atoms)], dtype=np.int64)
    _, labels = np.unique(roots, return_inverse=True)  # roots are each component's lowest atom
    return labels.astype(np.int64)


def molecule_members(labels) -> np.ndarray:
    """``[n_molecules, max_size]`` int64 atom indices per molecule, padded with -1.

    For 64 waters this is a ``[64, 3]`` array with no padding.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n_molecules = int(labels.max()) + 1 if labels.size else 0
    sizes = np.bincount(labels, minlength=n_molecules)
    members = -np.ones((n_molecules, int(sizes.max()) if n_molecules else 0), dtype=np.int64)
    fill = np.zeros(n_molecules, dtype=np.int64)
    for atom, label in enumerate(labels):
        members[label, fill[label]] = atom
        fill[label] += 1
    return members


def intermolecular_mask(labels) -> np.ndarray:
    """``[N, N]`` bool, True for pairs of atoms in different molecules."""
    labels = np.asarray(labels)
    return labels[:, None] != labels[None, :]
