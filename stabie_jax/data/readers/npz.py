"""The ``.npz`` formats (stabie, sGDML MD17/MD22, revised MD17, the staged OpenMM water),
chosen from the keys, and MDsim's pickled ``water.npy``."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from stabie_jax.data.dataset import (
    Dataset,
    velocities_from_angstrom_per_fs,
)
from stabie_jax.data.readers._common import (
    _ENERGY_ALIASES,
    LENGTH_UNITS,
    PathLike,
    _check_file,
    _dataset,
    _energy_unit,
    _labels,
    _length_unit,
    _numeric,
    _read_npz_arrays,
    _require,
    _scalar,
    _units_record,
)

__all__ = [
    "NPZ_FORMATS",
    "detect_npz_format",
    "read_mdsim_water_npy",
    "read_npz",
    "read_openmm_water_npz",
    "read_rmd17_npz",
    "read_sgdml_npz",
    "read_stabie_npz",
]


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
