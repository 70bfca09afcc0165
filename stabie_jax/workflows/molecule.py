"""StABlE for a single flexible molecule in free space (aspirin, Ac-Ala3-NHMe).

:func:`train_molecule` loads a model checkpoint, builds the problem (:func:`molecule_problem`:
simulator, bond-length criterion, observable and QM losses), converts the hyperparameters,
runs StABlE from training frames and saves the trained model; :func:`reanchor_model_energy`
re-fits the zero of a saved model's energy on the QM training frames afterwards.
"""

from __future__ import annotations

import logging
import pathlib
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from stabie_jax import (
    checkpoint,
    data,
    losses,
    md,
    observables,
    stability,
    trajectory_losses,
    units,
)
from stabie_jax import stabie as stabie_lib
from stabie_jax.evaluation import metrics as evaluation_metrics
from stabie_jax.models import scale_shift
from stabie_jax.models.registry import replica_fault_check
from stabie_jax.workflows.training import LearningInputs, stabie_settings, train_and_save

__all__ = [
    "MoleculeStabieInputs",
    "molecule_problem",
    "reanchor_model_energy",
    "train_molecule",
]


class MoleculeStabieInputs(NamedTuple):
    """StABlE settings of a molecule run (units in the names; what ``config.md`` and
    ``config.stabie`` hold).

    ``learning`` holds the learning-step settings (:class:`~stabie_jax.workflows.training.
    LearningInputs`); ``qm_batch_size`` and ``qm_batches_per_step`` choose the training frames of
    the QM term (:func:`stabie_jax.losses.make_training_set_qm_loss`), ``qm_energy_weight`` and
    ``qm_force_weight`` are the pretraining recipe's ``λ_U``, ``λ_F``.
    """

    temperature_kelvin: float
    timestep_fs: float
    thermostat_ttime_steps: int
    rescale_velocities: bool
    n_replicas: int
    history_length: int
    learning: LearningInputs
    qm_batch_size: int
    qm_batches_per_step: int
    qm_energy_weight: float
    qm_force_weight: float
    bond_deviation_angstrom: float
    replica_batch_size: int | None = None  # replicas per lax.map chunk per device; None = vmap
    integrator: str = "nose_hoover_chain"  # see stabie_jax.md.make_simulator
    chain_tau_factor: float = 1.0  # chain tau = factor * ttime * dt
    langevin_gamma_per_ps: float = 0.1  # friction of integrator="langevin", 1/ps
    reanchor_energy: bool = False  # re-fit the zero of U on the training frames after StABlE
    estimator_chunk_size: int | None = None  # frames per chunk of the estimator's backward pass
    qm_chunk_size: int | None = None  # training frames per chunk of the QM term


def molecule_problem(
    loaded: checkpoint.LoadedModel,
    molecule: data.MoleculeData,
    inp: MoleculeStabieInputs,
    observable: observables.BuiltObservable,
) -> stabie_lib.StabieProblem:
    """The StABlE problem of a molecule in free space: the simulator (``inp``'s integrator at
    ``inp.temperature_kelvin``, replicas over the devices, a non-finite check), the bond-length
    deviation criterion on ``molecule.bonds``, the global-estimator loss of ``observable`` and,
    when ``inp.learning.qm_weight`` is set, the QM loss on the training frames. The estimator's
    backward pass and the QM loss are split over the simulator's devices, in chunks of
    ``inp.estimator_chunk_size`` frames and ``inp.qm_chunk_size`` training frames."""
    z = molecule.atomic_numbers
    space = md.free_space()
    potential = checkpoint.make_model_potential(
        loaded.module, loaded.metadata, space.displacement_fn
    )
    kT = units.kT(inp.temperature_kelvin)
    dt = units.fs_to_internal(inp.timestep_fs)
    t = int(inp.learning.settings_kwargs["steps_per_epoch"])
    mesh = md.replica_mesh(inp.n_replicas)
    simulator = md.make_simulator(
        potential.energy_fn,
        md.masses_from_atomic_numbers(z),
        dt=dt,
        kT=kT,
        space=space,
        tau=inp.chain_tau_factor * inp.thermostat_ttime_steps * dt,
        history_every=t,
        history_length=inp.history_length,
        mesh=mesh,
        replica_batch_size=inp.replica_batch_size,
        integrator=inp.integrator,
        ttime_steps=inp.thermostat_ttime_steps,
        langevin_gamma=units.per_ps_to_internal(inp.langevin_gamma_per_ps),
    )
    simulator = md.with_nonfinite_check(
        simulator,
        replica_fault_check(loaded.module, space.displacement_fn, simulator.dt, simulator.masses),
    )
    bonds = np.asarray(molecule.bonds.bonds)
    lengths = np.asarray(molecule.bonds.lengths)

    def stable_fn(traj):
        ok, _ = stability.bond_length_deviation(
            traj.positions, bonds, lengths, inp.bond_deviation_angstrom, frame_axis=0
        )
        return ok

    obs_loss = trajectory_losses.global_observable_loss(
        potential.energy_fn,
        observable.frame_fn,
        jnp.asarray(observable.reference),
        kT,
        batch_size=inp.learning.minibatch_size,
        reduction=inp.learning.observable_reduction,
        vjp=inp.learning.observable_vjp,
        chunk_size=inp.estimator_chunk_size,
        mesh=mesh,
    )
    qm_fn = None
    if inp.learning.qm_weight:
        qm_fn = losses.make_training_set_qm_loss(
            potential,
            losses.LabelledFrames.from_dataset(molecule.train),
            batch_size=inp.qm_batch_size,
            batches_per_step=inp.qm_batches_per_step,
            energy_weight=inp.qm_energy_weight,
            force_weight=inp.qm_force_weight,
            chunk_size=inp.qm_chunk_size,
            mesh=mesh,
        )
    problem = stabie_lib.StabieProblem(
        simulator, stable_fn, obs_loss, qm_fn, energy_fn=potential.energy_fn
    )
    return problem


def train_molecule(
    pretrained_dir: pathlib.Path,
    molecule: data.MoleculeData,
    inputs: MoleculeStabieInputs,
    *,
    run_dir: pathlib.Path,
    model_dir: pathlib.Path,
    seed: int,
    metadata: dict,
    progress: bool,
    shard: bool,
    observable: observables.BuiltObservable,
    tensorboard: bool = False,
) -> pathlib.Path:
    """StABlE-train the model checkpoint in ``pretrained_dir`` on ``observable`` (a trainable
    observable with the global estimator, built for ``molecule``'s reference frames); the run
    goes to ``run_dir`` (resumable), the trained model to ``model_dir``, whose energy zero is
    re-fitted on the training frames when ``inputs.reanchor_energy``. Returns ``model_dir``."""
    loaded = checkpoint.load_model_checkpoint(pretrained_dir)
    problem = molecule_problem(loaded, molecule, inputs, observable)
    settings, recorded = stabie_settings(
        inputs.learning, units.kT(inputs.temperature_kelvin), observable.size
    )
    model_dir = train_and_save(
        problem,
        settings,
        loaded,
        molecule.train.positions,
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
    if inputs.reanchor_energy:
        reanchor_model_energy(model_dir, molecule.train)
    return model_dir


def reanchor_model_energy(model_dir: pathlib.Path, train) -> float:
    """Re-fit the zero of the saved model's energy on the QM training frames, in place.

    The observable gradient ``Cov(g, ∇_θU)`` cannot see a constant energy, so StABlE moves the
    zero of U as a side effect and only the (weak) energy term of ``L_QM`` pulls it back. This
    adds ``c = mean_train(E_ref − E_model)`` to the model's per-species shifts
    (:func:`stabie_jax.models.scale_shift.reanchor_energy_shift`): forces and dynamics are
    unchanged, energies are shifted by ``c``. ``c`` and the frame count are stored in
    ``model.json`` (``extra.energy_reanchor``). Returns ``c`` in eV.
    """
    loaded = checkpoint.load_model_checkpoint(model_dir)
    meta = loaded.metadata
    potential = checkpoint.make_model_potential(
        loaded.module, meta, md.free_space().displacement_fn
    )
    frames = losses.LabelledFrames.from_dataset(train)
    offset = -evaluation_metrics.qm_test_errors(potential, loaded.params, frames)[
        "energy_mean_error_ev"
    ]
    shift = scale_shift.reanchor_energy_shift(meta.energy_shift, meta.atomic_numbers, offset)
    extra = {
        **meta.extra,
        "energy_reanchor": {"offset_ev": offset, "frames": "train", "n_frames": train.n_frames},
    }
    checkpoint.save_model_checkpoint(
        model_dir, loaded.params, meta._replace(energy_shift=shift, extra=extra), overwrite=True
    )
    logging.info("re-anchored the energy zero of %s by %+.4f eV", model_dir, offset)
    return offset
