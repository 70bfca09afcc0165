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

One module per format: ``npz`` (the npz formats and MDsim's ``water.npy``), ``ase_files``
(extxyz and everything ASE reads), ``writers`` (npz and extxyz out); ``_common`` holds the unit
conversions and checks they share. :func:`read_file` dispatches on the file name.
"""

from __future__ import annotations

import pathlib

from stabie_jax.data.dataset import Dataset
from stabie_jax.data.readers._common import (
    ENERGY_UNITS,
    LENGTH_UNITS,
    MAX_PLAUSIBLE_FORCE_EV_PER_ANGSTROM,
    MIN_PLAUSIBLE_DISTANCE_ANGSTROM,
    PathLike,
    _check_plausible_magnitudes,
    max_plausible_energy_ev,
)
from stabie_jax.data.readers.ase_files import (
    read_ase,
)
from stabie_jax.data.readers.npz import (
    NPZ_FORMATS,
    detect_npz_format,
    read_mdsim_water_npy,
    read_npz,
    read_openmm_water_npz,
    read_rmd17_npz,
    read_sgdml_npz,
    read_stabie_npz,
)
from stabie_jax.data.readers.writers import (
    save_dataset,
    write_extxyz,
)

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


# --- dispatch ----------------------------------------------------------------------------------
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
