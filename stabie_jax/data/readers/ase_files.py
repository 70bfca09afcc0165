"""Anything ``ase.io.read`` parses (extxyz, xyz, ...), with a per-frame energy and per-atom
forces under configurable keys, free or periodic."""

from __future__ import annotations

import pathlib
import re

import numpy as np

from stabie_jax.data.dataset import (
    Dataset,
)
from stabie_jax.data.readers._common import (
    PathLike,
    _check_file,
    _dataset,
    _energy_unit,
    _forces_to_ev_per_angstrom,
    _to_ev,
    _units_record,
)

__all__ = [
    "read_ase",
]


# --- ASE -------------------------------------------------------------------------------------
_SGDML_XYZ_NAME = re.compile(r"^(md17|md22)_.*\.(xyz|extxyz)$", re.IGNORECASE)


def _read_frames(path: pathlib.Path, index: str, format: str | None) -> list:
    """The frames ASE finds in ``path`` (a non-empty list), or a ValueError naming the file."""
    import ase.io  # deferred: ASE's io registry is slow to import

    try:
        frames = ase.io.read(path, index=index, format=format)
    except Exception as e:  # noqa: BLE001 - ASE's parsers raise many types; all mean bad input
        raise ValueError(
            f"{path}: ASE cannot parse the file (format={format or 'from name'}): "
            f"{type(e).__name__}: {e}"
        ) from e
    if not isinstance(frames, list):
        frames = [frames]
    if not frames:
        raise ValueError(f"{path}: no frames found; expected at least one.")
    return frames


def _frame_energy(atoms, results: dict, energy_key: str | None, where: str):
    """``(energy, key)`` of one frame: from ``energy_key`` (info, then calculator), else the
    calculator's ``energy``, else the ``energy``/``Energy`` comment key."""
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
    return energy, key


def _frame_forces(atoms, results: dict, forces_key: str | None, where: str):
    """``[n_atoms, 3]`` forces of one frame: from ``forces_key`` (per-atom array, then
    calculator), else the calculator's ``forces``, else the ``forces`` array."""
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
    return frame_forces


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
    path = pathlib.Path(path)
    src = str(path)
    _check_file(path)
    frames = _read_frames(path, index, format)

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
        energy, key = _frame_energy(atoms, results, energy_key, where)
        frame_forces = _frame_forces(atoms, results, forces_key, where)
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
