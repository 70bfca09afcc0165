"""Tests of the ASE calculator against the pure potential functions."""

from __future__ import annotations

import ase
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import units as ase_units
from ase.md.verlet import VelocityVerlet
from ase.neighborlist import neighbor_list
from jax_md import space
from toy_model import TOY_KIND, PairMLP, register_toy_model

from stabie_jax.ase_calculator import StabieCalculator
from stabie_jax.checkpoint import ModelMetadata, make_model_potential, save_model_checkpoint
from stabie_jax.models.graph import Graph
from stabie_jax.models.registry import init_params, model_hparams

CUTOFF = 3.0


def toy_model(z):
    register_toy_model()
    module = PairMLP(hidden=8, cutoff=CUTOFF)
    params = init_params(module, z, jax.random.PRNGKey(1))
    metadata = ModelMetadata(
        kind=TOY_KIND,
        hparams=model_hparams(module),
        atomic_numbers=tuple(int(a) for a in z),
        cutoff_angstrom=CUTOFF,
        energy_scale=1.3,
        energy_shift={1: -0.5, 8: -2.0},
    )
    return module, params, metadata


def water_molecule():
    return ase.Atoms("OH2", positions=[[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])


def periodic_box(n_side=2, cell=None, seed=0):
    """Water-like O/H arrangement in a periodic (possibly triclinic) cell."""
    rng = np.random.default_rng(seed)
    if cell is None:
        cell = np.diag([6.5, 6.2, 6.8])
    frac = (
        np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.25
    ) / n_side
    oxygens = frac @ cell
    positions, symbols = [], []
    for o in oxygens:
        positions += [o, o + [0.96, 0.0, 0.0], o + [-0.24, 0.93, 0.0]]
        symbols += ["O", "H", "H"]
    positions = np.array(positions) + 0.05 * rng.standard_normal((len(positions), 3))
    return ase.Atoms(symbols, positions=positions, cell=cell, pbc=True)


def ase_reference_energy(module, params, metadata, atoms):
    """Independent route: ASE's own periodic neighbour list gives the edge vectors."""
    i, j, d = neighbor_list("ijD", atoms, CUTOFF)
    # ASE: D = R[j] - R[i] + shift; our convention: vector = R[receiver] - R[sender].
    graph = Graph(
        jnp.asarray(d, jnp.float32),
        jnp.asarray(i, jnp.int32),
        jnp.asarray(j, jnp.int32),
        jnp.ones(len(i), bool),
    )
    z = jnp.asarray(atoms.get_atomic_numbers())
    u = jax.jit(module.apply)({"params": params}, z, graph)
    shift = np.array([metadata.energy_shift[int(a)] for a in atoms.get_atomic_numbers()])
    return float(metadata.energy_scale * jnp.sum(u) + shift.sum())


def test_free_molecule_matches_potential_functions(tmp_path):
    atoms = water_molecule()
    module, params, metadata = toy_model(atoms.get_atomic_numbers())
    save_model_checkpoint(tmp_path / "model", params, metadata)
    atoms.calc = StabieCalculator(tmp_path / "model")
    pot = make_model_potential(module, metadata, space.free()[0])
    r = jnp.asarray(atoms.get_positions(), jnp.float32)
    energy, forces = jax.jit(lambda p: (pot.energy_fn(p, r), pot.force_fn(p, r)))(params)
    assert atoms.get_potential_energy() == pytest.approx(float(energy), rel=1e-6)
    assert atoms.get_potential_energy(force_consistent=True) == pytest.approx(float(energy))
    np.testing.assert_allclose(atoms.get_forces(), forces, rtol=1e-5, atol=1e-6)
    assert np.abs(atoms.get_forces()).max() > 1e-3
    np.testing.assert_allclose(atoms.get_potential_energies().sum(), float(energy), rtol=1e-6)
    # Translation and rotation leave the energy unchanged and rotate the forces.
    f0 = atoms.get_forces()
    rot = atoms.copy()
    rot.calc = atoms.calc
    rot.rotate(37.0, (1.0, 2.0, 0.5), center="COM")
    rot.translate([3.0, -1.0, 2.0])
    assert rot.get_potential_energy() == pytest.approx(float(energy), rel=1e-5)
    rmat = np.linalg.lstsq(
        atoms.get_positions() - atoms.get_center_of_mass(),
        rot.get_positions() - rot.get_center_of_mass(),
        rcond=None,
    )[0]
    np.testing.assert_allclose(rot.get_forces(), f0 @ rmat, atol=2e-5)


@pytest.mark.parametrize(
    "cell",
    [np.diag([6.5, 6.2, 6.8]), np.array([[6.6, 0.0, 0.0], [1.2, 6.3, 0.0], [0.8, -0.7, 6.5]])],
    ids=["orthorhombic", "triclinic"],
)
def test_periodic_cell_matches_ase_neighbor_list_and_finite_differences(cell):
    atoms = periodic_box(cell=cell)
    module, params, metadata = toy_model(atoms.get_atomic_numbers())
    calc = StabieCalculator(module=module, params=params, metadata=metadata, neighbor_list=False)
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    assert energy == pytest.approx(ase_reference_energy(module, params, metadata, atoms), rel=1e-5)
    # Same as the pure functions with an explicit JAX-MD periodic_general space.
    disp, _ = space.periodic_general(jnp.asarray(cell.T), fractional_coordinates=False)
    pot = make_model_potential(module, metadata, disp)
    r = jnp.asarray(atoms.get_positions(), jnp.float32)
    np.testing.assert_allclose(atoms.get_forces(), jax.jit(pot.force_fn)(params, r), atol=1e-5)
    # Wrapping an atom by a lattice vector changes nothing.
    shifted = atoms.copy()
    shifted.positions[4] += cell[1] - cell[2]
    shifted.calc = calc
    assert shifted.get_potential_energy() == pytest.approx(energy, rel=1e-5)
    np.testing.assert_allclose(shifted.get_forces(), atoms.get_forces(), atol=2e-5)
    # Forces are -dE/dR (central differences on one coordinate, float32 tolerance).
    h = 1e-2
    plus, minus = atoms.copy(), atoms.copy()
    plus.positions[2, 1] += h
    minus.positions[2, 1] -= h
    plus.calc = minus.calc = calc
    fd = -(plus.get_potential_energy() - minus.get_potential_energy()) / (2 * h)
    assert atoms.get_forces()[2, 1] == pytest.approx(fd, abs=5e-3 + 1e-2 * abs(fd))
    assert calc.trace_count == 1  # one compilation for all cells and positions above


def test_neighbor_list_path_equals_dense_path():
    atoms = periodic_box(n_side=3, cell=np.diag([8.0, 8.3, 8.6]))
    module, params, metadata = toy_model(atoms.get_atomic_numbers())
    dense = StabieCalculator(module=module, params=params, metadata=metadata, neighbor_list=False)
    sparse = StabieCalculator(module=module, params=params, metadata=metadata)
    assert sparse.uses_neighbor_list and not dense.uses_neighbor_list  # 81 atoms > 64
    a, b = atoms.copy(), atoms.copy()
    a.calc, b.calc = dense, sparse
    assert b.get_potential_energy() == pytest.approx(a.get_potential_energy(), rel=1e-5)
    np.testing.assert_allclose(b.get_forces(), a.get_forces(), atol=1e-5)
    # Free space (same atoms, no periodicity) also has a neighbour-list path.
    fa, fb = atoms.copy(), atoms.copy()
    fa.pbc = fb.pbc = False
    fa.calc, fb.calc = dense, sparse
    assert fb.get_potential_energy() == pytest.approx(fa.get_potential_energy(), rel=1e-5)
    np.testing.assert_allclose(fb.get_forces(), fa.get_forces(), atol=1e-5)
    assert abs(fa.get_potential_energy() - a.get_potential_energy()) > 1e-3  # PBC matters
    # Compress the cell: more neighbours than allocated -> reallocation, still exact.
    for calc_atoms in (a, b):
        calc_atoms.set_cell(np.diag([6.4, 6.6, 6.9]), scale_atoms=True)
    assert b.get_potential_energy() == pytest.approx(a.get_potential_energy(), rel=1e-5)
    np.testing.assert_allclose(b.get_forces(), a.get_forces(), atol=1e-5)


def test_errors():
    atoms = water_molecule()
    module, params, metadata = toy_model(atoms.get_atomic_numbers())
    calc = StabieCalculator(module=module, params=params, metadata=metadata)
    wrong = ase.Atoms("OHF", positions=atoms.get_positions())
    wrong.calc = calc
    with pytest.raises(ValueError, match=r"element\(s\) \[9\] the model was not trained on"):
        wrong.get_potential_energy()
    mixed = atoms.copy()
    mixed.set_cell(np.eye(3) * 10.0)
    mixed.pbc = [True, True, False]
    mixed.calc = calc
    with pytest.raises(ValueError, match="mixed periodic"):
        mixed.get_forces()
    small = atoms.copy()
    small.set_cell(np.eye(3) * 5.0)
    small.pbc = True
    small.calc = calc
    with pytest.raises(ValueError, match="cell too small"):
        small.get_forces()
    broken = atoms.copy()
    positions = broken.get_positions()
    positions[1, 0] = np.nan
    broken.set_positions(positions)
    broken.calc = calc
    with pytest.raises(ValueError, match="NaN or inf"):
        broken.get_potential_energy()
    n = len(atoms)
    nan_model = StabieCalculator(module=module, params=params, metadata=metadata)
    nan_model._evaluate = lambda *args: (np.nan, np.zeros(n), np.zeros((n, 3)), np.zeros((3, 3)))
    fine = atoms.copy()
    fine.calc = nan_model
    with pytest.raises(ValueError, match="non-finite energy or forces"):
        fine.get_potential_energy()
    with pytest.raises(ValueError, match="exactly one"):
        StabieCalculator()
    with pytest.raises(ValueError, match="not a model checkpoint"):
        StabieCalculator("/nonexistent/model/dir")


def test_ready_potential_source_and_velocity_verlet():
    atoms = water_molecule()
    module, params, metadata = toy_model(atoms.get_atomic_numbers())
    pot = make_model_potential(module, metadata, space.free()[0])
    atoms.calc = StabieCalculator(
        potential=pot, params=params, atomic_numbers=atoms.get_atomic_numbers()
    )
    atoms.set_momenta(np.zeros((3, 3)))
    e0 = atoms.get_total_energy()
    f0 = atoms.get_forces()
    dyn = VelocityVerlet(atoms, timestep=0.2 * ase_units.fs)
    dyn.run(20)
    assert dyn.nsteps == 20
    moved = np.abs(atoms.get_positions() - water_molecule().get_positions()).max()
    assert moved > 1e-5
    # Atoms start at rest, so they first move along the forces.
    assert np.sum(f0 * (atoms.get_positions() - water_molecule().get_positions())) > 0
    assert atoms.get_total_energy() == pytest.approx(e0, abs=1e-3)
    assert atoms.calc.trace_count == 1
    # A ready potential is built for one atom list: another order is refused, naming both.
    swapped = atoms[[1, 0, 2]]
    swapped.calc = atoms.calc
    with pytest.raises(ValueError, match=r"\[1, 8, 1\] do not match the potential's \[8, 1, 1\]"):
        swapped.get_potential_energy()


def test_schnet_checkpoint_in_calculator(tmp_path):
    from stabie_jax.models.schnet import SchNet

    atoms = water_molecule()
    z = atoms.get_atomic_numbers()
    module = SchNet(hidden=16, num_filters=16, num_interactions=2, num_gaussians=10, cutoff=4.0)
    params = init_params(module, z, jax.random.PRNGKey(0))
    metadata = ModelMetadata(
        kind="schnet",
        hparams=model_hparams(module),
        atomic_numbers=tuple(int(a) for a in z),
        cutoff_angstrom=4.0,
        energy_scale=0.8,
        energy_shift={1: -13.6, 8: -2041.3},
    )
    save_model_checkpoint(tmp_path / "schnet", params, metadata)
    atoms.calc = StabieCalculator(tmp_path / "schnet")
    pot = make_model_potential(module, metadata, space.free()[0])
    r = jnp.asarray(atoms.get_positions(), jnp.float32)
    energy, forces = jax.jit(lambda p: (pot.energy_fn(p, r), pot.force_fn(p, r)))(params)
    assert atoms.get_potential_energy() == pytest.approx(float(energy), rel=1e-6)
    np.testing.assert_allclose(atoms.get_forces(), forces, rtol=1e-4, atol=1e-5)
    assert np.abs(atoms.get_forces()).max() > 1e-4
    # The large per-species shifts are added in float64: no float32 rounding of ~2000 eV.
    bare = make_model_potential(module, metadata._replace(energy_shift={}), space.free()[0])
    e_bare = float(jax.jit(bare.energy_fn)(params, r))
    shift = -2041.3 - 2 * 13.6
    assert atoms.get_potential_energy() - shift == pytest.approx(e_bare, abs=1e-6)
    np.testing.assert_allclose(
        atoms.get_potential_energies().sum(), atoms.get_potential_energy(), rtol=1e-9
    )


def test_gemnet_table_overflow_names_the_capacity_to_set():
    """A GemNet-T whose neighbour table is too small: the error says which capacity to use."""
    from models_gemnet_t_test import TINY

    from stabie_jax.models.gemnet_t import GemNetT

    atoms = periodic_box(n_side=2)
    z = atoms.get_atomic_numbers()
    roomy = GemNetT(**{**TINY, "neighbor_capacity": 40})  # the GemNet-T tests' tiny model
    params = init_params(roomy, z, jax.random.PRNGKey(0))
    metadata = ModelMetadata(
        kind="gemnet_t",
        hparams=model_hparams(roomy),
        atomic_numbers=tuple(int(a) for a in z),
        cutoff_angstrom=CUTOFF,
        energy_scale=1.0,
        energy_shift={},
    )
    atoms.calc = StabieCalculator(module=roomy, params=params, metadata=metadata)
    assert np.isfinite(atoms.get_potential_energy())
    i, _ = neighbor_list("ij", atoms, CUTOFF)
    most = int(np.bincount(i).max())  # ASE's own count of the neighbours inside the cutoff
    small = roomy.clone(neighbor_capacity=most - 1)
    atoms.calc = StabieCalculator(module=small, params=params, metadata=metadata)
    with jax.debug_nans(False):
        with pytest.raises(ValueError, match=rf"has {most} neighbours .* neighbor_capacity="):
            atoms.get_forces()


def test_any_order_and_size_of_the_trained_species():
    """Models are local: a shuffled molecule and a supercell need no retraining."""
    atoms = periodic_box(n_side=2)
    module, params, metadata = toy_model(atoms.get_atomic_numbers())
    calc = StabieCalculator(module=module, params=params, metadata=metadata, neighbor_list=False)
    atoms.calc = calc
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    # Shuffled atom order: same energy, forces permuted with the atoms.
    perm = np.random.default_rng(3).permutation(len(atoms))
    shuffled = atoms[perm]
    shuffled.calc = calc
    assert shuffled.get_potential_energy() == pytest.approx(energy, rel=1e-5)
    np.testing.assert_allclose(shuffled.get_forces(), forces[perm], atol=2e-5)
    # A 2x2x1 supercell (96 atoms, neighbour-list path) is four copies: 4x the energy, same
    # forces on each copy, and a per-atom energy that repeats.
    auto = StabieCalculator(module=module, params=params, metadata=metadata)
    big = atoms.repeat((2, 2, 1))
    big.calc = auto
    assert big.get_potential_energy() == pytest.approx(4 * energy, rel=1e-5)
    assert auto.uses_neighbor_list  # 96 atoms > 64
    np.testing.assert_allclose(big.get_forces(), np.tile(forces, (4, 1)), atol=2e-5)
    # A fragment (fewer atoms than trained on) in free space: equals the pure functions on it.
    frag = ase.Atoms("OH", positions=[[0.0, 0.0, 0.0], [0.97, 0.1, 0.0]])
    frag.calc = calc
    pot = make_model_potential(module, metadata._replace(atomic_numbers=(8, 1)), space.free()[0])
    r = jnp.asarray(frag.get_positions(), jnp.float32)
    assert frag.get_potential_energy() == pytest.approx(float(pot.energy_fn(params, r)), rel=1e-6)
    # One compilation per (space kind, atom list): the shuffled box, the fragment, the box.
    assert calc.trace_count == 3
    frag.positions[1, 0] += 0.05
    frag.get_potential_energy()
    assert calc.trace_count == 3


def numerical_stress(atoms, d):
    """Voigt stress by central differences of the energy under symmetric strains, positions
    scaled with the cell (ASE's convention; written here so any ase version can check it)."""
    cell, volume = atoms.cell.array.copy(), atoms.get_volume()
    sigma = np.zeros((3, 3))
    for i in range(3):
        for j in range(i, 3):
            energies = []
            for sign in (1.0, -1.0):
                strain = np.eye(3)
                strain[i, j] += sign * d
                if i != j:
                    strain[j, i] += sign * d
                deformed = atoms.copy()
                deformed.calc = atoms.calc
                deformed.set_cell(cell @ strain, scale_atoms=True)
                energies.append(deformed.get_potential_energy())
            factor = 2.0 if i == j else 4.0
            sigma[i, j] = sigma[j, i] = (energies[0] - energies[1]) / (factor * d * volume)
    return sigma[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]


@pytest.mark.parametrize(
    "cell",
    [np.diag([6.5, 6.2, 6.8]), np.array([[6.6, 0.0, 0.0], [1.2, 6.3, 0.0], [0.8, -0.7, 6.5]])],
    ids=["orthorhombic", "triclinic"],
)
def test_stress_matches_finite_strain_differences(cell):
    jax.config.update("jax_enable_x64", True)  # finite differences of float32 are too coarse
    try:
        atoms = periodic_box(cell=cell)
        module, params, metadata = toy_model(atoms.get_atomic_numbers())
        params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
        calc = StabieCalculator(module=module, params=params, metadata=metadata)
        atoms.calc = calc
        stress = atoms.get_stress()
        assert stress.shape == (6,)
        numeric = numerical_stress(atoms, 1e-5)
        assert np.abs(numeric).max() > 1e-3  # the cell is under real stress
        np.testing.assert_allclose(stress, numeric, rtol=1e-5, atol=1e-8)
        # Stress is not a property of free molecules.
        free = water_molecule()
        free.calc = calc
        free.get_potential_energy()
        assert "stress" not in calc.results
    finally:
        jax.config.update("jax_enable_x64", False)


def test_cell_filter_relaxation_lowers_the_enthalpy():
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    atoms = periodic_box(cell=np.diag([6.5, 6.2, 6.8]))
    module, params, metadata = toy_model(atoms.get_atomic_numbers())
    atoms.calc = StabieCalculator(module=module, params=params, metadata=metadata)
    e0, cell0 = atoms.get_potential_energy(), atoms.cell.array.copy()
    opt = FIRE(FrechetCellFilter(atoms), logfile=None)
    opt.run(fmax=1e-3, steps=15)
    assert opt.nsteps == 15 or opt.converged()
    assert atoms.get_potential_energy() < e0  # zero pressure: the energy is the enthalpy
    assert np.abs(atoms.cell.array - cell0).max() > 1e-4  # the cell moved
    assert atoms.calc.trace_count == 1  # one compilation for all cells
