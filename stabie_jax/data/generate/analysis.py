"""Numpy checks of generated reference data: bonds, temperatures, RDFs, diffusion, errors.

These are host-side diagnostics used by the generator tests and by ``validate`` (block standard
errors and finite-difference forces are the statistics its reports share); they work on
stabie-npz arrays (Å, Å/fs, amu) and return SI-friendly numbers. Temperatures use k_B from
:mod:`stabie_jax.units`; kinetic energies are converted from amu·(Å/fs)² to eV through the
internal time unit.

Examples:
  >>> import numpy as np
  >>> numbers = np.array([8, 1, 1])
  >>> positions = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
  >>> covalent_bonds(numbers, positions)
  [(0, 1), (0, 2)]
"""

from __future__ import annotations

import math

import numpy as np

from stabie_jax import units
from stabie_jax.data.bonds import find_bonds

__all__ = [
    "YEH_HUMMER_XI",
    "block_sem",
    "covalent_bonds",
    "finite_difference_forces",
    "intermolecular_rdf",
    "kinetic_energy_ev",
    "kinetic_temperature",
    "molecular_class_temperatures",
    "msd_diffusion",
    "water_geometry",
    "yeh_hummer_correction",
]

YEH_HUMMER_XI = 2.837297
"""Madelung-like constant ξ of the cubic-lattice hydrodynamic self-interaction (Yeh & Hummer,
J. Phys. Chem. B 108, 15873 (2004)); dimensionless."""


def covalent_bonds(
    atomic_numbers: np.ndarray, positions: np.ndarray, scale: float = 1.2
) -> list[tuple[int, int]]:
    """The bonds of one frame: :func:`stabie_jax.data.find_bonds` of that frame alone.

    Args:
      atomic_numbers: ``[N]``.
      positions: ``[N,3]`` Å (no periodicity).
      scale: tolerance factor on r_cov,i + r_cov,j (ASE's covalent radii, Cordero 2008).

    Returns:
      Sorted list of bonded pairs ``(i, j)`` with ``i < j``.
    """
    graph = find_bonds(np.asarray(positions), atomic_numbers, tolerance=scale, min_fraction=1.0)
    return [tuple(pair) for pair in np.asarray(graph.bonds).tolist()]


def kinetic_energy_ev(velocities: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """Kinetic energy per frame, eV.

    Args:
      velocities: ``[..., N, 3]`` Å/fs.
      masses: ``[N]`` amu.
    """
    # Å/fs → Å per internal time unit: divide by internal units per fs.
    v_internal = np.asarray(velocities, dtype=np.float64) / units.fs_to_internal(1.0)
    return 0.5 * (masses[:, None] * v_internal**2).sum(axis=(-2, -1))


def kinetic_temperature(velocities: np.ndarray, masses: np.ndarray, dof: int) -> np.ndarray:
    """Instantaneous kinetic temperature 2 KE / (dof k_B) per frame, K."""
    return units.temperature_from_kT(2.0 * kinetic_energy_ev(velocities, masses) / dof)


def molecular_class_temperatures(
    velocities: np.ndarray, masses: np.ndarray, atoms_per_molecule: int = 3
) -> dict[str, float]:
    """Equipartition check: temperature of molecular translation vs intramolecular motion.

    The translational (centre-of-mass) temperature uses 3M − 3 degrees of freedom (total
    momentum removed), the intramolecular part (rotation + vibration: total minus COM kinetic
    energy) 3M(n − 1) for M molecules of n atoms.

    Args:
      velocities: ``[F, N, 3]`` Å/fs, atoms grouped by molecule.
      masses: ``[N]`` amu.
      atoms_per_molecule: n.

    Returns:
      ``{"com_translational_kelvin", "intramolecular_kelvin", "total_kelvin"}`` (frame means).
    """
    n_frames, n_atoms, _ = velocities.shape
    n_mol = n_atoms // atoms_per_molecule
    v = np.asarray(velocities, dtype=np.float64).reshape(n_frames, n_mol, atoms_per_molecule, 3)
    m = masses.reshape(n_mol, atoms_per_molecule)
    m_mol = m.sum(-1)
    v_com = (v * m[None, :, :, None]).sum(2) / m_mol[None, :, None]
    ke_total = kinetic_energy_ev(velocities, masses)
    ke_com = kinetic_energy_ev(v_com, m_mol)
    dof_com = 3 * n_mol - 3
    dof_internal = 3 * n_mol * (atoms_per_molecule - 1)
    return {
        "com_translational_kelvin": float(units.temperature_from_kT(2 * ke_com / dof_com).mean()),
        "intramolecular_kelvin": float(
            units.temperature_from_kT(2 * (ke_total - ke_com) / dof_internal).mean()
        ),
        "total_kelvin": float(
            units.temperature_from_kT(2 * ke_total / (dof_com + dof_internal)).mean()
        ),
    }


def water_geometry(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """O–H bond lengths (Å) and H–O–H angles (degrees) of O,H,H-ordered water frames.

    Args:
      positions: ``[F, 3M, 3]`` Å, unwrapped (molecules whole).

    Returns:
      ``bonds [F, M, 2]`` Å and ``angles [F, M]`` degrees.
    """
    r = np.asarray(positions, dtype=np.float64)
    o, h1, h2 = r[:, 0::3], r[:, 1::3], r[:, 2::3]
    d1, d2 = h1 - o, h2 - o
    b1, b2 = np.linalg.norm(d1, axis=-1), np.linalg.norm(d2, axis=-1)
    cos = np.clip((d1 * d2).sum(-1) / (b1 * b2), -1.0, 1.0)
    return np.stack([b1, b2], -1), np.degrees(np.arccos(cos))


def intermolecular_rdf(
    positions: np.ndarray,
    box: float,
    species_a: np.ndarray,
    species_b: np.ndarray,
    molecule_index: np.ndarray,
    r_max: float = 6.0,
    dr: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """Radial distribution function between two atom sets, excluding same-molecule pairs.

    Minimum-image distances in a cubic box; ideal-gas normalisation with the number of
    intermolecular partners of each atom.

    Args:
      positions: ``[F, N, 3]`` Å.
      box: cubic box edge, Å (``r_max`` must be ≤ box/2).
      species_a, species_b: ``[N]`` boolean masks.
      molecule_index: ``[N]`` molecule id of each atom.
      r_max: largest distance, Å.
      dr: bin width, Å.

    Returns:
      ``(r [B] bin centres Å, g [B])``.
    """
    edges = np.arange(0.0, r_max + 0.5 * dr, dr)
    ia, ib = np.nonzero(species_a)[0], np.nonzero(species_b)[0]
    other = molecule_index[ia][:, None] != molecule_index[ib][None, :]
    counts = np.zeros(len(edges) - 1)
    for frame in np.asarray(positions, dtype=np.float64):
        d = frame[ia][:, None, :] - frame[ib][None, :, :]
        d -= box * np.round(d / box)
        counts += np.histogram(np.linalg.norm(d, axis=-1)[other], edges)[0]
    partners = other.sum() / len(ia)
    shell = 4.0 / 3.0 * math.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    g = counts / (len(positions) * len(ia) * partners / box**3 * shell)
    return 0.5 * (edges[1:] + edges[:-1]), g


def msd_diffusion(
    positions: np.ndarray,
    masses: np.ndarray,
    selection: np.ndarray,
    frame_dt_fs: float,
    fit_from_ps: float,
    fit_to_ps: float,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Self-diffusion coefficient from the mean squared displacement (Einstein relation).

    Unwrapped positions, system centre of mass removed, all time origins; D = slope / 6 of a
    straight-line fit of MSD(τ) over ``fit_from_ps ≤ τ ≤ fit_to_ps``.

    Args:
      positions: ``[F, N, 3]`` unwrapped, Å.
      masses: ``[N]`` amu.
      selection: ``[N]`` boolean mask of the atoms whose MSD is used (e.g. oxygens).
      frame_dt_fs: time between frames, fs.
      fit_from_ps, fit_to_ps: fit window of lag times, ps.

    Returns:
      ``(D m²/s, lags ps, msd Å²)``.
    """
    r = np.asarray(positions, dtype=np.float64)
    com = (r * masses[None, :, None]).sum(1) / masses.sum()
    x = r[:, selection] - com[:, None, :]
    dt_ps = frame_dt_fs / 1000.0
    lag_frames = np.arange(
        max(1, round(fit_from_ps / dt_ps)), min(len(x) - 1, round(fit_to_ps / dt_ps)) + 1
    )
    stride = max(1, len(lag_frames) // 40)
    lag_frames = lag_frames[::stride]
    msd = np.array([((x[k:] - x[:-k]) ** 2).sum(-1).mean() for k in lag_frames])
    lags = lag_frames * dt_ps
    slope = np.polyfit(lags, msd, 1)[0]  # Å²/ps
    return float(slope / 6.0 * units.ANGSTROM2_PER_PS_IN_M2_PER_S), lags, msd


def yeh_hummer_correction(
    box_angstrom: float, temperature_kelvin: float, viscosity_pa_s: float
) -> float:
    """Finite-size correction ΔD = ξ k_B T / (6 π η L) to add to a periodic-box D, m²/s."""
    return (
        YEH_HUMMER_XI
        * units.BOLTZMANN_J_PER_K
        * temperature_kelvin
        / (6.0 * math.pi * viscosity_pa_s * box_angstrom * 1e-10)  # Å → m
    )


def block_sem(values: np.ndarray, n_blocks: int = 5) -> np.ndarray:
    """Standard error of the mean from ``n_blocks`` consecutive blocks along axis 0."""
    blocks = np.array_split(np.asarray(values), n_blocks, axis=0)
    means = np.stack([b.mean(axis=0) for b in blocks])
    return means.std(axis=0, ddof=1) / np.sqrt(n_blocks)


def finite_difference_forces(energy_fn, positions, indices, h):
    """Central-difference forces −(E(x + h) − E(x − h)) / 2h for chosen components.

    Args:
      energy_fn: ``positions [N,3] -> energy``.
      positions: ``[N,3]`` array (copied, not modified).
      indices: ``(atom, axis)`` pairs.
      h: displacement, in the units of ``positions``.

    Returns:
      ``[len(indices)]`` forces, energy units per length unit.
    """
    out = []
    for atom, axis in indices:
        plus, minus = positions.copy(), positions.copy()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        out.append(-(energy_fn(plus) - energy_fn(minus)) / (2 * h))
    return np.array(out)
