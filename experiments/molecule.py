"""Pretrain → StABlE → evaluate for a single flexible molecule (aspirin, Ac-Ala3-NHMe).

This is the only layer that reads a config: :func:`run` unpacks it into explicit arguments of
library functions. Each stage is resumable and skippable (``config.stages``); a stage whose
output already exists in ``workdir`` is reused:

* ``pretrain`` → ``workdir/pretrain/`` (checkpoints, metrics, report) and the model checkpoint
  ``workdir/model_pretrained/``; skipped when ``config.init_checkpoint`` names a model;
* ``stabie`` → ``workdir/stabie/`` (checkpoints, metrics.jsonl) and ``workdir/model_stabie/``;
* ``evaluate`` → ``workdir/evaluate/`` (report.json, report.md, plots).

The settings that determine the pretraining and StABlE results are recorded per stage in
``workdir/stages.json`` (:func:`claim_stages`); a rerun with other settings is refused, or moves
the old outputs aside with ``config.overwrite_stages``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from experiments import configs
from stabie_jax import (
    checkpoint,
    data,
    evaluation_metrics,
    hyperparameters,
    losses,
    md,
    metrics_log,
    observables,
    plots,
    run_loop,
    stability,
    trajectory_losses,
    units,
)
from stabie_jax import pretrain as pretrain_lib
from stabie_jax import stabie as stabie_lib
from stabie_jax import workdir as workdir_lib
from stabie_jax.models import make_potential, scale_shift
from stabie_jax.models.registry import (
    build_model,
    frames_fault_check,
    init_params,
    replica_fault_check,
)

PRETRAINED_MODEL = "model_pretrained"
STABIE_MODEL = "model_stabie"
STAGES = ("pretrain", "stabie", "evaluate")
STAGE_OUTPUTS = {"pretrain": ("pretrain", PRETRAINED_MODEL), "stabie": ("stabie", STABIE_MODEL)}
# Settings that change how a stage runs, not what it computes (excluded from its fingerprint).
_RUN_ONLY = {
    "pretrain": (
        "progress_bar",
        "tensorboard",
        "checkpoint_every_epochs",
        "max_checkpoints_to_keep",
        "max_wall_seconds",  # a budget: a resume may be given more time
    ),
    "stabie": ("checkpoint_every", "max_wall_hours", "split_cosine_every"),  # diagnostics
    "md": ("replica_batch_size",),
    "data": ("n_test", "test_source", "download"),
}


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


def parse_stages(text: str, key: str = "stages", allow_empty: bool = False) -> tuple[str, ...]:
    """``"pretrain,stabie"`` → ``("pretrain", "stabie")``, validated (``key`` names the config
    field in errors; an empty list is an error unless ``allow_empty``)."""
    stages = tuple(s.strip() for s in str(text).split(",") if s.strip())
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown} in config.{key}; choose from {STAGES}")
    if not stages and not allow_empty:
        raise ValueError(
            f"config.{key} is empty: nothing to run; name some of {STAGES}, "
            f"e.g. --config.{key}={','.join(STAGES)}"
        )
    return stages


def overwrite_stages(config) -> frozenset[str]:
    """The stages named in ``config.overwrite_stages`` (validated; evaluate has its own store)."""
    named = parse_stages(config.get("overwrite_stages", ""), "overwrite_stages", allow_empty=True)
    if "evaluate" in named:
        raise ValueError(
            "config.overwrite_stages: 'evaluate' needs no overwrite (finished evaluations are "
            "keyed by their protocol and recomputed when it changes); name pretrain or stabie"
        )
    return frozenset(named)


def data_fingerprint(*datasets, extra_arrays=()) -> str:
    """Fingerprint of the frames (positions, energies, forces) of ``datasets``."""
    arrays = [
        value
        for d in datasets
        for value in (d.positions, d.energies, d.forces, d.atomic_numbers)
        if value is not None
    ]
    return workdir_lib.array_fingerprint(*arrays, *extra_arrays)


def _without(section: dict, name: str) -> dict:
    return {k: v for k, v in section.items() if k not in _RUN_ONLY.get(name, ())}


def _claim(config, workdir, stage: str, spec: dict) -> None:
    workdir_lib.claim_stage(
        workdir,
        stage,
        spec,
        outputs=STAGE_OUTPUTS[stage],
        overwrite=stage in overwrite_stages(config),
    )


def claim_pretrain(config, workdir, train, val, extra_arrays=()) -> None:
    """Record/check the settings of the pretraining stage (see :mod:`stabie_jax.workdir`)."""
    settings = dataclasses.asdict(pretrain_settings_from_config(config))
    spec = {
        "data": data_fingerprint(train, val, extra_arrays=extra_arrays),
        "model": config.model.to_dict(),
        "pretrain": _without(settings, "pretrain"),
    }
    _claim(config, workdir, "pretrain", spec)


def claim_stabie(config, workdir, train, pretrained_dir, extra_arrays=()) -> None:
    """Record/check the settings of the StABlE stage: everything in the config but the other
    stages and run mechanics, the training frames and the starting model's parameters."""
    excluded = {
        "pretrain", "evaluate", "stages", "overwrite_stages", "progress", "tensorboard", "variant",
    }  # fmt: skip
    sections = {
        key: _without(value.to_dict(), key) if hasattr(value, "to_dict") else value
        for key, value in config.items()
        if key not in excluded
    }
    spec = {
        **sections,
        "init_checkpoint": None,  # the model is identified by its parameters below
        "frames": data_fingerprint(train, extra_arrays=extra_arrays),
        "start_model_sha256": checkpoint.model_params_checksum(pretrained_dir),
    }
    _claim(config, workdir, "stabie", spec)


def stabie_run_config(config) -> dict:
    """The config recorded with a StABlE run and its model: all but the evaluation and the run
    mechanics, so a rerun that only adds models to evaluate leaves the model's record alone."""
    recorded = json.loads(config.to_json_best_effort())
    for key in ("evaluate", "stages", "overwrite_stages", "progress", "tensorboard"):
        recorded.pop(key, None)
    return recorded


def reader_options(data_config) -> dict:
    """Reader keyword arguments set in ``config.data`` (the same for every stage)."""
    keys = ("labels", "energy_unit", "energy_key", "forces_key")
    return {k: data_config[k] for k in keys if k in data_config and data_config[k]}


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


def run_pretrain(
    train: data.Dataset,
    val: data.Dataset,
    test: data.Dataset,
    *,
    kind: str,
    hparams: dict,
    settings: pretrain_lib.PretrainSettings,
    workdir: pathlib.Path,
    seed: int,
    displacement_fn=None,
    neighbor_fn=None,
    extra: dict | None = None,
) -> pathlib.Path:
    """Energy/force pretraining; returns the model checkpoint directory (reused if present).

    Molecules use free space and dense edges (the defaults); periodic systems pass their
    ``displacement_fn`` and a JAX-MD sparse ``neighbor_fn``.
    """
    model_dir = workdir / PRETRAINED_MODEL
    if (model_dir / checkpoint.MODEL_JSON).exists():
        logging.info("pretrained model exists in %s: skipping pretraining", model_dir)
        return model_dir
    z = np.asarray(train.atomic_numbers)
    module = build_model(kind, **hparams)
    params = init_params(module, z, jax.random.PRNGKey(seed))
    displacement_fn = displacement_fn or md.free_space().displacement_fn
    bare = make_potential(module, z, displacement_fn, use_neighbor_list=neighbor_fn is not None)
    params, report = pretrain_lib.pretrain(
        bare,
        params,
        train,
        val,
        atomic_numbers=z,
        settings=settings,
        workdir=workdir / "pretrain",
        test=test,
        neighbor_fn=neighbor_fn,
        fault_check=frames_fault_check(module, displacement_fn),
    )
    metadata = pretrain_lib.pretrained_model_metadata(
        kind, module, z, float(hparams.get("cutoff", 5.0)), report, **(extra or {})
    )
    checkpoint.save_model_checkpoint(model_dir, params, metadata, overwrite=True)
    records = metrics_log.read_records(workdir / "pretrain" / run_loop.METRICS_FILE)
    plots.plot_pretraining_curve(records, workdir / "pretrain" / "learning_curve.png")
    return model_dir


def pretrain_settings_from_config(config) -> pretrain_lib.PretrainSettings:
    """The configured recipe with its overrides, seed and progress bar."""
    return pretrain_lib.recipe(
        config.pretrain.recipe,
        seed=int(config.seed),
        progress_bar=bool(config.progress),
        tensorboard=bool(config.get("tensorboard", False)),
        **dict(config.pretrain.overrides),
    )


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
    h_r_max_angstrom: float
    h_n_bins: int
    h_sigma_angstrom: float
    settings_kwargs: dict
    reference_temperature_kelvin: float | None = None  # of the reference frames; None = same
    replica_batch_size: int | None = None  # replicas per lax.map chunk per device; None = vmap
    integrator: str = "nose_hoover_chain"  # make_simulator(integrator=...); see md_integrator
    chain_tau_factor: float = 1.0  # chain tau = factor * ttime * dt; see chain_tau_factor
    langevin_gamma_per_ps: float = 0.1  # friction of integrator="langevin", 1/ps
    reanchor_energy: bool = False  # re-fit the zero of U on the training frames after StABlE


def reference_h_of_r(
    molecule: MoleculeData,
    temperature_kelvin: float,
    reference_temperature_kelvin: float | None,
    *,
    r_max: float,
    n_bins: int,
) -> np.ndarray:
    """``[n_bins]`` reference h(r) at ``temperature_kelvin`` (sum 100).

    The reference frames are canonical samples at ``reference_temperature_kelvin`` (MD17: the
    500 K AIMD run); at another temperature they are Boltzmann-reweighted with their energies,
    as the authors do (docs/method.md, Temperature transfer and N_eff).
    """
    positions = np.asarray(molecule.reference.positions)
    if reference_temperature_kelvin is None or np.isclose(
        float(reference_temperature_kelvin), float(temperature_kelvin)
    ):
        return np.asarray(
            observables.h_of_r_reference(jnp.asarray(positions), r_max=r_max, n_bins=n_bins)
        )
    h_ref, n_eff = evaluation_metrics.reweighted_h_of_r_reference(
        positions,
        np.asarray(molecule.reference.energies),
        float(reference_temperature_kelvin),
        float(temperature_kelvin),
        r_max=r_max,
        n_bins=n_bins,
    )
    logging.info(
        "h(r) reference reweighted %g K -> %g K (N_eff = %.0f of %d frames)",
        reference_temperature_kelvin,
        temperature_kelvin,
        n_eff,
        positions.shape[0],
    )
    return np.asarray(h_ref)


def exact_hyperparameters(
    convention: str,
    learning_rate: float,
    qm_weight: float,
    clip: float | None,
    kT: float,
    B: int,
    *,
    reduction: str = "sum",
    n_observable: int | None = None,
) -> hyperparameters.ExactHyperparameters:
    """The config's (α, λ, clip) for the exact estimator: converted from the authors'
    convention (:func:`stabie_jax.hyperparameters.authors_hyperparameters_to_exact`, the update then
    equals theirs) or used as given (``"exact"``, gradient scale 1)."""
    if convention == "exact":
        return hyperparameters.ExactHyperparameters(learning_rate, qm_weight, clip, 1.0)
    if convention != "authors":
        raise ValueError(
            "config key stabie.hyperparameter_convention must be 'authors' or 'exact', got "
            f"{convention!r}"
        )
    return hyperparameters.authors_hyperparameters_to_exact(
        learning_rate, qm_weight, clip, kT, B, reduction=reduction, n_observable=n_observable
    )


def labelled_frames(dataset: data.Dataset) -> losses.LabelledFrames:
    """The dataset's positions, energies and forces as float32 device arrays (eV, Å)."""
    return losses.LabelledFrames(
        jnp.asarray(dataset.positions, jnp.float32),
        jnp.asarray(dataset.energies, jnp.float32),
        jnp.asarray(dataset.forces, jnp.float32),
    )


def make_qm_loss_fn(potential, train: data.Dataset, inputs: StabieInputs):
    """``(params, key) -> L_QM`` on training frames: all of them, or random batches per step."""
    frames = labelled_frames(train)
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


def build_stabie_problem(loaded: checkpoint.LoadedModel, molecule: MoleculeData, inp):
    """Simulator, stability criterion and losses of the StABlE problem for a molecule."""
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

    h_kw = dict(r_max=inp.h_r_max_angstrom, n_bins=inp.h_n_bins)
    h_ref = jnp.asarray(
        reference_h_of_r(molecule, inp.temperature_kelvin, inp.reference_temperature_kelvin, **h_kw)
    )
    observable_fn = lambda r: observables.h_of_r(r, sigma=inp.h_sigma_angstrom, **h_kw)
    obs_loss = trajectory_losses.global_observable_loss(
        potential.energy_fn,
        observable_fn,
        h_ref,
        kT,
        batch_size=inp.minibatch_size,
        reduction=inp.observable_reduction,
        vjp=inp.observable_vjp,
    )
    qm_fn = make_qm_loss_fn(potential, molecule.train, inp) if inp.qm_weight else None
    problem = stabie_lib.StabieProblem(
        simulator, stable_fn, obs_loss, qm_fn, energy_fn=potential.energy_fn
    )
    return problem, h_ref


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
) -> pathlib.Path:
    """StABlE-train the pretrained model; returns the trained model's checkpoint directory."""
    loaded = checkpoint.load_model_checkpoint(pretrained_dir)
    problem, _ = build_stabie_problem(loaded, molecule, inputs)
    kT = units.kT(inputs.temperature_kelvin)
    hp = exact_hyperparameters(
        inputs.hyperparameter_convention,
        inputs.learning_rate,
        inputs.qm_weight,
        inputs.grad_clip_norm,
        kT,
        inputs.minibatch_size,
        reduction=inputs.observable_reduction,
        n_observable=inputs.h_n_bins,
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
    model_dir = train_from_frames(
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
    frames = labelled_frames(train)
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


def train_from_frames(
    problem: stabie_lib.StabieProblem,
    settings: stabie_lib.StabieSettings,
    loaded: checkpoint.LoadedModel,
    train_positions,
    *,
    n_replicas: int,
    seed: int,
    workdir: pathlib.Path,
    metadata: dict,
    progress: bool,
    rescale_velocities: bool,
    shard: bool,
    tensorboard: bool = False,
) -> pathlib.Path:
    """Start R replicas from random training frames (no replacement, authors), run StABlE,
    save the trained model next to the run; returns the model checkpoint directory."""
    n_frames = len(train_positions)
    if n_replicas > n_frames:
        raise ValueError(
            f"n_replicas={n_replicas} exceeds the {n_frames} training frames used as initial "
            "conditions"
        )
    k_ic, k_state = jax.random.split(jax.random.PRNGKey(seed))
    ic = np.asarray(jax.random.choice(k_ic, n_frames, (n_replicas,), replace=False))
    state = stabie_lib.init_state(
        problem,
        settings,
        loaded.params,
        jnp.asarray(np.asarray(train_positions)[ic], jnp.float32),
        k_state,
        rescale_velocities=rescale_velocities,
    )
    run_metadata = {**metadata, "initial_frames": ic.tolist()}
    final, _ = stabie_lib.run_stabie(
        problem,
        settings,
        state,
        workdir / "stabie",
        metadata=run_metadata,
        progress=progress,
        shard_fn=stabie_lib.shard_replicas if shard else None,
        tensorboard=tensorboard,
    )
    model_dir = workdir / STABIE_MODEL
    extra = {**loaded.metadata.extra, "stabie": run_metadata}
    checkpoint.save_model_checkpoint(
        model_dir, final.train.params, loaded.metadata._replace(extra=extra), overwrite=True
    )
    return model_dir


# ---------------------------------------------------------------------------------------------
# Entry point used by experiments/aspirin.py and experiments/ala3.py.


def replica_batch_size(config) -> int | None:
    """``config.md.replica_batch_size`` for ``make_simulator``: 0 (or absent, as in configs saved
    before it existed) means None, i.e. ``vmap`` over all of a device's replicas."""
    return int(config.md.get("replica_batch_size", 0)) or None


def md_integrator(config, section: str = "md") -> str:
    """Integrator of ``config.<section>`` (``"md"`` for training, ``"evaluate"`` for the
    evaluation). Configs saved before the choice existed ran JAX-MD's chain; an evaluation
    without its own choice uses the training one."""
    default = str(config.md.get("integrator", "nose_hoover_chain"))
    if section == "md":
        return default
    return str(config[section].get("integrator", default))


def chain_tau_factor(config) -> float:
    """``tau / (ttime·dt)`` of JAX-MD's chain when a config chooses it: √2, the authors'
    thermostat time scale (:func:`stabie_jax.md.chain_tau_from_ttime`). Configs saved before
    ``md.integrator`` existed ran the chain at ``tau = ttime·dt`` and are read as they ran."""
    return math.sqrt(2.0) if "integrator" in config.md else 1.0


def integrator_kwargs(config, section: str = "md") -> dict:
    """``make_simulator`` keyword arguments choosing the integrator from the config (see
    :func:`md_integrator`), with the chain's ``tau`` (:func:`chain_tau_factor`)."""
    dt = units.fs_to_internal(float(config.md.timestep_fs))
    ttime = int(config.md.thermostat_ttime_steps)
    return dict(
        integrator=md_integrator(config, section),
        tau=chain_tau_factor(config) * ttime * dt,
        ttime_steps=int(config.md.thermostat_ttime_steps),
        langevin_gamma=units.per_ps_to_internal(float(config.md.get("langevin_gamma_per_ps", 0.1))),
    )


def stabie_settings_kwargs(config) -> dict:
    """The :class:`stabie_jax.stabie.StabieSettings` fields read from ``config.stabie`` as they
    are (phases, schedule, budget, checkpoints, reuse); the learning rate, λ, clip and gradient
    scale come from :func:`exact_hyperparameters`."""
    s = config.stabie
    return dict(
        steps_per_epoch=int(s.steps_per_epoch),
        sample_every=int(s.sample_every),
        f_max=float(s.f_max),
        f_min=float(s.f_min),
        plateau_factor=float(s.plateau_factor),
        plateau_patience=int(s.plateau_patience),
        min_lr_fraction=float(s.min_lr_fraction),
        reset_probability=float(s.reset_probability),
        max_learning_epochs=int(s.max_learning_epochs),
        max_epochs=int(s.max_epochs),
        max_wall_seconds=float(s.max_wall_hours) * 3600.0 if s.max_wall_hours else None,
        checkpoint_every=int(s.checkpoint_every),
        reuse_min_neff=float(s.get("reuse_min_neff", 0.0)),
        max_reuse_steps=int(s.get("max_reuse_steps", 10)),
        split_cosine_every=int(s.get("split_cosine_every", 0)),
    )


def stabie_inputs_from_config(config) -> StabieInputs:
    s, m, o = config.stabie, config.md, config.observable
    recipe = pretrain_lib.recipe(config.pretrain.recipe)
    return StabieInputs(
        temperature_kelvin=float(m.temperature_kelvin),
        timestep_fs=float(m.timestep_fs),
        thermostat_ttime_steps=int(m.thermostat_ttime_steps),
        rescale_velocities=bool(m.rescale_velocities),
        replica_batch_size=replica_batch_size(config),
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
        h_r_max_angstrom=float(o.r_max_angstrom),
        h_n_bins=int(o.n_bins),
        h_sigma_angstrom=float(o.sigma_angstrom),
        settings_kwargs=stabie_settings_kwargs(config),
        reference_temperature_kelvin=reference_temperature(config),
        integrator=md_integrator(config),
        chain_tau_factor=chain_tau_factor(config),
        langevin_gamma_per_ps=float(m.get("langevin_gamma_per_ps", 0.1)),
        reanchor_energy=bool(s.get("reanchor_energy", False)),
    )


def reference_temperature(config) -> float | None:
    """Temperature (K) at which the reference frames were sampled, or None if unknown."""
    value = config.data.get("reference_temperature_kelvin", 0.0)
    return float(value) if value else None


def run(config, workdir) -> dict:
    """Run the configured stages for a molecule; returns a summary dict (also in workdir)."""
    workdir = pathlib.Path(workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    for warning in configs.check_config(config):
        logging.warning(warning)
    stages = parse_stages(config.stages)
    wall: dict[str, float] = {}

    started = time.time()
    d = config.data
    molecule = load_molecule_data(
        d.source,
        test_source=d.test_source,
        reader_options=reader_options(d),
        download=bool(d.download),
        n_train=int(d.n_train),
        n_val=int(d.n_val),
        n_test=int(d.n_test),
        split_seed=int(d.split_seed),
        contiguous=bool(d.contiguous),
        max_reference_frames=int(d.max_reference_frames),
    )
    wall["data"] = time.time() - started
    logging.info(
        "data: %d train / %d val / %d test frames, %d atoms, %d bonds",
        molecule.train.n_frames,
        molecule.val.n_frames,
        molecule.test.n_frames,
        len(molecule.atomic_numbers),
        len(molecule.bonds.bonds),
    )

    if config.init_checkpoint:
        pretrained_dir = pathlib.Path(config.init_checkpoint).expanduser().resolve()
        checkpoint.read_model_metadata(pretrained_dir)  # clear error if it is not a model
    elif "pretrain" in stages:
        started = time.time()
        claim_pretrain(config, workdir, molecule.train, molecule.val)
        pretrained_dir = run_pretrain(
            molecule.train,
            molecule.val,
            molecule.test,
            kind=config.model.kind,
            hparams=dict(config.model.hparams),
            settings=pretrain_settings_from_config(config),
            workdir=workdir,
            seed=int(config.seed),
        )
        wall["pretrain"] = time.time() - started
    else:
        pretrained_dir = workdir / PRETRAINED_MODEL
        checkpoint.read_model_metadata(pretrained_dir)

    stabie_dir = workdir / STABIE_MODEL
    if "stabie" in stages:
        started = time.time()
        n_devices = jax.device_count()
        shard = n_devices > 1 and int(config.stabie.n_replicas) % n_devices == 0
        claim_stabie(config, workdir, molecule.train, pretrained_dir)
        stabie_dir = run_stabie_stage(
            pretrained_dir,
            molecule,
            stabie_inputs_from_config(config),
            workdir=workdir,
            seed=int(config.seed),
            metadata={"config": stabie_run_config(config)},
            progress=bool(config.progress),
            shard=shard,
            tensorboard=bool(config.get("tensorboard", False)),
        )
        wall["stabie"] = time.time() - started

    summary = {
        "workdir": str(workdir),
        "stages": list(stages),
        "wall_seconds": wall,
        "pretrained_model": str(pretrained_dir),
    }
    if "evaluate" in stages:
        from experiments import evaluation

        started = time.time()
        summary["evaluation"] = evaluation.evaluate_molecule(
            config, workdir, molecule, pretrained_dir, stabie_dir, wall
        )
        wall["evaluate"] = time.time() - started
    summary["stabie_model"] = str(stabie_dir) if stabie_dir.exists() else None
    # Written last: a run refused by a stage claim (other settings on this workdir) must not
    # leave its config beside results it did not produce; stages.json records every stage.
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
