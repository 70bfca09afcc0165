"""What every reader shares: unit names and conversions, key and shape checks, and the
plausibility bounds on energies, forces and distances (units never guessed; errors name the
file and the key)."""

from __future__ import annotations

import os
import pathlib
import struct
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from stabie_jax import units
from stabie_jax.data.dataset import (
    Dataset,
)

__all__ = [
    "ENERGY_UNITS",
    "LENGTH_UNITS",
    "MAX_PLAUSIBLE_FORCE_EV_PER_ANGSTROM",
    "MIN_PLAUSIBLE_DISTANCE_ANGSTROM",
    "max_plausible_energy_ev",
]

PathLike = str | os.PathLike


# --- units ----------------------------------------------------------------------------------
def _identity(x):
    return x


ENERGY_UNITS = {
    "ev": _identity,
    "kcal/mol": units.kcal_per_mol_to_ev,
    "hartree": units.hartree_to_ev,
}
"""Energy unit name (lower case) → function converting values to eV."""

_ENERGY_ALIASES = {
    "ev": "ev",
    "kcal/mol": "kcal/mol",
    "kcal mol-1": "kcal/mol",
    "hartree": "hartree",
    "ha": "hartree",
}

LENGTH_UNITS = {"angstrom": 1.0, "bohr": units.BOHR_IN_ANGSTROM}
"""Length unit name (lower case) → size in Å."""

_LENGTH_ALIASES = {
    "angstrom": "angstrom",
    "ang": "angstrom",
    "å": "angstrom",
    "a": "angstrom",
    "bohr": "bohr",
}


def _energy_unit(name: Any, src: str, key: str) -> str:
    canonical = _ENERGY_ALIASES.get(str(name).strip().lower())
    if canonical is None:
        raise ValueError(
            f"{src}: key '{key}' gives energy unit {name!r}, which is not known; expected one of "
            f"{sorted(_ENERGY_ALIASES)}."
        )
    return canonical


def _length_unit(name: Any, src: str, key: str) -> str:
    canonical = _LENGTH_ALIASES.get(str(name).strip().lower())
    if canonical is None:
        raise ValueError(
            f"{src}: key '{key}' gives length unit {name!r}, which is not known; expected one of "
            f"{sorted(_LENGTH_ALIASES)}."
        )
    return canonical


def _to_ev(values, unit: str):
    return ENERGY_UNITS[unit](np.asarray(values, dtype=np.float64))


def _forces_to_ev_per_angstrom(values, energy_unit: str, length_unit: str):
    forces = _to_ev(values, energy_unit)
    return forces if length_unit == "angstrom" else forces / LENGTH_UNITS[length_unit]


# --- low-level file access -------------------------------------------------------------------
# Exceptions numpy/zipfile raise on truncated, corrupt or hostile archives. Each is turned into a
# ValueError that names the file; nothing else is caught, so programming errors still surface.
_NPZ_READ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    zipfile.BadZipFile,
    zlib.error,
    struct.error,
    UnicodeDecodeError,
    NotImplementedError,
    OverflowError,
    MemoryError,
    RuntimeError,
)


def _check_file(path: pathlib.Path) -> None:
    if not path.exists():
        raise ValueError(f"{path}: file not found.")
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file.")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: file is empty; expected a dataset.")


def _read_npz_arrays(path: pathlib.Path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file, loaded eagerly (no pickles)."""
    _check_file(path)
    corrupt = f"{path}: cannot read as .npz (truncated or corrupt file?)"
    try:
        archive = np.load(path, allow_pickle=False)
    except _NPZ_READ_ERRORS as e:
        raise ValueError(f"{corrupt}: {type(e).__name__}: {e}") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: is a single .npy array, not an .npz archive.")
    try:
        with archive:
            return {key: np.asarray(archive[key]) for key in archive.files}
    except _NPZ_READ_ERRORS as e:
        raise ValueError(f"{corrupt}: {type(e).__name__}: {e}") from e


def _require(arrays: Mapping[str, np.ndarray], key: str, src: str, fmt: str) -> np.ndarray:
    if key not in arrays:
        raise ValueError(
            f"{src}: missing key '{key}' required by the {fmt} format; found keys {sorted(arrays)}."
        )
    return arrays[key]


def _scalar(arrays: Mapping[str, np.ndarray], key: str, src: str, kind: str = "f"):
    value = np.asarray(arrays[key])
    if value.size != 1 or value.dtype.kind not in ("fiu" if kind == "f" else "US"):
        raise ValueError(
            f"{src}: key '{key}' should be a scalar {'number' if kind == 'f' else 'string'}; "
            f"got shape {list(value.shape)}, dtype {value.dtype}."
        )
    return value.reshape(()).item()


def _energies_vector(values: np.ndarray, src: str, key: str) -> np.ndarray:
    """Accepts ``[F]`` or ``[F, 1]`` energies (sGDML stores the latter)."""
    values = np.asarray(values)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise ValueError(
            f"{src}: key '{key}' has shape {list(values.shape)}; expected [F] or [F, 1]."
        )
    return values


def _numeric(values: np.ndarray, src: str, key: str) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype.kind not in "fiu":
        raise ValueError(f"{src}: key '{key}' has dtype {values.dtype}; expected a numeric array.")
    return values


def _labels(
    arrays, e_key, f_key, src, fmt, require_labels, energy_unit, length_unit
) -> tuple[np.ndarray | None, np.ndarray | None]:
    have = [k for k in (e_key, f_key) if k in arrays]
    if not require_labels and not have:
        return None, None
    energies = _energies_vector(_numeric(_require(arrays, e_key, src, fmt), src, e_key), src, e_key)
    forces = _numeric(_require(arrays, f_key, src, fmt), src, f_key)
    return (
        _to_ev(energies, energy_unit),
        _forces_to_ev_per_angstrom(forces, energy_unit, length_unit),
    )


def _units_record(energy_unit: str, length_unit: str, velocity: str | None = None) -> dict:
    record = {
        "energy": energy_unit,
        "forces": f"{energy_unit}/{length_unit}",
        "length": length_unit,
    }
    if velocity is not None:
        record["velocities"] = velocity
    return record


def _dataset(**fields) -> Dataset:
    """Builds the Dataset from arrays this reader created and nobody else references: marking
    them read-only first lets :class:`Dataset` keep them without another copy."""
    for value in fields.values():
        if isinstance(value, np.ndarray) and value.flags.owndata:
            value.setflags(write=False)
    return Dataset(**fields)


# --- npz formats -----------------------------------------------------------------------------
# Largest force component (eV/Å) accepted from a file: MD and DFT data stay far below it (rMD17
# aspirin: 7 eV/Å); kcal/mol or kJ/mol values read as eV exceed it 23x or 96x sooner.
MAX_PLAUSIBLE_FORCE_EV_PER_ANGSTROM = 50.0


# Free-atom total energies are bounded by the Thomas–Fermi energy 0.7687·Z^(7/3) Hartree, which
# exceeds the all-electron energy of every neutral atom (H: 0.77 vs 0.50 Ha, O: 99 vs 75, Hg:
# 2.1e4 vs 1.96e4 relativistic); a molecule or cell lies within 1 % of its atoms' sum. A total
# energy above 1.5x the sum cannot be in eV: kcal/mol read as eV is 23x the true value.
_THOMAS_FERMI_HARTREE = 0.7687
_ENERGY_BOUND_MARGIN = 1.5
# Closer than this no two atoms of a physical structure come (H2: 0.74 Å); coordinates in nm
# (C–H 0.109) fall below it.
MIN_PLAUSIBLE_DISTANCE_ANGSTROM = 0.3


def max_plausible_energy_ev(atomic_numbers) -> float:
    """Largest ``|E|`` (eV) a total energy of these atoms can have: 1.5x their Thomas–Fermi sum.

    Args:
      atomic_numbers: ``[N]`` ints.

    Returns:
      ``1.5 · Σ_i 0.7687 · Z_i^(7/3)`` Hartree in eV (aspirin: 3.5e4 eV; its DFT total energy
      is −1.76e4 eV, read from kcal/mol as eV −4.06e5).
    """
    z = np.asarray(atomic_numbers, np.float64)
    tf = _THOMAS_FERMI_HARTREE * np.sum(z ** (7.0 / 3.0))
    return float(_ENERGY_BOUND_MARGIN * units.hartree_to_ev(tf))


def _check_plausible_magnitudes(dataset: Dataset, src: str) -> None:
    """Refuse values no physical dataset in eV and Å can hold (a unit mix-up, usually).

    Checks: force components ≤ :data:`MAX_PLAUSIBLE_FORCE_EV_PER_ANGSTROM`; ``|E|`` ≤
    :func:`max_plausible_energy_ev` of the atoms; the first frame's closest pair of atoms at
    least :data:`MIN_PLAUSIBLE_DISTANCE_ANGSTROM` apart (distances without periodic images are
    never shorter than the minimum-image ones, so periodic cells cannot fail it spuriously).
    """
    first = np.asarray(dataset.positions[0], np.float64)
    if first.shape[0] > 1:
        d = np.linalg.norm(first[:, None] - first[None], axis=-1)
        closest = float(np.min(d[np.triu_indices(first.shape[0], 1)]))
        if closest < MIN_PLAUSIBLE_DISTANCE_ANGSTROM:
            raise ValueError(
                f"{src}: two atoms of the first frame are {closest:.4g} Å apart, closer than "
                f"the {MIN_PLAUSIBLE_DISTANCE_ANGSTROM:g} Å of any physical structure; the "
                "positions are probably in nm (multiply by 10) or two atoms are duplicated"
            )
    if dataset.forces is not None:
        forces = np.asarray(dataset.forces)
        finite = forces[np.isfinite(forces)]
        largest = float(np.max(np.abs(finite))) if finite.size else 0.0
        if largest > MAX_PLAUSIBLE_FORCE_EV_PER_ANGSTROM:
            raise ValueError(
                f"{src}: force components up to {largest:.4g} eV/Å after unit conversion, above "
                f"the {MAX_PLAUSIBLE_FORCE_EV_PER_ANGSTROM:g} eV/Å of any physical dataset; the "
                "file's "
                "energies/forces are probably in another unit (kcal/mol read as eV gives 23x, "
                "kJ/mol 96x): give the right energy_unit (data.energy_unit) or convert the file"
            )
    if dataset.energies is not None:
        energies = np.asarray(dataset.energies)
        finite_e = energies[np.isfinite(energies)]
        bound = max_plausible_energy_ev(dataset.atomic_numbers)
        largest_e = float(np.max(np.abs(finite_e))) if finite_e.size else 0.0
        if largest_e > bound:
            raise ValueError(
                f"{src}: total energies up to {largest_e:.6g} eV after unit conversion, beyond "
                f"the {bound:.6g} eV that the free atoms of this structure can hold (1.5x their "
                "Thomas-Fermi energy); the energies are probably in another unit (kcal/mol read "
                "as eV gives 23x, kJ/mol 96x): give the right energy_unit (data.energy_unit) or "
                "convert the file"
            )
