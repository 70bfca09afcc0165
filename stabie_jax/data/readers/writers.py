"""Writing datasets: the stabie ``.npz`` format and extxyz, atomically."""

from __future__ import annotations

import json
import os
import pathlib
import tempfile

import numpy as np

from stabie_jax.data.dataset import (
    Dataset,
    thaw_metadata,
    velocities_to_angstrom_per_fs,
)
from stabie_jax.data.readers._common import PathLike
from stabie_jax.jsonable import to_jsonable

__all__ = [
    "save_dataset",
    "write_extxyz",
]


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
