"""An ASE calculator backed by a stabie_jax model, for ASE MD, optimisation and vibrations.

:class:`StabieCalculator` wraps either a model checkpoint directory (written by
:func:`stabie_jax.checkpoint.save_model_checkpoint`, e.g. after pretraining or StABlE training)
or an in-memory ``(module, params, metadata)`` triple, or a ready :class:`Potential`.

Space: for ``atoms.pbc`` all False the free space is used; for all True, JAX-MD's
``space.periodic_general`` in real (Cartesian) coordinates with the box passed at call time as
``box = atoms.cell.T`` (JAX-MD boxes hold lattice vectors as columns, ASE cells as rows), so a
changing cell (e.g. a cell filter) reuses the compiled function. The minimum-image convention
needs the model cutoff to be at most half the smallest perpendicular cell width; a smaller cell
is rejected with a ValueError. Mixed periodicity is not supported.

Neighbour lists: by default systems of more than ``dense_max_atoms`` atoms (free or periodic)
use a JAX-MD sparse neighbour list (rebuilt exactly on every call, no skin; reallocated on
overflow) instead of all ``N(N−1)`` pairs as model edges.

Precision: positions are converted with ``jnp.asarray``, so the model runs in float32 unless
the application enabled ``jax_enable_x64``; the per-species energy shifts (order 1e4 eV for a
molecule) are added on the host in float64, so the float32 part carries only the small model
energy. Float32 still limits finite-difference vibrational analysis to displacements of about
0.01 Å.

The jitted energy+forces functions are built once per space kind at construction and are not
retraced across calls with the same atom count (``trace_count`` records compilations).
Properties: ``energy``, ``free_energy`` (= energy, no electronic entropy), ``forces`` and
per-atom ``energies``, in eV and eV/Å.

Examples:
  >>> from ase.build import molecule                                     # doctest: +SKIP
  >>> atoms = molecule("H2O"); atoms.calc = StabieCalculator("model_dir")  # doctest: +SKIP
  >>> atoms.get_forces()                                                  # doctest: +SKIP
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from jax_md import partition, space

from stabie_jax.checkpoint import ModelMetadata, load_model_checkpoint, make_model_potential
from stabie_jax.md.neighbors import neighbor_list_fn
from stabie_jax.models.potential import Potential
from stabie_jax.models.scale_shift import shift_table

__all__ = [
    "DENSE_MAX_ATOMS",
    "StabieCalculator",
]

DENSE_MAX_ATOMS = 64


class _SpaceFns(NamedTuple):
    """Compiled functions of one space: energies+forces, and the neighbour-list pair."""

    energy_forces: Callable
    neighbor_fn: Any
    neighbor_update: Callable | None


def _min_perpendicular_width(cell: np.ndarray) -> float:
    volume = abs(np.linalg.det(cell))
    widths = [
        volume / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3])) for i in range(3)
    ]
    return float(min(widths))


class StabieCalculator(Calculator):
    """ASE calculator for a stabie_jax model.

    Exactly one source must be given:

    * ``checkpoint``: a model checkpoint directory;
    * ``module``, ``params`` and ``metadata`` (:class:`~stabie_jax.checkpoint.ModelMetadata`);
    * ``potential``, ``params`` and ``atomic_numbers``: a ready :class:`Potential` used as it
      is (its space is fixed; ``atoms.cell`` and ``atoms.pbc`` are ignored).

    Args:
      checkpoint: directory of a model checkpoint.
      module, params, metadata: an in-memory model.
      potential, atomic_numbers: a ready potential and the atomic numbers it was built for.
      neighbor_list: force (True) or forbid (False) neighbour lists; default: automatic for
        more than ``dense_max_atoms`` atoms (model sources only).
      dense_max_atoms: threshold of the automatic choice.
      capacity_multiplier: neighbour-list over-allocation factor.
      **kwargs: forwarded to :class:`ase.calculators.calculator.Calculator`.

    Raises:
      ValueError: inconsistent sources; at calculation time, atomic numbers that differ from
        the model's, mixed periodicity, or a cell too small for the cutoff.
    """

    implemented_properties = ["energy", "free_energy", "forces", "energies"]

    def __init__(
        self,
        checkpoint=None,
        *,
        module=None,
        params=None,
        metadata: ModelMetadata | None = None,
        potential: Potential | None = None,
        atomic_numbers=None,
        neighbor_list: bool | None = None,
        dense_max_atoms: int = DENSE_MAX_ATOMS,
        capacity_multiplier: float = 1.25,
        **kwargs,
    ):
        super().__init__(**kwargs)
        sources = [checkpoint is not None, module is not None, potential is not None]
        if sum(sources) != 1:
            raise ValueError(
                "StabieCalculator needs exactly one of checkpoint=DIR, module=+params=+metadata=,"
                " or potential=+params=+atomic_numbers="
            )
        self.trace_count = 0
        self._capacity = None  # GemNet-T's neighbour-table size, when the model has one
        self._capacity_multiplier = float(capacity_multiplier)
        if checkpoint is not None:
            module, params, metadata = load_model_checkpoint(checkpoint)
        if potential is not None:
            if params is None or atomic_numbers is None:
                raise ValueError("potential= needs params= and atomic_numbers=")
            self.atomic_numbers = np.asarray(atomic_numbers, dtype=int)
            self._host_shift = np.zeros(len(self.atomic_numbers))
            self.cutoff = None
            self.uses_neighbor_list = False
            self._fixed = self._jit(potential, with_box=False, with_neighbors=False)
        else:
            if params is None or metadata is None:
                raise ValueError("module= needs params= and metadata=")
            self.atomic_numbers = np.asarray(metadata.atomic_numbers, dtype=int)
            self._host_shift = shift_table(metadata.energy_shift)[self.atomic_numbers]
            self.cutoff = float(metadata.cutoff_angstrom)
            self._fixed = None
            capacity = getattr(module, "neighbor_capacity", None)
            self._capacity = None if capacity is None else int(capacity)
            n_atoms = len(self.atomic_numbers)
            self.uses_neighbor_list = (
                n_atoms > dense_max_atoms if neighbor_list is None else bool(neighbor_list)
            )
            free_displacement, _ = space.free()
            periodic_displacement, _ = space.periodic_general(
                jnp.eye(3), fractional_coordinates=False
            )
            self._spaces = {
                "free": self._space_fns(module, metadata, free_displacement, with_box=False),
                "periodic": self._space_fns(module, metadata, periodic_displacement, with_box=True),
            }
            self._neighbors = {"free": None, "periodic": None}
            self._displacements = {"free": free_displacement, "periodic": periodic_displacement}
        self.params = params

    def _space_fns(self, module, metadata, displacement_fn, *, with_box: bool) -> _SpaceFns:
        # The per-species shifts are added on the host in float64 (see calculate()).
        potential = make_model_potential(
            module,
            metadata._replace(energy_shift={}),
            displacement_fn,
            use_neighbor_list=self.uses_neighbor_list,
        )
        energy_forces = self._jit(
            potential, with_box=with_box, with_neighbors=self.uses_neighbor_list
        )
        if not self.uses_neighbor_list:
            return _SpaceFns(energy_forces, None, None)
        # dr_threshold 0: rebuilt exactly on every call (ASE moves atoms arbitrarily between
        # calls); no cell list, so any box shape works and the box can change between calls.
        neighbor_fn = neighbor_list_fn(
            displacement_fn,
            jnp.eye(3),
            self.cutoff,
            capacity_multiplier=self._capacity_multiplier,
            format=partition.Sparse,
        )
        update = jax.jit(lambda r, nbrs, **kw: neighbor_fn.update(r, nbrs, **kw))
        return _SpaceFns(energy_forces, neighbor_fn, update)

    def _jit(self, potential: Potential, *, with_box: bool, with_neighbors: bool):
        def energies_and_forces(params, positions, box, neighbor):
            self.trace_count += 1  # Python side effect: runs only while tracing.
            kwargs = {"box": box} if with_box else {}
            nbr = neighbor if with_neighbors else None

            def total(r):
                e_i = potential.per_atom_energy_fn(params, r, nbr, **kwargs)
                return jnp.sum(e_i), e_i

            (energy, per_atom), grad = jax.value_and_grad(total, has_aux=True)(positions)
            return energy, per_atom, -grad

        return jax.jit(energies_and_forces)

    def _raise_if_table_overflow(self, positions, pbc, box) -> None:
        """Name the fix when a non-finite result is a GemNet-T neighbour-table overflow."""
        if self._capacity is None:
            return
        from stabie_jax.models.gemnet_table import max_neighbors_in_frames

        kind = "periodic" if pbc.any() else "free"
        displacement = self._displacements[kind]
        if box is not None:
            displacement = functools.partial(displacement, box=box)
        most = max_neighbors_in_frames(positions[None], displacement, self.cutoff)
        if most > self._capacity:
            raise ValueError(
                f"GemNet-T neighbour table overflow: an atom has {most} neighbours inside the "
                f"{self.cutoff:g} Å cutoff but neighbor_capacity={self._capacity}; rebuild the "
                f"module with GemNetT(..., neighbor_capacity={int(np.ceil(1.25 * most))}) and "
                "pass it with module=, params=, metadata= (the parameters are unchanged)"
            )

    def _check_atoms(self, atoms) -> None:
        numbers = atoms.get_atomic_numbers()
        if len(numbers) != len(self.atomic_numbers) or np.any(numbers != self.atomic_numbers):
            raise ValueError(
                "atomic numbers of the atoms "
                f"{numbers.tolist()} do not match the model's {self.atomic_numbers.tolist()} "
                "(same elements in the same order are required)"
            )

    def _periodic_box(self, atoms) -> jax.Array:
        cell = np.asarray(atoms.cell.array, dtype=np.float64)
        if abs(np.linalg.det(cell)) < 1e-12:
            raise ValueError("atoms.pbc is True but the cell is degenerate (zero volume)")
        width = _min_perpendicular_width(cell)
        if self.cutoff is not None and self.cutoff > 0.5 * width:
            raise ValueError(
                f"cell too small for the minimum-image convention: cutoff {self.cutoff} Å > "
                f"half the smallest cell width {width:.3f} Å; use a supercell (atoms.repeat)"
            )
        return jnp.asarray(cell.T)

    def _evaluate(self, kind: str, positions, box):
        fns = self._spaces[kind]
        kwargs = {} if kind == "free" else {"box": box}
        nbrs = None
        if fns.neighbor_fn is not None:
            nbrs = self._neighbors[kind]
            if nbrs is None:
                nbrs = fns.neighbor_fn.allocate(positions, **kwargs)
            nbrs = fns.neighbor_update(positions, nbrs, **kwargs)
            if bool(nbrs.did_buffer_overflow):
                nbrs = fns.neighbor_fn.allocate(positions, **kwargs)
            self._neighbors[kind] = nbrs
        return fns.energy_forces(self.params, positions, box, nbrs)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        """Compute all implemented properties for ``atoms`` (ASE calls this)."""
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        self._check_atoms(atoms)
        if not np.all(np.isfinite(atoms.get_positions())):
            raise ValueError("atoms.positions has NaN or inf entries; the model needs finite ones")
        positions = jnp.asarray(atoms.get_positions())
        pbc = np.asarray(atoms.pbc, dtype=bool)
        dummy_box = jnp.eye(3, dtype=positions.dtype)
        box = None
        if self._fixed is not None:
            energy, per_atom, forces = self._fixed(self.params, positions, dummy_box, None)
        elif not pbc.any():
            energy, per_atom, forces = self._evaluate("free", positions, dummy_box)
        elif pbc.all():
            box = self._periodic_box(atoms).astype(positions.dtype)
            energy, per_atom, forces = self._evaluate("periodic", positions, box)
        else:
            raise ValueError(f"mixed periodic boundary conditions {pbc.tolist()} are not supported")
        if not (np.isfinite(energy) and np.all(np.isfinite(forces))):
            self._raise_if_table_overflow(positions, pbc, box)
            raise ValueError(
                "the model returned a non-finite energy or forces for these positions "
                "(coincident atoms? atoms far outside the training distribution?)"
            )
        per_atom = np.asarray(per_atom, dtype=np.float64) + self._host_shift
        energy = float(energy) + float(np.sum(self._host_shift))
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": per_atom,
            "forces": np.asarray(forces, dtype=np.float64),
        }
