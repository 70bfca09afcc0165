"""StABlE for a periodic system (64-water, or any bulk system): data, simulator, criteria, loss.

Any species in any order and any cell from the data (orthorhombic or triclinic, periodic in all
three directions), unwrapped positions with JAX-MD sparse neighbour lists. Molecules are the
connected components of the covalent bond graph of the reference frames
(:func:`stabie_jax.data.find_bonds`); an atomic system (no bonds) has one molecule per atom.

* :func:`load_periodic_data` - splits, reference frames, box, bond graph, molecules and (for
  identical molecules) the neighbourhoods of the localized estimator;
* :func:`periodic_simulator` - potential and replica simulator with neighbour lists
  (:class:`PeriodicMD` holds the MD settings);
* :func:`periodic_stable_fn` - the criteria ``"min_intermolecular"``, ``"bond_deviation"`` and
  ``"rdf_mae"``;
* :func:`periodic_observable_loss` - the loss of a built training observable (localized or
  global estimator, with the estimator's neighbour-list overflow reported);
* :func:`train_periodic` - the whole StABlE stage from a model checkpoint
  (:class:`PeriodicStabieInputs`). There is no QM term: a λ > 0 is refused.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stabie_jax import (
    checkpoint,
    data,
    md,
    observables,
    stability,
    trajectory_losses,
    units,
)
from stabie_jax import stabie as stabie_lib
from stabie_jax.localized_estimator import neighbourhoods_from_bonds
from stabie_jax.md.neighbors import neighbor_list_fn
from stabie_jax.models.potential import neighbor_format
from stabie_jax.models.registry import replica_fault_check
from stabie_jax.workflows.training import LearningInputs, stabie_settings, train_and_save

__all__ = [
    "PeriodicData",
    "PeriodicMD",
    "PeriodicStabieInputs",
    "TRAINING_CRITERIA",
    "cell_of_box",
    "check_qm_weight",
    "load_periodic_data",
    "periodic_neighbor_fn",
    "periodic_observable_loss",
    "periodic_simulator",
    "periodic_stable_fn",
    "train_periodic",
]

TRAINING_CRITERIA = ("min_intermolecular", "bond_deviation")
"""Stability criteria a periodic StABlE run can train with (``"rdf_mae"`` evaluates only)."""


class PeriodicData(NamedTuple):
    """Splits of a periodic dataset and what is derived from its reference frames.

    Attributes:
      train, val, test: :class:`stabie_jax.data.Dataset` splits (test is held out).
      reference: non-test frames (reference RDFs, bond graph).
      box: ``[3]`` side lengths or ``[3, 3]`` box matrix (lattice vectors as columns), Å.
      bonds: :class:`stabie_jax.data.BondGraph` of the reference frames (minimum image).
      molecule_ids: ``[N]`` molecule of each atom (components of the bond graph).
      neighbourhoods: ``[M, k]`` atoms of each molecule, centre first, or None when the
        molecules are not identical (:func:`neighbourhoods_from_bonds`).
    """

    train: data.Dataset
    val: data.Dataset
    test: data.Dataset
    reference: data.Dataset
    box: np.ndarray
    bonds: data.BondGraph
    molecule_ids: np.ndarray
    neighbourhoods: np.ndarray | None

    @property
    def atomic_numbers(self) -> np.ndarray:
        return np.asarray(self.train.atomic_numbers)

    @property
    def space(self) -> md.Space:
        """The periodic JAX-MD space of :attr:`box` (minimum-image displacements)."""
        return md.periodic_space(cell_of_box(self.box))


def load_periodic_data(
    source,
    *,
    reader_options: dict,
    download: bool,
    n_train: int,
    n_val: int,
    n_test: int,
    split_seed: int,
    contiguous: bool,
    max_reference_frames: int,
) -> PeriodicData:
    """Load and split periodic frames; the cell and species come from the data. The reference
    is the first ``max_reference_frames`` non-test frames."""
    full = data.load_dataset(source, download=download, **reader_options)
    if full.cell is None or not np.all(full.pbc):
        raise ValueError(
            f"data source {source!r} (config key data.source): a periodic system needs a cell "
            "and periodic boundaries in all three directions (pbc = "
            f"{None if full.pbc is None else np.asarray(full.pbc).tolist()}); a molecule in "
            "free space runs with the molecule pipeline (experiments/configs/custom.py decides "
            "from the data)"
        )
    box = md.periodic_space(np.asarray(full.cell)).box
    split = data.split_by_counts(
        full.n_frames,
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
        seed=split_seed,
        contiguous=contiguous,
    )
    not_test = np.setdiff1d(np.arange(full.n_frames), split.test)[:max_reference_frames]
    reference = full.subset(not_test)
    z = np.asarray(full.atomic_numbers)
    bonds = data.bonds_from_dataset(reference)
    molecule_ids = data.molecule_labels(len(z), bonds.bonds)
    try:
        neighbourhoods = neighbourhoods_from_bonds(z, bonds.bonds)
    except ValueError:
        neighbourhoods = None
    return PeriodicData(
        full.subset(split.train),
        full.subset(split.val),
        full.subset(split.test),
        reference,
        box,
        bonds,
        molecule_ids,
        neighbourhoods,
    )


def cell_of_box(box) -> np.ndarray:
    """ASE cell (lattice vectors as rows) of a JAX-MD box (scalar, side lengths, or vectors as
    columns), Å."""
    box = np.asarray(box, np.float64)
    if box.ndim == 0:
        return np.eye(3) * box
    return np.diag(box) if box.ndim == 1 else box.T


def periodic_neighbor_fn(box, cutoff: float, skin: float, fmt):
    """``(space, neighbor_fn)``: the periodic space of ``box`` and a JAX-MD neighbour list of
    ``cutoff + skin`` Å in format ``fmt`` (50 % headroom)."""
    space = md.periodic_space(cell_of_box(box))  # PeriodicData.space, from the box alone
    return space, neighbor_list_fn(
        space.displacement_fn,
        jnp.asarray(box, jnp.float32),
        cutoff + skin,
        capacity_multiplier=1.5,
        format=fmt,
    )


class PeriodicMD(NamedTuple):
    """MD settings of a periodic simulator (units in the names).

    ``integrator_kwargs`` are :func:`stabie_jax.md.make_simulator`'s ``integrator``, ``tau``,
    ``ttime_steps`` and ``langevin_gamma``; ``replica_batch_size`` None means ``vmap`` over all
    of a device's replicas.
    """

    timestep_fs: float
    history_length: int
    neighbor_skin_angstrom: float
    integrator_kwargs: dict
    replica_batch_size: int | None = None


def periodic_simulator(
    loaded: checkpoint.LoadedModel,
    periodic: PeriodicData,
    settings: PeriodicMD,
    temperature_kelvin: float,
    history_every: int,
    n_replicas: int,
):
    """``(potential, simulator, space, neighbor_fn)`` of the model in the data's cell: neighbour
    lists of the model's cutoff plus the skin, replicas over the devices, and the model's fault
    check on replicas that turn non-finite (a GemNet-T table overflow raises with the fix)."""
    cutoff = float(loaded.metadata.cutoff_angstrom)
    skin = float(settings.neighbor_skin_angstrom)
    fmt = neighbor_format(loaded.module)
    space, neighbor_fn = periodic_neighbor_fn(periodic.box, cutoff, skin, fmt)
    potential = checkpoint.make_model_potential(
        loaded.module, loaded.metadata, space.displacement_fn, use_neighbor_list=True
    )
    sim = md.make_simulator(
        potential.energy_fn,
        md.masses_from_atomic_numbers(periodic.atomic_numbers),
        dt=units.fs_to_internal(float(settings.timestep_fs)),
        kT=units.kT(temperature_kelvin),
        space=space,
        cutoff=cutoff,
        skin=skin,
        neighbor_format=fmt,
        history_every=history_every,
        history_length=int(settings.history_length),
        mesh=md.replica_mesh(n_replicas),
        replica_batch_size=settings.replica_batch_size,
        **settings.integrator_kwargs,
    )
    fault_check = replica_fault_check(loaded.module, space.displacement_fn, sim.dt, sim.masses)
    return potential, md.with_nonfinite_check(sim, fault_check), space, neighbor_fn


def periodic_stable_fn(
    kind: str, threshold: float, periodic: PeriodicData, reference_rdfs=None
) -> Callable:
    """``trajectory [F, R, N, 3] -> [R]`` bool for the criterion ``kind``: ``"min_intermolecular"``
    (Å), ``"bond_deviation"`` (Å) or ``"rdf_mae"`` (``reference_rdfs = {"rdfs": {pair: g},
    "r_max": Å}``)."""
    box = periodic.box
    if kind == "min_intermolecular":
        return lambda traj: stability.min_intermolecular_distance(
            traj.positions, periodic.molecule_ids, threshold, box=box, frame_axis=0
        )[0]
    if kind == "bond_deviation":
        disp = observables.minimum_image_displacement(box)
        bonds, lengths = np.asarray(periodic.bonds.bonds), np.asarray(periodic.bonds.lengths)
        return lambda traj: stability.bond_length_deviation(
            traj.positions, bonds, lengths, threshold, displacement_fn=disp, frame_axis=0
        )[0]
    if kind != "rdf_mae":
        raise ValueError(
            f"unknown criterion {kind!r}; choose 'min_intermolecular', 'bond_deviation' or "
            "'rdf_mae'"
        )
    z, r_max = periodic.atomic_numbers, reference_rdfs["r_max"]
    rdfs = reference_rdfs["rdfs"]
    return lambda traj: stability.rdf_mae_criterion(
        traj.positions, z, box, rdfs, threshold, r_max=r_max, frame_axis=0
    )[0]


def periodic_observable_loss(
    built: observables.BuiltObservable,
    potential,
    template,
    space,
    kT: float,
    *,
    reduction: str,
    vjp: str,
    minibatch_size: int,
    n_bins: int,
    per_bin: int,
    mesh: jax.sharding.Mesh | None = None,
):
    """``(loss, per_atom_energy_fn)`` of the built training observable.

    ``template`` is an allocated neighbour list that the estimator's per-atom energies update
    inside jit; its overflow is reported as ``aux["overflow"]``, and the driver skips such a
    step. The localized loss balances neighbourhoods over ``n_bins`` deviation bins of
    ``per_bin`` each. ``mesh`` (the simulator's) splits the estimator's backward pass over the
    frames across its devices.
    """

    def per_atom_energy_fn(params, positions):
        return potential.per_atom_energy_fn(params, positions, template.update(positions))

    def overflow_fn(frames):
        return jnp.any(jax.vmap(lambda r: template.update(r).did_buffer_overflow)(frames))

    if built.estimator == "localized":
        # The localized loss's neighbourhood observable is the centre-to-atom lengths; the
        # observable supplies the neighbourhoods and the reference lengths.
        loss = trajectory_losses.local_observable_loss(
            per_atom_energy_fn,
            built.neighbourhoods,
            built.reference,
            kT,
            bond_equilibrium=jnp.asarray(built.reference),
            displacement_fn=space.displacement_fn,
            batch_size=minibatch_size,
            n_bins=n_bins,
            per_bin=per_bin,
            overflow_fn=overflow_fn,
            reduction=reduction,
            vjp=vjp,
            mesh=mesh,
        )
        return loss, per_atom_energy_fn
    global_loss = trajectory_losses.global_observable_loss(
        lambda params, r: jnp.sum(per_atom_energy_fn(params, r)),
        built.frame_fn,
        jnp.asarray(built.reference),
        kT,
        batch_size=minibatch_size,
        reduction=reduction,
        vjp=vjp,
        mesh=mesh,
    )

    def loss(params, trajectory, key, log_weights=None):
        value, aux = global_loss(params, trajectory, key, log_weights)
        frames, ok = trajectory_losses.trajectory_samples(trajectory)
        safe = jnp.where(ok[:, None, None], frames, frames[jnp.argmax(ok)])
        return value, {**aux, "overflow": overflow_fn(safe)}

    return loss, per_atom_energy_fn


class PeriodicStabieInputs(NamedTuple):
    """StABlE settings of a periodic run (units in the names; what ``config.md`` and
    ``config.stabie`` hold).

    ``criterion`` is one of :data:`TRAINING_CRITERIA` with its ``threshold_angstrom``;
    ``learning`` holds the learning-step settings (:class:`~stabie_jax.workflows.training.
    LearningInputs`; its ``qm_weight`` must be 0). ``n_bins``/``per_bin``: the localized
    estimator's neighbourhood balancing.
    """

    temperature_kelvin: float
    md: PeriodicMD
    n_replicas: int
    learning: LearningInputs
    criterion: str
    threshold_angstrom: float
    n_bins: int
    per_bin: int
    rescale_velocities: bool


def check_qm_weight(qm_weight: float) -> None:
    """Periodic StABlE has no QM loss: refuse a λ it would silently ignore."""
    if float(qm_weight) != 0.0:
        raise ValueError(
            f"config key stabie.qm_weight = {float(qm_weight)}: the periodic pipeline has no QM "
            "loss term (the authors train water with lambda = 0); set --config.stabie.qm_weight=0"
        )


def train_periodic(
    pretrained_dir: pathlib.Path,
    periodic: PeriodicData,
    inputs: PeriodicStabieInputs,
    observable: observables.BuiltObservable,
    *,
    seed: int,
    run_dir: pathlib.Path,
    model_dir: pathlib.Path,
    metadata: dict,
    progress: bool,
    shard: bool,
    tensorboard: bool = False,
) -> pathlib.Path:
    """StABlE-train the model checkpoint in ``pretrained_dir`` on ``observable`` (built for the
    periodic system's reference frames); the run goes to ``run_dir`` (resumable), the trained
    model to ``model_dir``. Returns ``model_dir``."""
    check_qm_weight(inputs.learning.qm_weight)
    if inputs.criterion not in TRAINING_CRITERIA:
        raise ValueError(
            f"training criterion {inputs.criterion!r} (config key stabie.criterion): choose one "
            f"of {TRAINING_CRITERIA}"
        )
    loaded = checkpoint.load_model_checkpoint(pretrained_dir)
    t = int(inputs.learning.settings_kwargs["steps_per_epoch"])
    potential, sim, space, neighbor_fn = periodic_simulator(
        loaded, periodic, inputs.md, inputs.temperature_kelvin, t, inputs.n_replicas
    )
    # Neighbour list for the estimator's per-atom energies: allocated with headroom from the
    # training frames, updated inside jit.
    template = neighbor_fn.allocate(jnp.asarray(periodic.train.positions[0]), extra_capacity=0)
    kT = units.kT(inputs.temperature_kelvin)
    obs_loss, per_atom_energy_fn = periodic_observable_loss(
        observable,
        potential,
        template,
        space,
        kT,
        reduction=inputs.learning.observable_reduction,
        vjp=inputs.learning.observable_vjp,
        minibatch_size=inputs.learning.minibatch_size,
        n_bins=inputs.n_bins,
        per_bin=inputs.per_bin,
        mesh=md.replica_mesh(inputs.n_replicas),  # the simulator's
    )
    problem = stabie_lib.StabieProblem(
        sim,
        periodic_stable_fn(inputs.criterion, inputs.threshold_angstrom, periodic),
        obs_loss,
        None,
        energy_fn=lambda params, positions: jnp.sum(per_atom_energy_fn(params, positions)),
    )
    settings, recorded = stabie_settings(inputs.learning, kT, observable.size)
    return train_and_save(
        problem,
        settings,
        loaded,
        periodic.train.positions,
        n_replicas=inputs.n_replicas,
        seed=seed,
        run_dir=run_dir,
        model_dir=model_dir,
        metadata={**metadata, **recorded},
        progress=progress,
        rescale_velocities=inputs.rescale_velocities,
        shard=shard,
        tensorboard=tensorboard,
    )
