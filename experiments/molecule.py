"""Pretrain → StABlE → evaluate for a single flexible molecule (aspirin, Ac-Ala3-NHMe).

This is the only layer that reads a config: :func:`run` unpacks it into explicit arguments of
library functions. Each stage is resumable and skippable (``config.stages``); a stage whose
output already exists in ``workdir`` is reused:

* ``pretrain`` → ``workdir/pretrain/`` (checkpoints, metrics, report) and the model checkpoint
  ``workdir/model_pretrained/``; skipped when ``config.init_checkpoint`` names a model;
* ``stabie`` → ``workdir/stabie/`` (checkpoints, metrics.jsonl) and ``workdir/model_stabie/``;
* ``evaluate`` → ``workdir/evaluate/`` (report.json, report.md, plots).

The settings that determine the pretraining and StABlE results are recorded per stage in
``workdir/stages.json`` (``experiments.stages``); a rerun with other settings is refused, or moves
the old outputs aside with ``config.overwrite_stages``.
"""

from __future__ import annotations

import logging
import pathlib
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from experiments import config_reader, configs, stages
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
from stabie_jax import pretrain as pretrain_lib
from stabie_jax import stabie as stabie_lib
from stabie_jax.evaluation import metrics as evaluation_metrics
from stabie_jax.models import scale_shift
from stabie_jax.models.registry import (
    replica_fault_check,
)


class MoleculeData(NamedTuple):
    """Splits of one molecule's dataset and what is derived from the reference frames.

    Attributes:
      train, val, test: :class:`stabie_jax.data.Dataset` splits (test is held out).
      reference: non-test frames used for the reference h(r) and equilibrium bond lengths.
      bonds: :class:`stabie_jax.data.BondGraph` (covalent bonds, mean lengths Å).
    """

    train: data.Dataset
    val: data.Dataset
    test: data.Dataset
    reference: data.Dataset
    bonds: data.BondGraph

    @property
    def atomic_numbers(self) -> np.ndarray:
        return np.asarray(self.train.atomic_numbers)

    def observable_system(
        self, temperature_kelvin: float, reference_temperature_kelvin: float | None
    ) -> observables.ObservableSystem:
        """What the molecule's observables are built from: the reference frames (never the
        test split) with their energies, at ``temperature_kelvin``, in free space."""
        return observables.ObservableSystem(
            atomic_numbers=self.atomic_numbers,
            reference_positions=self.reference.positions,
            temperature_kelvin=temperature_kelvin,
            reference_energies=self.reference.energies,
            reference_temperature_kelvin=reference_temperature_kelvin,
        )


def load_molecule_data(
    source: str,
    *,
    test_source: str,
    reader_options: dict,
    download: bool,
    n_train: int,
    n_val: int,
    n_test: int,
    split_seed: int,
    contiguous: bool,
    max_reference_frames: int,
) -> MoleculeData:
    """Load and split the dataset; test frames never enter training or the reference."""
    full = data.load_dataset(source, download=download, **reader_options)
    if test_source:
        test_full = data.load_dataset(test_source, download=download, **reader_options)
        if n_test > test_full.n_frames:
            raise ValueError(f"n_test={n_test} but {test_source} holds {test_full.n_frames} frames")
        test = test_full.subset(np.arange(n_test))
        # Registry splits may share frames (rMD17's train/test files overlap a little): frames
        # of the held-out set never enter training, validation or the reference.
        pool = np.arange(full.n_frames)
        if full.frame_ids is not None and test_full.frame_ids is not None:
            pool = pool[~np.isin(full.frame_ids, test_full.frame_ids)]
        inner = data.split_by_counts(
            len(pool), n_train=n_train, n_val=n_val, seed=split_seed, contiguous=contiguous
        )
        train_idx, val_idx, not_test = pool[inner.train], pool[inner.val], pool
    else:
        split = data.split_by_counts(
            full.n_frames,
            n_train=n_train,
            n_val=n_val,
            n_test=n_test,
            seed=split_seed,
            contiguous=contiguous,
        )
        test = full.subset(split.test)
        train_idx, val_idx = split.train, split.val
        not_test = np.setdiff1d(np.arange(full.n_frames), split.test)
    if len(not_test) > max_reference_frames:
        rng = np.random.default_rng(split_seed + 1)
        not_test = np.sort(rng.choice(not_test, max_reference_frames, replace=False))
    reference = full.subset(not_test)
    bonds = data.bonds_from_dataset(reference)
    return MoleculeData(full.subset(train_idx), full.subset(val_idx), test, reference, bonds)


# ---------------------------------------------------------------------------------------------
# Stage 1: pretraining.


# ---------------------------------------------------------------------------------------------
# Stage 2: StABlE training.


class StabieInputs(NamedTuple):
    """Explicit StABlE settings unpacked from the config (all units in the names)."""

    temperature_kelvin: float
    timestep_fs: float
    thermostat_ttime_steps: int
    rescale_velocities: bool
    n_replicas: int
    history_length: int
    minibatch_size: int
    hyperparameter_convention: str
    observable_reduction: str
    observable_vjp: str
    learning_rate: float
    qm_weight: float
    grad_clip_norm: float
    qm_batch_size: int
    qm_batches_per_step: int
    qm_energy_weight: float
    qm_force_weight: float
    bond_deviation_angstrom: float
    observable_kind: str  # a registered trainable observable (stabie_jax.observables.names())
    observable_options: dict  # the config's observable section
    settings_kwargs: dict
    reference_temperature_kelvin: float | None = None  # of the reference frames; None = same
    replica_batch_size: int | None = None  # replicas per lax.map chunk per device; None = vmap
    integrator: str = "nose_hoover_chain"  # see config_reader.md_integrator
    chain_tau_factor: float = 1.0  # chain tau = factor * ttime * dt
    langevin_gamma_per_ps: float = 0.1  # friction of integrator="langevin", 1/ps
    reanchor_energy: bool = False  # re-fit the zero of U on the training frames after StABlE


def make_qm_loss_fn(potential, train: data.Dataset, inputs: StabieInputs):
    """``(params, key) -> L_QM`` on training frames: all of them, or random batches per step."""
    frames = losses.LabelledFrames.from_dataset(train)
    n, B = train.n_frames, inputs.qm_batch_size
    kw = dict(energy_weight=inputs.qm_energy_weight, force_weight=inputs.qm_force_weight)

    def batch_loss(params, idx):
        sub = jax.tree.map(lambda x: x[idx], frames)
        return losses.qm_loss(potential, params, sub, **kw)

    if inputs.qm_batches_per_step <= 0:
        n_batches = n // B
        batches = jnp.arange(n_batches * B).reshape(n_batches, B)

        def loss_fn(params, key):
            del key
            return jnp.mean(jax.lax.map(lambda idx: batch_loss(params, idx), batches))
    else:

        def loss_fn(params, key):
            idx = jax.random.choice(key, n, (inputs.qm_batches_per_step, B), replace=False)
            return jnp.mean(jax.lax.map(lambda i: batch_loss(params, i), idx))

    return loss_fn


def build_stabie_problem(
    loaded: checkpoint.LoadedModel, molecule: MoleculeData, inp, observable=None
):
    """Simulator, stability criterion and losses of the StABlE problem for a molecule, trained on
    ``observable`` (:func:`training_observable`, built here when not given)."""
    z = molecule.atomic_numbers
    space = md.free_space()
    potential = checkpoint.make_model_potential(
        loaded.module, loaded.metadata, space.displacement_fn
    )
    kT = units.kT(inp.temperature_kelvin)
    dt = units.fs_to_internal(inp.timestep_fs)
    t = int(inp.settings_kwargs["steps_per_epoch"])
    simulator = md.make_simulator(
        potential.energy_fn,
        md.masses_from_atomic_numbers(z),
        dt=dt,
        kT=kT,
        space=space,
        tau=inp.chain_tau_factor * inp.thermostat_ttime_steps * dt,
        history_every=t,
        history_length=inp.history_length,
        mesh=md.replica_mesh(inp.n_replicas),
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

    if observable is None:
        observable = training_observable(molecule, inp)
    obs_loss = trajectory_losses.global_observable_loss(
        potential.energy_fn,
        observable.frame_fn,
        jnp.asarray(observable.reference),
        kT,
        batch_size=inp.minibatch_size,
        reduction=inp.observable_reduction,
        vjp=inp.observable_vjp,
    )
    qm_fn = make_qm_loss_fn(potential, molecule.train, inp) if inp.qm_weight else None
    problem = stabie_lib.StabieProblem(
        simulator, stable_fn, obs_loss, qm_fn, energy_fn=potential.energy_fn
    )
    return problem, observable


def training_observable(molecule: MoleculeData, inp) -> observables.BuiltObservable:
    """The configured training observable built for the molecule's reference frames."""
    observable = observables.get(inp.observable_kind, trainable=True)
    built = observable.build(
        molecule.observable_system(inp.temperature_kelvin, inp.reference_temperature_kelvin),
        inp.observable_options,
    )
    if built.estimator != "global":
        raise ValueError(
            f"config.observable.kind = {inp.observable_kind!r} uses the {built.estimator} "
            "estimator, which the molecule pipeline does not run; choose one of "
            f"{[n for n in observables.names(trainable=True) if n != inp.observable_kind]}"
        )
    return built


def run_stabie_stage(
    pretrained_dir: pathlib.Path,
    molecule: MoleculeData,
    inputs: StabieInputs,
    *,
    workdir: pathlib.Path,
    seed: int,
    metadata: dict,
    progress: bool,
    shard: bool,
    tensorboard: bool = False,
    observable: observables.BuiltObservable | None = None,
) -> pathlib.Path:
    """StABlE-train the pretrained model on ``observable`` (built from ``inputs`` when not
    given); returns the trained model's checkpoint directory."""
    loaded = checkpoint.load_model_checkpoint(pretrained_dir)
    problem, problem_observable = build_stabie_problem(loaded, molecule, inputs, observable)
    kT = units.kT(inputs.temperature_kelvin)
    hp = config_reader.exact_hyperparameters(
        inputs.hyperparameter_convention,
        inputs.learning_rate,
        inputs.qm_weight,
        inputs.grad_clip_norm,
        kT,
        inputs.minibatch_size,
        reduction=inputs.observable_reduction,
        n_observable=problem_observable.size,
    )
    settings = stabie_lib.StabieSettings(
        learning_rate=hp.learning_rate,
        qm_weight=hp.qm_weight,
        grad_clip_norm=hp.grad_clip_norm,
        gradient_scale=hp.gradient_scale,
        **inputs.settings_kwargs,
    )
    run_metadata = {
        **metadata,
        "exact_learning_rate": hp.learning_rate,
        "exact_qm_weight": hp.qm_weight,
        "exact_grad_clip_norm": hp.grad_clip_norm,
        "gradient_scale": hp.gradient_scale,
    }
    model_dir = stages.train_from_frames(
        problem,
        settings,
        loaded,
        molecule.train.positions,
        n_replicas=inputs.n_replicas,
        seed=seed,
        workdir=workdir,
        metadata=run_metadata,
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


# ---------------------------------------------------------------------------------------------
# Entry point used by experiments/aspirin.py and experiments/ala3.py.


def stabie_inputs_from_config(config) -> StabieInputs:
    s, m, o = config.stabie, config.md, config.observable
    recipe = pretrain_lib.recipe(config.pretrain.recipe)
    return StabieInputs(
        temperature_kelvin=float(m.temperature_kelvin),
        timestep_fs=float(m.timestep_fs),
        thermostat_ttime_steps=int(m.thermostat_ttime_steps),
        rescale_velocities=bool(m.rescale_velocities),
        replica_batch_size=config_reader.replica_batch_size(config),
        n_replicas=int(s.n_replicas),
        history_length=int(s.history_length),
        minibatch_size=int(s.minibatch_size),
        hyperparameter_convention=str(s.hyperparameter_convention),
        observable_reduction=str(s.get("observable_reduction", "sum")),
        observable_vjp=str(s.get("observable_vjp", "global")),
        learning_rate=float(s.learning_rate),
        qm_weight=float(s.qm_weight),
        grad_clip_norm=float(s.grad_clip_norm) if s.grad_clip_norm else None,
        qm_batch_size=int(s.qm_batch_size),
        qm_batches_per_step=int(s.qm_batches_per_step),
        qm_energy_weight=float(recipe.energy_weight),
        qm_force_weight=float(recipe.force_weight),
        bond_deviation_angstrom=float(s.bond_deviation_angstrom),
        observable_kind=str(o.get("kind", "h_of_r")),
        observable_options=o.to_dict(),
        settings_kwargs=config_reader.stabie_settings_kwargs(config),
        reference_temperature_kelvin=config_reader.reference_temperature(config),
        integrator=config_reader.md_integrator(config),
        chain_tau_factor=config_reader.chain_tau_factor(config),
        langevin_gamma_per_ps=float(m.get("langevin_gamma_per_ps", 0.1)),
        reanchor_energy=bool(s.get("reanchor_energy", False)),
    )


def run(config, workdir) -> dict:
    """Run the configured stages for a molecule; returns a summary dict (also in workdir)."""
    workdir = pathlib.Path(workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    for warning in configs.check_config(config):
        logging.warning(warning)
    config_reader.parse_stages(config.stages)  # a bad stage list fails before the data load
    wall: dict[str, float] = {}

    started = time.time()
    d = config.data
    molecule = load_molecule_data(
        d.source,
        test_source=d.test_source,
        reader_options=config_reader.reader_options(d),
        download=bool(d.download),
        n_train=int(d.n_train),
        n_val=int(d.n_val),
        n_test=int(d.n_test),
        split_seed=int(d.split_seed),
        contiguous=bool(d.contiguous),
        max_reference_frames=int(d.max_reference_frames),
    )
    wall["data"] = time.time() - started
    observable = None
    if "stabie" in config_reader.parse_stages(config.stages):
        # built once, here: one that does not fit the data is refused before any work
        observable = training_observable(molecule, stabie_inputs_from_config(config))
    logging.info(
        "data: %d train / %d val / %d test frames, %d atoms, %d bonds",
        molecule.train.n_frames,
        molecule.val.n_frames,
        molecule.test.n_frames,
        len(molecule.atomic_numbers),
        len(molecule.bonds.bonds),
    )

    def pretrain():
        return stages.run_pretrain(
            molecule.train,
            molecule.val,
            molecule.test,
            kind=config.model.kind,
            hparams=dict(config.model.hparams),
            settings=config_reader.pretrain_settings_from_config(config),
            workdir=workdir,
            seed=int(config.seed),
        )

    def stabie(pretrained_dir):
        n_devices = jax.device_count()
        return run_stabie_stage(
            pretrained_dir,
            molecule,
            stabie_inputs_from_config(config),
            workdir=workdir,
            seed=int(config.seed),
            metadata={"config": config_reader.stabie_run_config(config)},
            progress=bool(config.progress),
            shard=n_devices > 1 and int(config.stabie.n_replicas) % n_devices == 0,
            tensorboard=bool(config.get("tensorboard", False)),
            observable=observable,
        )

    def evaluate(pretrained_dir, stabie_dir, wall):
        from experiments import evaluation

        return evaluation.evaluate_molecule(
            config, workdir, molecule, pretrained_dir, stabie_dir, wall
        )

    return stages.run_stages(
        config,
        workdir,
        train=molecule.train,
        val=molecule.val,
        pretrain=pretrain,
        stabie=stabie,
        evaluate=evaluate,
        wall=wall,
    )
