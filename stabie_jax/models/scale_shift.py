"""Per-species energy shift and global scale around a learned potential.

Networks learn best on targets of order one. Following common NNIP practice (SchNetPack,
NequIP, the authors' MDsim checkpoints that subtract a mean energy), the learned model predicts
a *normalised* per-atom energy ``u_i`` and the physical per-atom energy is

.. math::  e_i = s \\, u_i + \\mu_{Z_i},  \\qquad U = \\sum_i e_i,  \\qquad F = s \\, F_u,

with ``s`` a force scale (eV, the RMS of the training forces in eV/Å times 1 Å) and
``μ_Z`` per-element energy shifts (eV) from a least-squares fit of the total energies on the
element counts of each frame. For a single composition (one molecule, MD17) the system is
rank-deficient and the minimum-norm solution spreads the mean energy over the elements in
proportion to their counts; the total shift then equals the mean training energy exactly.

Both ``s`` and ``μ`` are constants (not parameters): they are fitted once on the training set,
stored in the model checkpoint, and applied by :func:`scale_shift_potential` around any
:class:`~stabie_jax.models.potential.Potential`.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from stabie_jax.models.potential import Potential

__all__ = [
    "MAX_ATOMIC_NUMBER",
    "affine_potential",
    "fit_energy_shift",
    "force_rms",
    "reanchor_energy_shift",
    "scale_shift_potential",
    "shift_table",
]

MAX_ATOMIC_NUMBER = 118


def fit_energy_shift(energies, atomic_numbers) -> dict[int, float]:
    """Least-squares per-element energy shifts ``μ_Z`` (eV) from total energies.

    Solves ``min_μ Σ_f (E_f − Σ_Z n_{f,Z} μ_Z)²`` with minimum norm (``numpy.linalg.lstsq``).

    Args:
      energies: ``[n_frames]`` total energies, eV.
      atomic_numbers: ``[n_atoms]`` (same composition in every frame) or
        ``[n_frames, n_atoms]`` ints.

    Returns:
      ``{Z: μ_Z}`` in eV for every element present.

    Examples:
      >>> fit_energy_shift([-3.0, -3.0], [1, 1, 8])   # minimum norm over counts (2, 1)
      {1: -1.2, 8: -0.6}
    """
    energies = np.asarray(energies, dtype=np.float64)
    z = np.asarray(atomic_numbers)
    if energies.ndim != 1:
        raise ValueError(f"energies must be [n_frames], got shape {energies.shape}")
    if z.ndim == 1:
        z = np.broadcast_to(z, (energies.shape[0], z.shape[0]))
    if z.shape[0] != energies.shape[0]:
        raise ValueError(
            f"atomic_numbers has {z.shape[0]} frames but energies has {energies.shape[0]}"
        )
    elements = np.unique(z)
    counts = np.stack([(z == e).sum(axis=1) for e in elements], axis=1).astype(np.float64)
    shifts, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return {int(e): round(float(s), 12) for e, s in zip(elements, shifts, strict=True)}


def reanchor_energy_shift(
    energy_shift: Mapping[int, float] | None, atomic_numbers, offset_ev: float
) -> dict[int, float]:
    """Shifts ``μ_Z`` that add ``offset_ev`` to the total energy of one composition.

    ``offset_ev / N`` is added to the shift of every element of the ``N`` atoms (elements
    missing from ``energy_shift`` start at 0), so ``Σ_i μ_{Z_i}`` grows by exactly
    ``offset_ev`` for this composition; forces, and hence the dynamics and the Boltzmann
    distribution, are unchanged. Used after observable training, whose gradient
    ``Cov(g, ∇_θU)`` is blind to a constant energy and can leave the zero of U drifted.

    Args:
      energy_shift: ``{Z: μ_Z}`` in eV (or None).
      atomic_numbers: ``[N]`` ints, the composition the offset was measured on.
      offset_ev: eV to add to the total energy (e.g. ``mean(E_ref − E_model)``).

    Returns:
      The new ``{Z: μ_Z}`` in eV.

    Examples:
      >>> reanchor_energy_shift({1: -1.2, 8: -0.6}, [1, 1, 8], 0.3)
      {1: -1.1, 8: -0.5}
    """
    z = np.asarray(atomic_numbers).reshape(-1)
    if z.size == 0:
        raise ValueError("reanchor_energy_shift: no atoms")
    out = {int(k): float(v) for k, v in (energy_shift or {}).items()}
    per_atom = float(offset_ev) / z.size
    for element in np.unique(z):
        out[int(element)] = round(out.get(int(element), 0.0) + per_atom, 12)
    return out


def force_rms(forces) -> float:
    """Root mean square of all force components, eV/Å (used as the energy scale ``s``)."""
    forces = np.asarray(forces, dtype=np.float64)
    return float(np.sqrt(np.mean(forces**2)))


def shift_table(energy_shift: Mapping[int, float] | None) -> np.ndarray:
    """Dense ``[MAX_ATOMIC_NUMBER + 1]`` float table of ``μ_Z`` (zero for absent elements)."""
    table = np.zeros(MAX_ATOMIC_NUMBER + 1, dtype=np.float64)
    for z, mu in (energy_shift or {}).items():
        z = int(z)
        if not 0 < z <= MAX_ATOMIC_NUMBER:
            raise ValueError(f"energy shift given for invalid atomic number {z}")
        table[z] = float(mu)
    return table


def affine_potential(potential: Potential, energy_scale, per_atom_shift) -> Potential:
    """``e_i = energy_scale·u_i + per_atom_shift[i]`` with array (possibly traced) constants.

    Args:
      potential: the bare model's :class:`Potential`.
      energy_scale: scalar ``s``, eV per model unit.
      per_atom_shift: ``[N]`` eV, ``μ_{Z_i}`` of each atom.
    """

    def per_atom_energy_fn(params, positions, neighbor=None, **kwargs):
        e = potential.per_atom_energy_fn(params, positions, neighbor, **kwargs)
        return energy_scale * e + per_atom_shift

    def energy_fn(params, positions, neighbor=None, **kwargs):
        e = potential.energy_fn(params, positions, neighbor, **kwargs)
        return energy_scale * e + jnp.sum(per_atom_shift)

    def force_fn(params, positions, neighbor=None, **kwargs):
        return energy_scale * potential.force_fn(params, positions, neighbor, **kwargs)

    return Potential(energy_fn, per_atom_energy_fn, force_fn)


def scale_shift_potential(
    potential: Potential,
    atomic_numbers,
    *,
    energy_scale: float = 1.0,
    energy_shift: Mapping[int, float] | None = None,
) -> Potential:
    """Apply ``e_i = s·u_i + μ_{Z_i}`` around a potential of normalised energies.

    Args:
      potential: the bare model's :class:`Potential` (normalised units).
      atomic_numbers: ``[N]`` ints of the system ``potential`` was built for.
      energy_scale: ``s``, eV per normalised unit.
      energy_shift: ``{Z: μ_Z}`` in eV; missing elements get 0.

    Returns:
      A :class:`Potential` in eV, eV/Å with the same call signatures.
    """
    z = np.asarray(atomic_numbers, dtype=np.int64)
    per_atom_shift = np.asarray(shift_table(energy_shift)[z], dtype=np.float32)
    return affine_potential(potential, np.float32(energy_scale), per_atom_shift)
