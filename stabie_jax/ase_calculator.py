"""An ASE calculator backed by a stabie_jax model, for ASE MD, optimisation and vibrations.

:class:`StabieCalculator` wraps either a model checkpoint directory (written by
:func:`stabie_jax.checkpoint.save_model_checkpoint`, e.g. after pretraining or StABlE training)
or an in-memory ``(module, params, metadata)`` triple, or a ready :class:`Potential`.

Any structure of the model's species: the atoms may come in any order and number (the models
are local: the energy is a sum of per-atom terms of each atom's neighbourhood), so a model
trained on one aspirin conformer runs a shuffled aspirin, and a model trained on a 64-water box
runs 128 waters. Elements the model was not trained on are refused. The functions (and
neighbour lists) are compiled once per atom list and kept.

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

The jitted energy+forces functions are built on first use for each (space kind, atom list) and
are not retraced across calls with the same atoms (``trace_count`` records compilations).
Properties: ``energy``, ``free_energy`` (= energy, no electronic entropy), ``forces``, per-atom
``energies``, in eV and eV/Å, and for periodic cells ``stress`` (eV/Å³, ASE's Voigt order
xx, yy, zz, yz, xz, xy): ``σ = (1/V)·∂E/∂ε`` at zero strain, by automatic differentiation with
every displacement deformed as ``d → (1+ε)d`` (JAX-MD's ``perturbation`` argument, the route of
``jax_md.quantity.stress``), so ``ase.md.npt`` and ``ase.filters.FrechetCellFilter`` can use it.

Examples:
  >>> from ase.build import molecule                                     # doctest: +SKIP
  >>> atoms = molecule("H2O"); atoms.calc = StabieCalculator("model_dir")  # doctest: +SKIP
  >>> atoms.get_forces()                                                  # doctest: +SKIP
  >>> box = read("water.extxyz"); box.calc = StabieCalculator("water_model")  # doctest: +SKIP
  >>> box.get_stress()                           # eV/Å³, Voigt               # doctest: +SKIP
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress
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


class _SystemFns(NamedTuple):
    """Compiled functions for one space and one list of atomic numbers."""

    energy_forces: Callable  # (params, positions, box, neighbor) -> (E, e_i, F, dE/dε)
    neighbor_fn: Any
    neighbor_update: Callable | None
    host_shift: np.ndarray  # [N] eV, per-species shifts added on the host in float64
    uses_neighbor_list: bool


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
      is (its space and atom list are fixed; ``atoms.cell`` and ``atoms.pbc`` are ignored).

    Args:
      checkpoint: directory of a model checkpoint.
      module, params, metadata: an in-memory model.
      potential, atomic_numbers: a ready potential and the atomic numbers it was built for.
      neighbor_list: force (True) or forbid (False) neighbour lists; default: automatic for
        more than ``dense_max_atoms`` atoms (model sources only).
      dense_max_atoms: threshold of the automatic choice.
      capacity_multiplier: neighbour-list over-allocation factor.
      **kwargs: forwarded to :class:`ase.calculators.calculator.Calculator`.

    Attributes:
      atomic_numbers: ``[N]`` of the training system (model sources) or of the potential.
      species: the elements the model can compute (sorted atomic numbers).
      uses_neighbor_list: whether the last computed system (before any, the training system)
        used a neighbour list.
      trace_count: number of compilations so far (one per atom list and space kind).

    Raises:
      ValueError: inconsistent sources; at calculation time, elements the model was not trained
        on (for ``potential=``: another atom list), mixed periodicity, or a cell too small for
        the cutoff.
    """

    implemented_properties = ["energy", "free_energy", "forces", "energies", "stress"]

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
        self._neighbor_list = neighbor_list
        self._dense_max_atoms = int(dense_max_atoms)
        self._systems: dict[tuple, _SystemFns] = {}
        self._neighbors: dict[tuple, Any] = {}
        if checkpoint is not None:
            module, params, metadata = load_model_checkpoint(checkpoint)
        if potential is not None:
            if params is None or atomic_numbers is None:
                raise ValueError("potential= needs params= and atomic_numbers=")
            self.atomic_numbers = np.asarray(atomic_numbers, dtype=int)
            self.cutoff = None
            self.uses_neighbor_list = False
            self._fixed = _SystemFns(
                self._jit(potential, with_box=False, with_neighbors=False),
                None,
                None,
                np.zeros(len(self.atomic_numbers)),
                False,
            )
        else:
            if params is None or metadata is None:
                raise ValueError("module= needs params= and metadata=")
            self.atomic_numbers = np.asarray(metadata.atomic_numbers, dtype=int)
            self.cutoff = float(metadata.cutoff_angstrom)
            self._fixed = None
            self._module, self._metadata = module, metadata
            self._shift_table = shift_table(metadata.energy_shift)
            capacity = getattr(module, "neighbor_capacity", None)
            self._capacity = None if capacity is None else int(capacity)
            self.uses_neighbor_list = self._wants_neighbor_list(len(self.atomic_numbers))
            free_displacement, _ = space.free()
            periodic_displacement, _ = space.periodic_general(
                jnp.eye(3), fractional_coordinates=False
            )
            self._displacements = {"free": free_displacement, "periodic": periodic_displacement}
        self.species = tuple(sorted({int(z) for z in self.atomic_numbers}))
        self.params = params

    def _wants_neighbor_list(self, n_atoms: int) -> bool:
        if self._neighbor_list is None:
            return n_atoms > self._dense_max_atoms
        return bool(self._neighbor_list)

    def _system(self, kind: str, numbers: np.ndarray) -> _SystemFns:
        """The compiled functions for ``numbers`` in space ``kind`` (built on first use)."""
        key = (kind, tuple(int(z) for z in numbers))
        if key in self._systems:
            return self._systems[key]
        displacement_fn = self._displacements[kind]
        with_neighbors = self._wants_neighbor_list(len(numbers))
        # The per-species shifts are added on the host in float64 (see calculate()).
        potential = make_model_potential(
            self._module,
            self._metadata._replace(energy_shift={}, atomic_numbers=key[1]),
            displacement_fn,
            use_neighbor_list=with_neighbors,
        )
        energy_forces = self._jit(
            potential, with_box=kind == "periodic", with_neighbors=with_neighbors
        )
        neighbor_fn = update = None
        if with_neighbors:
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
        fns = _SystemFns(
            energy_forces,
            neighbor_fn,
            update,
            self._shift_table[np.asarray(numbers)],
            with_neighbors,
        )
        self._systems[key] = fns
        return fns

    def _jit(self, potential: Potential, *, with_box: bool, with_neighbors: bool):
        def energies_forces_strain(params, positions, box, neighbor):
            self.trace_count += 1  # Python side effect: runs only while tracing.
            nbr = neighbor if with_neighbors else None

            def total(r, strain):
                if not with_box:
                    e_i = potential.per_atom_energy_fn(params, r, nbr)
                    return jnp.sum(e_i), e_i
                # Every displacement deformed by (1 + ε): dE/dε at ε = 0 is V·σ. JAX-MD's
                # ``perturbation`` is applied without the custom JVP of ``space.transform``
                # (which keeps gradients in real space and so drops the box derivative).
                deform = jnp.eye(3, dtype=r.dtype) + strain
                e_i = potential.per_atom_energy_fn(params, r, nbr, box=box, perturbation=deform)
                return jnp.sum(e_i), e_i

            strain = jnp.zeros((3, 3), positions.dtype)
            (energy, per_atom), (g_r, g_strain) = jax.value_and_grad(
                total, argnums=(0, 1), has_aux=True
            )(positions, strain)
            return energy, per_atom, -g_r, g_strain

        return jax.jit(energies_forces_strain)

    def _raise_if_table_overflow(self, positions, pbc, box) -> None:
        """Name the fix when a non-finite result is a GemNet-T neighbour-table overflow."""
        if self._capacity is None:
            return
        from stabie_jax.models.gemnet_table import max_neighbors_in_frames, overflow_message

        kind = "periodic" if pbc.any() else "free"
        displacement = self._displacements[kind]
        if box is not None:
            displacement = functools.partial(displacement, box=box)
        most = max_neighbors_in_frames(positions[None], displacement, self.cutoff)
        if most > self._capacity:
            raise ValueError(
                overflow_message(
                    most,
                    self._capacity,
                    self.cutoff,
                    fix=(
                        "GemNetT(..., neighbor_capacity={n}) and pass it with module=, params=, "
                        "metadata="
                    ),
                )
            )

    def _check_atoms(self, numbers: np.ndarray) -> None:
        if self._fixed is not None:
            if len(numbers) != len(self.atomic_numbers) or np.any(numbers != self.atomic_numbers):
                raise ValueError(
                    f"atomic numbers of the atoms {numbers.tolist()} do not match the "
                    f"potential's {self.atomic_numbers.tolist()} (a ready potential= is built for "
                    "one atom list: same elements in the same order; pass the model with "
                    "checkpoint= or module= to compute any structure of its species)"
                )
            return
        unknown = sorted({int(z) for z in numbers} - set(self.species))
        if unknown:
            raise ValueError(
                f"the atoms contain element(s) {unknown} the model was not trained on (its "
                f"species: {list(self.species)}); it can compute any structure of those species"
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

    def _evaluate(self, fns: _SystemFns, key: tuple, positions, box):
        kwargs = {} if key[0] == "free" else {"box": box}
        nbrs = None
        if fns.neighbor_fn is not None:
            nbrs = self._neighbors.get(key)
            if nbrs is None:
                nbrs = fns.neighbor_fn.allocate(positions, **kwargs)
            nbrs = fns.neighbor_update(positions, nbrs, **kwargs)
            if bool(nbrs.did_buffer_overflow):
                nbrs = fns.neighbor_fn.allocate(positions, **kwargs)
            self._neighbors[key] = nbrs
        return fns.energy_forces(self.params, positions, box, nbrs)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        """Compute all implemented properties for ``atoms`` (ASE calls this); ``stress`` only
        for periodic cells."""
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        numbers = np.asarray(atoms.get_atomic_numbers(), dtype=int)
        self._check_atoms(numbers)
        if not np.all(np.isfinite(atoms.get_positions())):
            raise ValueError("atoms.positions has NaN or inf entries; the model needs finite ones")
        positions = jnp.asarray(atoms.get_positions())
        pbc = np.asarray(atoms.pbc, dtype=bool)
        box = None
        if self._fixed is not None:
            fns, key = self._fixed, ("fixed",)
        elif not pbc.any():
            key = ("free",)
            fns = self._system("free", numbers)
        elif pbc.all():
            box = self._periodic_box(atoms).astype(positions.dtype)
            key = ("periodic",)
            fns = self._system("periodic", numbers)
        else:
            raise ValueError(f"mixed periodic boundary conditions {pbc.tolist()} are not supported")
        key = key + tuple(int(z) for z in numbers)
        self.uses_neighbor_list = fns.uses_neighbor_list
        box_arg = jnp.eye(3, dtype=positions.dtype) if box is None else box
        energy, per_atom, forces, de_dstrain = self._evaluate(fns, key, positions, box_arg)
        if not (np.isfinite(energy) and np.all(np.isfinite(forces))):
            self._raise_if_table_overflow(positions, pbc, box)
            raise ValueError(
                "the model returned a non-finite energy or forces for these positions "
                "(coincident atoms? atoms far outside the training distribution?)"
            )
        per_atom = np.asarray(per_atom, dtype=np.float64) + fns.host_shift
        energy = float(energy) + float(np.sum(fns.host_shift))
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": per_atom,
            "forces": np.asarray(forces, dtype=np.float64),
        }
        if box is not None and self._fixed is None:
            g = np.asarray(de_dstrain, dtype=np.float64)
            volume = abs(float(np.linalg.det(atoms.cell.array)))
            self.results["stress"] = full_3x3_to_voigt_6_stress(0.5 * (g + g.T) / volume)
