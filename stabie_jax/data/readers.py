"""Readers for the data formats the paper uses, converting everything to eV, Å, amu at load time.

Supported formats (:func:`read_file` picks one from the file name and, for ``.npz``, the keys):

* ``stabie`` (``.npz``, written by :func:`save_dataset` and the data generators): keys
  ``positions``, ``energies``, ``forces``, ``atomic_numbers``, optional ``cell``, ``pbc``,
  ``velocities``, ``masses``, ``time_fs``, ``frame_ids``, ``metadata`` (JSON). Units eV, Å, amu,
  velocities Å/fs.
* ``sgdml`` (``.npz``, MD17 and MD22 downloads): keys ``R``, ``z``, ``E`` ([F] or [F, 1]),
  ``F``. Units from the ``e_unit``/``r_unit`` keys when present; an sGDML download without them
  (recognised by its ``type``/``md5``/``theory`` keys) is kcal/mol and Å; any other ``R, z, E,
  F`` file needs ``energy_unit=``.
* ``rmd17`` (``.npz``, revised MD17): keys ``nuclear_charges``, ``coords``, ``energies``,
  ``forces``, ``old_indices``, ``old_energies``, ``old_forces``. kcal/mol, Å.
* ``openmm_water`` (``.npz``, the staged SPC/Fw water of this project): keys ``R``, ``z``,
  ``cell``, ``masses``, ``dt_fs``, ``temperature_K``, optional ``E``, ``F``, ``V``. kcal/mol, Å,
  Å/fs.
* ``mdsim_water`` (``water.npy`` of MDsim, a pickled dict): ``wrapped_coords``, ``atom_types``,
  ``lengths``, ``angles``, ``energy``, ``forces``. kcal/mol, Å (MDsim ``preprocessing/water.py``).
* ``ase`` (anything else ``ase.io.read`` parses with a per-frame energy and per-atom forces, e.g.
  extxyz): ``energy_unit=`` is required, except for sGDML's own xyz export (file name
  ``md17_*``/``md22_*`` and an ``Energy=`` comment key), which is kcal/mol.

The revised-MD17 files carry two label sets: ``labels="rmd17"`` (default) reads the recomputed
``energies``/``forces``; ``labels="md17"`` reads ``old_energies``/``old_forces``, the original
MD17 labels (PBE+vdW-TS) that the StABlE authors' checkpoints were trained on. The two differ by a
≈462 kcal/mol offset; never mix them.

Units are never guessed: an unknown or missing unit raises ``ValueError``. Every failure to read
a file (missing key, wrong shape, NaN, truncated or corrupt archive, wrong format) raises
``ValueError`` naming the file, the key and what was expected; a reader either returns a complete,
validated :class:`~stabie_jax.data.dataset.Dataset` or raises, with no partial result.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from stabie_jax import units
from stabie_jax.data.dataset import (
    Dataset,
    thaw_metadata,
    velocities_from_angstrom_per_fs,
    velocities_to_angstrom_per_fs,
)
from stabie_jax.jsonable import to_jsonable

__all__ = [
    "ENERGY_UNITS",
    "LENGTH_UNITS",
    "MAX_PLAUSIBLE_FORCE_EV_PER_ANGSTROM",
    "MIN_PLAUSIBLE_DISTANCE_ANGSTROM",
    "NPZ_FORMATS",
    "detect_npz_format",
    "max_plausible_energy_ev",
    "read_ase",
    "read_file",
    "read_mdsim_water_npy",
    "read_npz",
    "read_openmm_water_npz",
    "read_rmd17_npz",
    "read_sgdml_npz",
    "read_stabie_npz",
    "save_dataset",
    "write_extxyz",
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
NPZ_FORMATS = {
    "stabie": ("positions", "atomic_numbers"),
    "rmd17": ("nuclear_charges", "coords"),
    "openmm_water": ("R", "z", "cell", "dt_fs", "temperature_K"),
    "sgdml": ("R", "z"),
}
"""Format name → keys whose presence identifies it (checked in this order)."""


def detect_npz_format(keys, src: str = "<npz>") -> str:
    """The format of an ``.npz`` file from its keys (see :data:`NPZ_FORMATS`).

    Raises:
      ValueError: when no known format matches, listing the keys found and the expected sets.
    """
    keys = set(keys)
    for name, required in NPZ_FORMATS.items():
        if set(required) <= keys:
            return name
    expected = "; ".join(f"{name}: {list(req)}" for name, req in NPZ_FORMATS.items())
    raise ValueError(
        f"{src}: unknown .npz dataset format with keys {sorted(keys)}; expected one of {expected}."
    )


def read_stabie_npz(path: PathLike, *, require_labels: bool = True) -> Dataset:
    """Reads the project's own npz format (written by :func:`save_dataset`).

    Args:
      path: ``.npz`` file with keys ``positions`` [F,N,3] Å, ``energies`` [F] eV, ``forces``
        [F,N,3] eV/Å, ``atomic_numbers`` [N]; optional ``cell`` [3,3] Å, ``pbc`` [3],
        ``velocities`` [F,N,3] Å/fs, ``masses`` [N] amu, ``time_fs`` [F], ``frame_ids`` [F],
        ``metadata`` (JSON string).
      require_labels: if False, a file without energies and forces loads with ``None`` labels.

    Returns:
      The :class:`Dataset`; ``metadata`` holds the file's metadata JSON plus ``source_files``,
      ``format`` and ``original_units``.
    """
    path = pathlib.Path(path)
    return _stabie_from_arrays(path, _read_npz_arrays(path), require_labels=require_labels)


def _stabie_from_arrays(
    path: pathlib.Path, arrays: dict[str, np.ndarray], *, require_labels: bool = True
) -> Dataset:
    src = str(path)
    fmt = "stabie npz"
    metadata: dict[str, Any] = {}
    if "metadata" in arrays:
        text = _scalar(arrays, "metadata", src, kind="s")
        try:
            metadata = json.loads(text)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
            raise ValueError(f"{src}: key 'metadata' is not valid JSON ({e}).") from e
        if not isinstance(metadata, dict):
            raise ValueError(f"{src}: key 'metadata' must be a JSON object; got {type(metadata)}.")
    declared = metadata.get("units", {})
    if not isinstance(declared, Mapping):
        raise ValueError(f"{src}: metadata 'units' must be a JSON object; got {declared!r}.")
    energy_declared = declared.get("energy", "eV")
    if _energy_unit(energy_declared, src, "metadata.units.energy") != "ev":
        raise ValueError(
            f"{src}: metadata declares energy unit {declared['energy']!r}; the stabie npz format "
            "stores eV (convert before saving)."
        )
    if "length" in declared and _length_unit(declared["length"], src, "metadata.units.length") != (
        "angstrom"
    ):
        raise ValueError(
            f"{src}: metadata declares length unit {declared['length']!r}; the stabie npz format "
            "stores Å."
        )
    get = lambda key: arrays.get(key)  # noqa: E731
    energies, forces = _labels(
        arrays, "energies", "forces", src, fmt, require_labels, "ev", "angstrom"
    )
    velocities = get("velocities")
    if velocities is not None:
        velocities = velocities_from_angstrom_per_fs(_numeric(velocities, src, "velocities"))
    velocity_unit = str(declared.get("velocities", "Å/fs")).strip().lower().replace(" ", "")
    if velocity_unit not in ("å/fs", "angstrom/fs", "ang/fs", "a/fs"):
        raise ValueError(
            f"{src}: metadata declares velocity unit {declared['velocities']!r}; the stabie npz "
            "format stores Å/fs."
        )
    if metadata.get("format", "stabie") != "stabie":
        metadata["file_format"] = metadata["format"]
    metadata.update(
        source_files=[src],
        format="stabie",
        original_units=_units_record("eV", "Å", "Å/fs"),
    )
    metadata.setdefault("temperature_kelvin", None)
    metadata.setdefault("name", path.stem)
    return _dataset(
        positions=_numeric(_require(arrays, "positions", src, fmt), src, "positions"),
        energies=energies,
        forces=forces,
        atomic_numbers=_require(arrays, "atomic_numbers", src, fmt),
        cell=get("cell"),
        pbc=get("pbc"),
        velocities=velocities,
        masses=get("masses"),
        time_fs=get("time_fs"),
        frame_ids=get("frame_ids"),
        metadata=metadata,
    )


def _string_keys(arrays, keys) -> dict[str, str]:
    out = {}
    for key in keys:
        value = arrays.get(key)
        if value is not None and value.dtype.kind in "US" and value.size == 1:
            out[key] = str(value.reshape(()).item())
    return out


def read_sgdml_npz(
    path: PathLike, *, energy_unit: str | None = None, require_labels: bool = True
) -> Dataset:
    """Reads an sGDML-style npz (MD17, MD22 downloads from sgdml.org/quantum-machine.org).

    Units: the file's ``e_unit``/``r_unit`` keys when present. Without them, a file that carries
    sGDML's own bookkeeping keys (``type``, ``md5`` or ``theory``) is an sGDML download, whose
    documented units are kcal/mol and Å. Any other ``R, z, E, F`` file (e.g. MDsim's or StABlE's
    preprocessed ``nequip_npz``, which are in eV) needs an explicit ``energy_unit``.

    Args:
      path: ``.npz`` with ``R`` [F,N,3], ``z`` [N], ``E`` [F] or [F,1], ``F`` [F,N,3].
      energy_unit: ``"kcal/mol"``, ``"eV"`` or ``"Hartree"``; must agree with ``e_unit`` if both
        are present. Forces are in this energy unit per length unit.
      require_labels: if False, a file without ``E`` and ``F`` loads with ``None`` labels.
    """
    path = pathlib.Path(path)
    return _sgdml_from_arrays(
        path, _read_npz_arrays(path), energy_unit=energy_unit, require_labels=require_labels
    )


def _sgdml_from_arrays(
    path: pathlib.Path,
    arrays: dict[str, np.ndarray],
    *,
    energy_unit: str | None = None,
    require_labels: bool = True,
) -> Dataset:
    src = str(path)
    fmt = "sGDML npz"
    info = _string_keys(arrays, ("name", "theory", "type", "md5", "e_unit", "r_unit"))
    if energy_unit is not None:
        unit = _energy_unit(energy_unit, src, "energy_unit (argument)")
        if "e_unit" in info and _energy_unit(info["e_unit"], src, "e_unit") != unit:
            raise ValueError(
                f"{src}: energy_unit={energy_unit!r} contradicts the file's e_unit="
                f"{info['e_unit']!r}."
            )
        how = "argument"
    elif "e_unit" in info:
        unit, how = _energy_unit(info["e_unit"], src, "e_unit"), "file key e_unit"
    elif {"type", "md5", "theory"} & set(info):
        unit, how = "kcal/mol", "sGDML download convention (keys type/md5/theory present)"
    else:
        raise ValueError(
            f"{src}: key 'e_unit' is missing and the file is not a recognisable sGDML download "
            "(no 'type'/'md5'/'theory' keys), so its units are unknown; pass "
            "energy_unit='kcal/mol' (original sGDML data) or energy_unit='eV' (MDsim/StABlE "
            "preprocessed nequip_npz)."
        )
    length = _length_unit(info.get("r_unit", "Ang"), src, "r_unit")
    energies, forces = _labels(arrays, "E", "F", src, fmt, require_labels, unit, length)
    positions = _numeric(_require(arrays, "R", src, fmt), src, "R") * LENGTH_UNITS[length]
    metadata = {
        "source_files": [src],
        "name": path.stem,
        "format": "sgdml",
        "original_units": _units_record(unit, length),
        "units_from": how,
        "temperature_kelvin": None,
        **{k: v for k, v in info.items() if k in ("theory", "md5")},
    }
    if "name" in info:
        metadata["name"] = info["name"]
    return _dataset(
        positions=positions,
        energies=energies,
        forces=forces,
        atomic_numbers=_require(arrays, "z", src, fmt),
        metadata=metadata,
    )


def read_rmd17_npz(path: PathLike, *, labels: str = "rmd17") -> Dataset:
    """Reads a revised-MD17 npz (keys nuclear_charges, coords, energies, forces; kcal/mol, Å).

    Args:
      path: rMD17 ``.npz`` (figshare ``rmd17_<molecule>.npz`` or a train/test shard).
      labels: ``"rmd17"`` for the recomputed ``energies``/``forces``; ``"md17"`` for the original
        MD17 labels ``old_energies``/``old_forces`` (what the StABlE checkpoints were trained on).

    Returns:
      A :class:`Dataset` whose ``frame_ids`` are the ``old_indices`` (frame index in the original
      MD17 trajectory) when the file has them; ``metadata['labels']`` records the label set.
    """
    path = pathlib.Path(path)
    return _rmd17_from_arrays(path, _read_npz_arrays(path), labels=labels)


def _rmd17_from_arrays(
    path: pathlib.Path, arrays: dict[str, np.ndarray], *, labels: str = "rmd17"
) -> Dataset:
    src = str(path)
    if labels not in ("rmd17", "md17"):
        raise ValueError(f"{src}: labels={labels!r}; expected 'rmd17' or 'md17'.")
    fmt = "revised-MD17 npz"
    e_key, f_key = ("energies", "forces") if labels == "rmd17" else ("old_energies", "old_forces")
    energies, forces = _labels(arrays, e_key, f_key, src, fmt, True, "kcal/mol", "angstrom")
    frame_ids = arrays.get("old_indices")
    return _dataset(
        positions=_numeric(_require(arrays, "coords", src, fmt), src, "coords"),
        energies=energies,
        forces=forces,
        atomic_numbers=_require(arrays, "nuclear_charges", src, fmt),
        frame_ids=frame_ids,
        metadata={
            "source_files": [src],
            "name": path.stem,
            "format": "rmd17",
            "labels": labels,
            "label_keys": [e_key, f_key],
            "original_units": _units_record("kcal/mol", "Å"),
            "frame_ids_meaning": "index in the original MD17 trajectory (old_indices)",
            "temperature_kelvin": None,
        },
    )


def read_openmm_water_npz(path: PathLike, *, require_labels: bool = True) -> Dataset:
    """Reads the staged OpenMM water trajectories (``spcfw_water_64_300K*.npz``).

    Keys: ``R`` [F,N,3] Å (unwrapped), ``F`` kcal/mol/Å, ``E`` kcal/mol, ``V`` Å/fs (on-step),
    ``z``, ``cell`` [3,3] Å, ``masses`` amu, ``dt_fs`` (frame spacing), ``temperature_K``. The
    ``_dense`` file has no ``E``/``F``: load it with ``require_labels=False``.
    """
    path = pathlib.Path(path)
    return _openmm_water_from_arrays(path, _read_npz_arrays(path), require_labels=require_labels)


def _openmm_water_from_arrays(
    path: pathlib.Path, arrays: dict[str, np.ndarray], *, require_labels: bool = True
) -> Dataset:
    src = str(path)
    fmt = "OpenMM water npz"
    energies, forces = _labels(arrays, "E", "F", src, fmt, require_labels, "kcal/mol", "angstrom")
    positions = _numeric(_require(arrays, "R", src, fmt), src, "R")
    dt_fs = float(_scalar(arrays, "dt_fs", src))
    temperature = float(_scalar(arrays, "temperature_K", src))
    if not (np.isfinite(dt_fs) and dt_fs > 0 and np.isfinite(temperature) and temperature > 0):
        raise ValueError(
            f"{src}: keys 'dt_fs'={dt_fs} and 'temperature_K'={temperature}; expected positive "
            "finite numbers (fs, K)."
        )
    velocities = arrays.get("V")
    if velocities is not None:
        velocities = velocities_from_angstrom_per_fs(_numeric(velocities, src, "V"))
    return _dataset(
        positions=positions,
        energies=energies,
        forces=forces,
        atomic_numbers=_require(arrays, "z", src, fmt),
        cell=_require(arrays, "cell", src, fmt),
        pbc=np.ones(3, dtype=bool),
        velocities=velocities,
        masses=arrays.get("masses"),
        time_fs=dt_fs * np.arange(positions.shape[0]) if positions.ndim == 3 else None,
        metadata={
            "source_files": [src],
            "name": path.stem,
            "format": "openmm_water",
            "original_units": _units_record("kcal/mol", "Å", "Å/fs"),
            "temperature_kelvin": temperature,
            "frame_interval_fs": dt_fs,
            "positions_unwrapped": True,
        },
    )


# npz formats whose energy unit is fixed by the format (an energy_unit option must agree).
_FIXED_ENERGY_UNIT = {"stabie": "eV", "rmd17": "kcal/mol", "openmm_water": "kcal/mol"}
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


def read_npz(
    path: PathLike,
    *,
    labels: str = "rmd17",
    energy_unit: str | None = None,
    require_labels: bool = True,
) -> Dataset:
    """Reads any supported ``.npz`` format, chosen from its keys (:func:`detect_npz_format`)."""
    path = pathlib.Path(path)
    arrays = _read_npz_arrays(path)
    fmt = detect_npz_format(arrays.keys(), str(path))
    if energy_unit and fmt in _FIXED_ENERGY_UNIT:
        stored = _FIXED_ENERGY_UNIT[fmt]
        if _energy_unit(energy_unit, str(path), "energy_unit") != _ENERGY_ALIASES[stored.lower()]:
            raise ValueError(
                f"{path}: energy_unit={energy_unit!r} was given, but {fmt} npz files store "
                f"{stored}; drop the option (data.energy_unit) or convert the file"
            )
    if fmt == "stabie":
        return _stabie_from_arrays(path, arrays, require_labels=require_labels)
    if fmt == "rmd17":
        return _rmd17_from_arrays(path, arrays, labels=labels)
    if fmt == "openmm_water":
        return _openmm_water_from_arrays(path, arrays, require_labels=require_labels)
    return _sgdml_from_arrays(path, arrays, energy_unit=energy_unit, require_labels=require_labels)


# --- MDsim water (pickled dict) ---------------------------------------------------------------
def read_mdsim_water_npy(path: PathLike, *, allow_pickle: bool = False) -> Dataset:
    """Reads MDsim's ``water.npy`` (Zenodo record 7196767): a pickled dict of arrays.

    Keys used: ``wrapped_coords`` [F,N,3] Å, ``atom_types`` [N], ``lengths`` [3] Å (box),
    ``angles`` [3] degrees (must be 90), ``energy`` [F] kcal/mol, ``forces`` [F,N,3] kcal/mol/Å
    (MDsim ``preprocessing/water.py`` divides both by EV_TO_KCAL_MOL). If ``unwrapped_coords`` is
    present it is used for positions instead (needed for diffusion); the wrapped ones are
    equivalent under minimum image.

    Args:
      path: the ``water.npy`` file.
      allow_pickle: must be True: unpickling can run arbitrary code, so only do it for a file
        whose origin you trust (the registry verifies or records its sha256).
    """
    path = pathlib.Path(path)
    src = str(path)
    if not allow_pickle:
        raise ValueError(
            f"{src}: MDsim's water.npy is a pickled dict; loading it runs pickle. Pass "
            "allow_pickle=True only for a trusted file (e.g. the registry's verified download)."
        )
    _check_file(path)
    try:
        raw = np.load(path, allow_pickle=True)
        if isinstance(raw, np.lib.npyio.NpzFile):
            raw.close()
        data = raw.item() if isinstance(raw, np.ndarray) and raw.dtype == object else None
    except Exception as e:  # noqa: BLE001 - unpickling can raise anything; report it as bad input
        raise ValueError(
            f"{src}: cannot read as a pickled .npy dict: {type(e).__name__}: {e}"
        ) from e
    if not isinstance(data, dict):
        raise ValueError(f"{src}: expected a pickled dict of arrays (MDsim water.npy).")
    fmt = "MDsim water npy"
    arrays = {str(k): np.asarray(v) for k, v in data.items()}
    pos_key = "unwrapped_coords" if "unwrapped_coords" in arrays else "wrapped_coords"
    lengths = _numeric(_require(arrays, "lengths", src, fmt), src, "lengths").reshape(-1)
    angles = _numeric(_require(arrays, "angles", src, fmt), src, "angles").reshape(-1)
    if lengths.shape != (3,) or angles.shape != (3,):
        raise ValueError(f"{src}: keys 'lengths'/'angles' must have 3 entries each.")
    if not np.allclose(angles, 90.0):
        raise ValueError(
            f"{src}: key 'angles' is {angles.tolist()}; only orthorhombic boxes (90°) are "
            "supported for this format."
        )
    energies, forces = _labels(arrays, "energy", "forces", src, fmt, True, "kcal/mol", "angstrom")
    return _dataset(
        positions=_numeric(_require(arrays, pos_key, src, fmt), src, pos_key),
        energies=energies,
        forces=forces,
        atomic_numbers=_require(arrays, "atom_types", src, fmt),
        cell=np.diag(lengths),
        pbc=np.ones(3, dtype=bool),
        metadata={
            "source_files": [src],
            "name": path.stem,
            "format": "mdsim_water",
            "positions_key": pos_key,
            "original_units": _units_record("kcal/mol", "Å"),
            "temperature_kelvin": 300.0,
        },
    )


# --- ASE -------------------------------------------------------------------------------------
_SGDML_XYZ_NAME = re.compile(r"^(md17|md22)_.*\.(xyz|extxyz)$", re.IGNORECASE)


def read_ase(
    path: PathLike,
    *,
    energy_unit: str | None = None,
    format: str | None = None,
    index: str = ":",
    energy_key: str | None = None,
    forces_key: str | None = None,
) -> Dataset:
    """Reads any file ASE parses (extxyz, ASE trajectory, ...) with energies and forces.

    All frames must have the same atoms (order included) and the same cell. The energy of a
    frame is the calculator's ``energy`` or the ``energy``/``Energy`` info key; forces come
    from the calculator or the ``forces`` array. Velocities are taken when ASE finds momenta.

    Args:
      path: the file.
      energy_unit: unit of energies (and, per Å, of forces) in the file: required, except for
        sGDML's xyz export (file name ``md17_*``/``md22_*`` and an ``Energy=`` comment key), which
        is detected as kcal/mol. Positions are taken as Å (ASE's convention).
      format: ASE format name; default: from the file name.
      index: ASE frame selection string.
      energy_key: take each frame's energy from this comment (info) key, e.g. MACE's
        ``REF_energy`` (default: the calculator's energy, else ``energy``/``Energy``).
      forces_key: take the forces from this per-atom array, e.g. ``REF_forces`` (default: the
        calculator's forces, else ``forces``).
    """
    import ase.io  # deferred: ASE's io registry is slow to import

    path = pathlib.Path(path)
    src = str(path)
    _check_file(path)
    try:
        frames = ase.io.read(path, index=index, format=format)
    except Exception as e:  # noqa: BLE001 - ASE's parsers raise many types; all mean bad input
        raise ValueError(
            f"{src}: ASE cannot parse the file (format={format or 'from name'}): "
            f"{type(e).__name__}: {e}"
        ) from e
    if not isinstance(frames, list):
        frames = [frames]
    if not frames:
        raise ValueError(f"{src}: no frames found; expected at least one.")

    energies, forces, positions, momenta = [], [], [], []
    first = frames[0]
    numbers = first.numbers
    cell = np.asarray(first.cell[:], dtype=np.float64)
    pbc = np.asarray(first.pbc, dtype=bool)
    found_key = None  # the energy key of the frames, for the unit rules below
    for i, atoms in enumerate(frames):
        where = f"{src} (frame {i})"
        if len(atoms) != len(first) or not np.array_equal(atoms.numbers, numbers):
            raise ValueError(
                f"{where}: key 'numbers' has {len(atoms)} atoms / different elements; expected "
                f"the {len(first)} atoms of frame 0 in the same order."
            )
        if not np.allclose(atoms.cell[:], cell) or not np.array_equal(atoms.pbc, pbc):
            raise ValueError(
                f"{where}: key 'cell'/'pbc' differs from frame 0; expected a fixed cell."
            )
        results = atoms.calc.results if atoms.calc is not None else {}
        if energy_key:
            if energy_key in atoms.info:
                energy, key = atoms.info[energy_key], energy_key
            elif energy_key in results:
                energy, key = results[energy_key], energy_key
            else:
                raise ValueError(
                    f"{where}: missing key '{energy_key}' (energy_key); the frame has info keys "
                    f"{sorted(atoms.info)} and calculator results {sorted(results)}."
                )
        elif "energy" in results:
            energy, key = results["energy"], "energy"
        elif "energy" in atoms.info:
            energy, key = atoms.info["energy"], "energy"
        elif "Energy" in atoms.info:
            energy, key = atoms.info["Energy"], "Energy"
        else:
            raise ValueError(
                f"{where}: missing key 'energy' (calculator result or comment 'energy='/'Energy=');"
                " expected a per-frame energy."
            )
        if forces_key:
            if forces_key in atoms.arrays:
                frame_forces = atoms.arrays[forces_key]
            elif forces_key in results:
                frame_forces = results[forces_key]
            else:
                raise ValueError(
                    f"{where}: missing key '{forces_key}' (forces_key); the frame has per-atom "
                    f"arrays {sorted(atoms.arrays)} and calculator results {sorted(results)}."
                )
        elif "forces" in results:
            frame_forces = results["forces"]
        elif "forces" in atoms.arrays:
            frame_forces = atoms.arrays["forces"]
        else:
            raise ValueError(
                f"{where}: missing key 'forces' (per-atom property); expected [n_atoms, 3] forces."
            )
        try:
            energies.append(float(np.asarray(energy, dtype=np.float64).reshape(())))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: key '{key}' is not a number ({energy!r}).") from e
        found_key = found_key or key
        forces.append(np.asarray(frame_forces, dtype=np.float64))
        positions.append(atoms.positions)
        momenta.append(atoms.arrays.get("momenta"))

    if energy_unit is not None:
        unit, how = _energy_unit(energy_unit, src, "energy_unit (argument)"), "argument"
    elif _SGDML_XYZ_NAME.match(path.name) and found_key == "Energy":
        unit, how = "kcal/mol", "sGDML xyz export convention (md17_/md22_ file with 'Energy=')"
    else:
        raise ValueError(
            f"{src}: energy unit unknown: key '{found_key}' carries no unit and the file is not a "
            "known format; pass energy_unit='eV' or 'kcal/mol' (forces are read as that unit per "
            "Å)."
        )
    velocities = None
    if all(m is not None for m in momenta):
        masses = first.get_masses()
        velocities = np.stack(momenta) / masses[None, :, None]
    return _dataset(
        positions=np.stack(positions),
        energies=_to_ev(energies, unit),
        forces=_forces_to_ev_per_angstrom(np.stack(forces), unit, "angstrom"),
        atomic_numbers=numbers,
        cell=cell if pbc.any() else None,
        pbc=pbc if pbc.any() else None,
        velocities=velocities,
        metadata={
            "source_files": [src],
            "name": path.stem,
            "format": "ase",
            "original_units": _units_record(unit, "Å"),
            "units_from": how,
            "temperature_kelvin": None,
        },
    )


# --- dispatch and writing --------------------------------------------------------------------
def read_file(path: PathLike, **options) -> Dataset:
    """Reads one file in any supported format.

    ``.npz`` → :func:`read_npz` (format from the keys); ``.npy`` → :func:`read_mdsim_water_npy`;
    anything else → :func:`read_ase`. ``options`` are passed to the chosen reader (``labels``,
    ``energy_unit``, ``require_labels``, ``allow_pickle``, ``format``, ``index``, ``energy_key``,
    ``forces_key``); an option the
    chosen reader does not take raises ``ValueError``.
    """
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        reader, allowed = read_npz, {"labels", "energy_unit", "require_labels"}
    elif suffix == ".npy":
        reader, allowed = read_mdsim_water_npy, {"allow_pickle"}
    else:
        reader, allowed = read_ase, {"energy_unit", "format", "index", "energy_key", "forces_key"}
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(
            f"{path}: options {sorted(unknown)} do not apply to {reader.__name__}; it takes "
            f"{sorted(allowed)}."
        )
    dataset = reader(path, **options)
    _check_plausible_magnitudes(dataset, str(path))
    return dataset


def save_dataset(dataset: Dataset, path: PathLike) -> pathlib.Path:
    """Writes ``dataset`` in the stabie npz format (compressed), atomically.

    Velocities are stored in Å/fs, everything else in the dataset's units (eV, Å, amu); the
    metadata is stored as JSON (``units`` added). The file is written to a temporary name in the
    same directory and renamed, so readers never see a half-written file.

    Args:
      dataset: the :class:`Dataset` to write.
      path: destination; ``.npz`` is appended if missing.

    Returns:
      The path written.
    """
    path = pathlib.Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    metadata = thaw_metadata(dataset.metadata)
    metadata["units"] = {
        "energy": "eV",
        "length": "Angstrom",
        "forces": "eV/Angstrom",
        "velocities": "Angstrom/fs",
        "masses": "amu",
        "time": "fs",
    }
    for key in ("source_files", "format", "original_units"):
        if key in metadata:
            metadata[f"origin_{key}"] = metadata.pop(key)
    arrays: dict[str, np.ndarray] = {
        "positions": dataset.positions,
        "atomic_numbers": dataset.atomic_numbers,
        "masses": dataset.masses,
        "pbc": dataset.pbc,
        "metadata": np.array(json.dumps(to_jsonable(metadata, nonfinite="keep"))),
    }
    if dataset.has_labels:
        arrays["energies"] = dataset.energies
        arrays["forces"] = dataset.forces
    if dataset.cell is not None:
        arrays["cell"] = dataset.cell
    if dataset.velocities is not None:
        arrays["velocities"] = velocities_to_angstrom_per_fs(dataset.velocities)
    if dataset.time_fs is not None:
        arrays["time_fs"] = dataset.time_fs
    if dataset.frame_ids is not None:
        arrays["frame_ids"] = dataset.frame_ids

    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: given a name, numpy would append ".npz"
            np.savez_compressed(f, **arrays)

    return _write_atomically(path, write)


def _write_atomically(path: pathlib.Path, write) -> pathlib.Path:
    """``write(temporary_path)`` beside ``path``, then rename: readers never see a half-written
    file, and a failed write leaves nothing. The file gets the permissions a plain ``open``
    would give (``mkstemp``'s are owner-only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_extxyz(dataset: Dataset, path: PathLike) -> pathlib.Path:
    """Writes ``dataset`` as extended XYZ (ASE), atomically: per frame the positions (Å), the
    cell and pbc, and, when labelled, the energy (eV) and forces (eV/Å) as ASE single-point
    results, which :func:`read_ase` (and every ASE-based tool: MACE, NequIP, ASE's GUI) reads
    back.

    Returns:
      The path written.
    """
    import ase
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    path = pathlib.Path(path)
    frames = []
    for i in range(dataset.n_frames):
        atoms = ase.Atoms(
            numbers=dataset.atomic_numbers,
            positions=dataset.positions[i],
            cell=dataset.cell,
            pbc=dataset.pbc,
        )
        if dataset.has_labels:
            atoms.calc = SinglePointCalculator(
                atoms, energy=float(dataset.energies[i]), forces=dataset.forces[i]
            )
        frames.append(atoms)
    return _write_atomically(path, lambda tmp: ase.io.write(tmp, frames, format="extxyz"))
