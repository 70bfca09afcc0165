"""The immutable :class:`Dataset`: frames of positions with energy and force labels.

A dataset is a trajectory (or an unordered set) of ``F`` frames of one system of ``N`` atoms:

* ``positions``: ``[F, N, 3]`` Å
* ``energies``: ``[F]`` eV (total potential energy)
* ``forces``: ``[F, N, 3]`` eV/Å
* ``atomic_numbers``: ``[N]`` int
* optional ``cell`` ``[3, 3]`` Å (rows are lattice vectors) and ``pbc`` ``[3]`` bool
* optional ``velocities``: ``[F, N, 3]`` Å per internal time unit (``Å·sqrt(eV/amu)``; convert
  from Å/fs with :func:`velocities_from_angstrom_per_fs`)
* ``masses``: ``[N]`` amu (ASE's standard atomic masses unless the file gives them)
* optional ``time_fs``: ``[F]`` simulation time of each frame in fs
* ``metadata``: read-only mapping (source files, original units, ``temperature_kelvin``, name,
  and everything the file's own metadata held).

Everything is converted to these units once, in the readers (:mod:`stabie_jax.data.readers`);
the ``Dataset`` constructor validates shapes, frame counts and finiteness, and freezes every
array (``writeable=False``), so a dataset can be shared between replicas, splits and threads
without defensive copies. Derived datasets (:meth:`Dataset.subset`, :func:`concatenate`) are new
objects.

Examples:
  >>> import numpy as np
  >>> ds = Dataset(
  ...     positions=np.zeros((2, 1, 3)), energies=np.zeros(2), forces=np.zeros((2, 1, 3)),
  ...     atomic_numbers=np.array([1]))
  >>> ds.n_frames, ds.n_atoms, round(float(ds.masses[0]), 3)
  (2, 1, 1.008)
  >>> ds.subset([1]).n_frames
  1
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping, Sequence
from typing import Any

import ase.data
import numpy as np

from stabie_jax import units

__all__ = [
    "Dataset",
    "concatenate",
    "velocities_from_angstrom_per_fs",
    "velocities_to_angstrom_per_fs",
]


def velocities_from_angstrom_per_fs(velocities_angstrom_per_fs):
    """Å/fs → internal velocity units Å per internal time unit."""
    return velocities_angstrom_per_fs / units.fs_to_internal(1.0)


def velocities_to_angstrom_per_fs(velocities_internal):
    """Internal velocity units → Å/fs."""
    return velocities_internal * units.fs_to_internal(1.0)


def _source(metadata: Mapping[str, Any]) -> str:
    files = metadata.get("source_files")
    if files:
        return ", ".join(str(f) for f in files)
    return "<in-memory dataset>"


def _frozen(array: np.ndarray, copy: bool = True) -> np.ndarray:
    """A read-only array: ``array`` itself if it is already a read-only owner of its data, else
    a read-only copy (or, with ``copy=False`` for an array nobody else references, itself)."""
    array = np.asarray(array)
    if not array.flags.writeable and array.flags.owndata:
        return array
    if copy or not array.flags.owndata:
        array = np.array(array, copy=True)
    array.setflags(write=False)
    return array


def _freeze_metadata(value: Any) -> Any:
    """Recursively turns dicts into read-only mappings and lists into tuples."""
    if isinstance(value, Mapping):
        return types.MappingProxyType({str(k): _freeze_metadata(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze_metadata(v) for v in value)
    if isinstance(value, np.ndarray):
        return _frozen(value)
    return value


def thaw_metadata(value: Any) -> Any:
    """Inverse of the freezing done by :class:`Dataset`: plain dicts and lists (JSON-ready)."""
    if isinstance(value, Mapping):
        return {k: thaw_metadata(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [thaw_metadata(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _float_array(name: str, value: Any, shape: tuple, src: str) -> np.ndarray:
    """Validates a float array against ``shape`` (``None`` entries are free) and finiteness."""
    owned = not isinstance(value, np.ndarray)  # built here from a list/scalar: nobody else has it
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{src}: key '{name}' is not an array ({e}).") from e
    if array.dtype.kind not in "fiu":
        raise ValueError(
            f"{src}: key '{name}' has dtype {array.dtype}; expected a real floating-point array."
        )
    expected = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
    mismatch = array.ndim != len(shape) or any(
        s is not None and s != a for s, a in zip(shape, array.shape, strict=True)
    )
    if mismatch:
        raise ValueError(f"{src}: key '{name}' has shape {list(array.shape)}; expected {expected}.")
    if array.dtype != np.float64:
        array, owned = array.astype(np.float64), True
    if not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise ValueError(
            f"{src}: key '{name}' contains {bad} non-finite value(s) (NaN or inf); expected "
            "finite numbers."
        )
    return _frozen(array, copy=not owned)


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Frames of one atomic system with energy/force labels, in eV, Å, amu.

    Attributes:
      positions: ``[F, N, 3]`` Å.
      energies: ``[F]`` eV, or ``None`` for an unlabelled trajectory (only when a reader was
        asked for one explicitly, e.g. velocity-only reference data).
      forces: ``[F, N, 3]`` eV/Å, or ``None`` together with ``energies``.
      atomic_numbers: ``[N]`` int64.
      cell: ``[3, 3]`` Å, rows are lattice vectors; ``None`` for a free molecule.
      pbc: ``[3]`` bool; all False when ``cell`` is ``None``.
      velocities: ``[F, N, 3]`` Å / internal time unit, or ``None``.
      masses: ``[N]`` amu; defaults to ``ase.data.atomic_masses[atomic_numbers]``.
      time_fs: ``[F]`` fs, or ``None`` when the frames carry no time stamps.
      frame_ids: ``[F]`` int64 index of each frame in the trajectory it was drawn from (e.g.
        rMD17's ``old_indices`` into MD17), or ``None``. Lets callers detect duplicates and
        overlaps between files.
      metadata: read-only mapping. Conventional keys: ``source_files`` (tuple of str),
        ``format``, ``original_units`` (mapping), ``temperature_kelvin`` (float or None),
        ``name``; plus whatever the file's metadata held.

    Raises:
      ValueError: at construction, for inconsistent shapes, frame counts that disagree between
        keys, atom counts that disagree, non-finite values, invalid atomic numbers, masses or
        cells. The message names the source file(s), the key and the expectation.
    """

    positions: np.ndarray
    energies: np.ndarray | None
    forces: np.ndarray | None
    atomic_numbers: np.ndarray
    cell: np.ndarray | None = None
    pbc: np.ndarray | None = None
    velocities: np.ndarray | None = None
    masses: np.ndarray | None = None
    time_fs: np.ndarray | None = None
    frame_ids: np.ndarray | None = None
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        metadata = _freeze_metadata(dict(self.metadata))
        src = _source(metadata)
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731

        positions = _float_array("positions", self.positions, (None, None, 3), src)
        n_frames, n_atoms = positions.shape[:2]
        if n_frames < 1 or n_atoms < 1:
            raise ValueError(
                f"{src}: key 'positions' has shape {list(positions.shape)}; expected at least "
                "one frame and one atom."
            )
        set_("positions", _frozen(positions))

        z = np.asarray(self.atomic_numbers)
        if z.ndim != 1 or z.shape[0] != n_atoms:
            raise ValueError(
                f"{src}: key 'atomic_numbers' has shape {list(z.shape)}; expected [{n_atoms}] "
                f"(the number of atoms in 'positions')."
            )
        if z.dtype.kind == "f" and np.all(np.isfinite(z)) and np.all(z == np.round(z)):
            z = z.astype(np.int64)
        if z.dtype.kind not in "iu" or np.any(z < 1) or np.any(z >= len(ase.data.chemical_symbols)):
            raise ValueError(
                f"{src}: key 'atomic_numbers' must hold integers in [1, "
                f"{len(ase.data.chemical_symbols) - 1}]; got dtype {z.dtype}, values {z[:8]}..."
            )
        z = z.astype(np.int64)
        set_("atomic_numbers", _frozen(z))

        if (self.energies is None) != (self.forces is None):
            raise ValueError(
                f"{src}: 'energies' and 'forces' must be given together (both or neither)."
            )
        if self.energies is not None:
            set_("energies", _frozen(_float_array("energies", self.energies, (n_frames,), src)))
            set_(
                "forces",
                _frozen(_float_array("forces", self.forces, (n_frames, n_atoms, 3), src)),
            )

        if self.velocities is not None:
            v = _float_array("velocities", self.velocities, (n_frames, n_atoms, 3), src)
            set_("velocities", _frozen(v))

        if self.masses is None:
            masses = ase.data.atomic_masses[z]
        else:
            masses = _float_array("masses", self.masses, (n_atoms,), src)
            if np.any(masses <= 0):
                raise ValueError(f"{src}: key 'masses' must be positive (amu).")
        set_("masses", _frozen(masses))

        if self.time_fs is not None:
            set_("time_fs", _frozen(_float_array("time_fs", self.time_fs, (n_frames,), src)))

        if self.frame_ids is not None:
            ids = np.asarray(self.frame_ids)
            if ids.shape != (n_frames,) or ids.dtype.kind not in "iu":
                raise ValueError(
                    f"{src}: key 'frame_ids' has shape {list(ids.shape)}, dtype {ids.dtype}; "
                    f"expected [{n_frames}] integers."
                )
            set_("frame_ids", _frozen(ids.astype(np.int64)))

        if self.cell is None:
            if self.pbc is not None and np.any(np.asarray(self.pbc)):
                raise ValueError(
                    f"{src}: key 'pbc' is {np.asarray(self.pbc).tolist()} but no 'cell' was "
                    "given; a periodic system needs a [3, 3] cell in Å."
                )
            set_("pbc", _frozen(np.zeros(3, dtype=bool)))
        else:
            cell = _float_array("cell", self.cell, (3, 3), src)
            pbc = np.ones(3, dtype=bool) if self.pbc is None else np.asarray(self.pbc)
            if pbc.shape != (3,) or pbc.dtype.kind not in "biu":
                raise ValueError(
                    f"{src}: key 'pbc' has shape {list(pbc.shape)} and dtype {pbc.dtype}; "
                    "expected [3] bool."
                )
            pbc = pbc.astype(bool)
            if np.any(pbc) and abs(np.linalg.det(cell)) < 1e-6:
                raise ValueError(
                    f"{src}: key 'cell' is singular (volume {np.linalg.det(cell):.3g} Å^3); "
                    "expected three independent lattice vectors for a periodic system."
                )
            set_("cell", _frozen(cell))
            set_("pbc", _frozen(pbc))

        set_("metadata", metadata)

    # ----------------------------------------------------------------------------------------
    @property
    def n_frames(self) -> int:
        """Number of frames ``F``."""
        return int(self.positions.shape[0])

    @property
    def n_atoms(self) -> int:
        """Number of atoms ``N``."""
        return int(self.positions.shape[1])

    @property
    def has_labels(self) -> bool:
        """Whether energies and forces are present."""
        return self.energies is not None

    @property
    def is_periodic(self) -> bool:
        """Whether any direction is periodic."""
        return bool(np.any(self.pbc))

    @property
    def temperature_kelvin(self) -> float | None:
        """Temperature of the generating ensemble in K, when the source recorded one."""
        value = self.metadata.get("temperature_kelvin")
        return None if value is None else float(value)

    def __len__(self) -> int:
        return self.n_frames

    def __repr__(self) -> str:
        name = self.metadata.get("name", "")
        return (
            f"Dataset(name={name!r}, n_frames={self.n_frames}, n_atoms={self.n_atoms}, "
            f"periodic={self.is_periodic}, labels={self.has_labels}, "
            f"velocities={self.velocities is not None}, source={_source(self.metadata)!r})"
        )

    def replace(self, **changes) -> Dataset:
        """A new dataset with some fields replaced (validated again)."""
        return dataclasses.replace(self, **changes)

    def subset(self, indices: Sequence[int] | np.ndarray) -> Dataset:
        """A new dataset with the frames ``indices`` (in that order; repeats allowed).

        Args:
          indices: ``[K]`` integer frame indices in ``[-F, F)``, or a boolean mask ``[F]``.

        Returns:
          A :class:`Dataset` of ``K`` frames; per-atom arrays, cell and metadata are shared.
        """
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (self.n_frames,):
                raise ValueError(
                    f"subset: boolean mask has shape {list(idx.shape)}; expected [{self.n_frames}]."
                )
            idx = np.flatnonzero(idx)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise ValueError(
                f"subset: indices must be a 1-D integer array; got shape {list(idx.shape)}, "
                f"dtype {idx.dtype}."
            )
        idx = idx.astype(np.int64)
        if idx.size == 0:
            raise ValueError("subset: indices are empty; a Dataset needs at least one frame.")
        if idx.min() < -self.n_frames or idx.max() >= self.n_frames:
            raise ValueError(
                f"subset: indices range [{idx.min()}, {idx.max()}] is outside "
                f"[0, {self.n_frames}) for {_source(self.metadata)}."
            )
        take = lambda a: None if a is None else a[idx]  # noqa: E731
        return dataclasses.replace(
            self,
            positions=self.positions[idx],
            energies=take(self.energies),
            forces=take(self.forces),
            velocities=take(self.velocities),
            time_fs=take(self.time_fs),
            frame_ids=take(self.frame_ids),
        )


def concatenate(datasets: Sequence[Dataset]) -> Dataset:
    """Joins datasets of the same system frame-wise.

    The atomic numbers, masses, cell and pbc must agree exactly; energies/forces and velocities
    must be present in all or none. Metadata: ``source_files`` are joined, the other keys are
    taken from the first dataset, and ``concatenated_frames`` records the frame count of each
    part. ``time_fs`` is kept only if every part has it.

    Raises:
      ValueError: naming the first dataset that disagrees and what differs.
    """
    datasets = list(datasets)
    if not datasets:
        raise ValueError("concatenate: no datasets given.")
    first = datasets[0]
    if len(datasets) == 1:
        return first
    for other in datasets[1:]:
        src = _source(other.metadata)
        if not np.array_equal(other.atomic_numbers, first.atomic_numbers):
            raise ValueError(
                f"{src}: key 'atomic_numbers' differs from {_source(first.metadata)}; expected "
                f"the same {first.n_atoms} atoms in the same order."
            )
        if not np.allclose(other.masses, first.masses):
            raise ValueError(f"{src}: key 'masses' differs from {_source(first.metadata)}.")
        if other.cell is None or first.cell is None:
            same_cell = other.cell is None and first.cell is None
        else:
            same_cell = np.allclose(other.cell, first.cell)
        if not same_cell or not np.array_equal(other.pbc, first.pbc):
            raise ValueError(f"{src}: keys 'cell'/'pbc' differ from {_source(first.metadata)}.")
        if other.has_labels != first.has_labels:
            raise ValueError(
                f"{src}: has energies/forces={other.has_labels}, but "
                f"{_source(first.metadata)} has {first.has_labels}; expected the same."
            )
        if (other.velocities is None) != (first.velocities is None):
            raise ValueError(f"{src}: key 'velocities' present in some files but not in others.")
    cat = lambda name: (  # noqa: E731
        None
        if any(getattr(d, name) is None for d in datasets)
        else np.concatenate([getattr(d, name) for d in datasets])
    )
    metadata = thaw_metadata(first.metadata)
    metadata["source_files"] = [f for d in datasets for f in d.metadata.get("source_files", ())]
    metadata["concatenated_frames"] = [d.n_frames for d in datasets]
    return Dataset(
        positions=cat("positions"),
        energies=cat("energies"),
        forces=cat("forces"),
        atomic_numbers=first.atomic_numbers,
        cell=first.cell,
        pbc=first.pbc,
        velocities=cat("velocities"),
        masses=first.masses,
        time_fs=cat("time_fs"),
        frame_ids=cat("frame_ids"),
        metadata=metadata,
    )
