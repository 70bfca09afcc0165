"""Pretrain → StABlE (localized estimator) → evaluate for periodic flexible water.

The config layer for ``experiments/water.py``; library code receives explicit arguments. The
system is N water molecules stored O, H, H, ... in a cubic box with periodic boundaries; the
model uses JAX-MD sparse neighbour lists (minimum image, unwrapped positions).

* training criterion: minimum intermolecular distance < 1.2 Å;
* training observable: the two O–H bond lengths of a molecule, localized estimator with the
  molecule's three per-atom energies, molecules balanced over 100 deviation bins;
* evaluation: RDF MAE (O–O, O–H, H–H, 0.012-Å bins to 6 Å) over 1-ps windows > 3.0, element
  RDFs of stable frames and the oxygen diffusivity.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax_md import partition

from experiments import configs, evaluated_models, molecule
from experiments.molecule import PRETRAINED_MODEL, STABIE_MODEL, exact_hyperparameters, parse_stages
from stabie_jax import (
    checkpoint,
    data,
    md,
    metrics_log,
    observables,
    plots,
    report,
    stability,
    trajectory_losses,
    units,
)
from stabie_jax import evaluate as ev
from stabie_jax import stabie as stabie_lib
from stabie_jax.localized_estimator import molecule_neighbourhoods, neighbourhood_bond_lengths
from stabie_jax.md.neighbors import neighbor_list_fn
from stabie_jax.models.gemnet_t import GemNetT
from stabie_jax.models.gemnet_table import max_neighbors_in_frames, suggested_capacity
from stabie_jax.models.registry import replica_fault_check
from stabie_jax.trajectories import export_kept_frames, trajectory_links


class WaterData(NamedTuple):
    train: data.Dataset
    val: data.Dataset
    test: data.Dataset
    reference: data.Dataset
    box: np.ndarray  # [3] Å
    neighbourhoods: np.ndarray  # [M, 3] O, H, H indices
    molecule_ids: np.ndarray  # [N]
    oh_reference: np.ndarray  # [2] Å, mean O–H lengths of the training frames


def load_water_data(d) -> WaterData:
    full = data.load_dataset(d.source, download=bool(d.download), **molecule.reader_options(d))
    if full.cell is None:
        raise ValueError(f"{d.source}: water data needs a periodic cell")
    cell = np.asarray(full.cell)
    if not np.allclose(cell, np.diag(np.diag(cell))):
        raise ValueError(f"{d.source}: only orthorhombic cells are supported, got {cell.tolist()}")
    split = data.split_by_counts(
        full.n_frames,
        n_train=int(d.n_train),
        n_val=int(d.n_val),
        n_test=int(d.n_test),
        seed=int(d.split_seed),
        contiguous=bool(d.contiguous),
    )
    not_test = np.setdiff1d(np.arange(full.n_frames), split.test)[: int(d.max_reference_frames)]
    z = np.asarray(full.atomic_numbers)
    neighbourhoods = molecule_neighbourhoods(z, pattern=(8, 1, 1))
    molecule_ids = np.repeat(np.arange(len(neighbourhoods)), 3)
    box = np.diag(cell)
    train = full.subset(split.train)
    disp = md.periodic_space(box).displacement_fn
    per_frame = lambda r: jax.vmap(lambda a: neighbourhood_bond_lengths(r, a, disp))(
        jnp.asarray(neighbourhoods)
    )
    oh = np.asarray(jax.jit(jax.vmap(per_frame))(jnp.asarray(train.positions, jnp.float32)))
    return WaterData(
        train,
        full.subset(split.val),
        full.subset(split.test),
        full.subset(not_test),
        box,
        neighbourhoods,
        molecule_ids,
        oh.reshape(-1, 2).mean(axis=0),
    )


def _neighbor_fn(box, cutoff: float, skin: float):
    space = md.periodic_space(box)
    return space, neighbor_list_fn(
        space.displacement_fn,
        jnp.asarray(box, jnp.float32),
        cutoff + skin,
        capacity_multiplier=1.5,
        format=partition.NeighborListFormat.Sparse,
    )


def check_neighbor_capacity(config, water: WaterData) -> None:
    """Refuse a GemNet-T neighbour table too small for the data (its energies would be NaN)."""
    if config.model.kind != "gemnet_t":
        return
    hparams = config.model.hparams
    capacity = int(hparams.get("neighbor_capacity", GemNetT.neighbor_capacity))
    cutoff = float(hparams.get("cutoff", 5.0))
    frames = np.concatenate([water.train.positions, water.val.positions, water.test.positions])
    space = md.periodic_space(water.box)
    most = max_neighbors_in_frames(frames, space.displacement_fn, cutoff)
    suggested = suggested_capacity(most)
    if most > capacity:
        raise ValueError(
            f"config.model.hparams.neighbor_capacity = {capacity}, but an atom of the data has "
            f"{most} neighbours within the {cutoff:g}-A cutoff (GemNet-T's energies would be NaN); "
            f"set --config.model.hparams.neighbor_capacity={suggested}"
        )
    if most > 0.9 * capacity:
        logging.warning(
            "config.model.hparams.neighbor_capacity = %d is close to the data's %d neighbours "
            "per atom; compressed MD configurations may overflow it (their energies are NaN and "
            "the replica counts as unstable); consider %d",
            capacity,
            most,
            suggested,
        )


def run_pretrain(water: WaterData, config, workdir: pathlib.Path) -> pathlib.Path:
    hparams = dict(config.model.hparams)
    space, neighbor_fn = _neighbor_fn(water.box, float(hparams.get("cutoff", 5.0)), 0.0)
    return molecule.run_pretrain(
        water.train,
        water.val,
        water.test,
        kind=config.model.kind,
        hparams=hparams,
        settings=molecule.pretrain_settings_from_config(config),
        workdir=workdir,
        seed=int(config.seed),
        displacement_fn=space.displacement_fn,
        neighbor_fn=neighbor_fn,
        extra={"box_angstrom": water.box.tolist()},
    )


def _potential_and_simulator(
    loaded,
    water: WaterData,
    config,
    temperature_kelvin,
    history_every,
    n_replicas,
    integrator_section="md",
):
    z = np.asarray(water.train.atomic_numbers)
    cutoff = float(loaded.metadata.cutoff_angstrom)
    skin = float(config.model.neighbor_skin_angstrom)
    space, neighbor_fn = _neighbor_fn(water.box, cutoff, skin)
    potential = checkpoint.make_model_potential(
        loaded.module, loaded.metadata, space.displacement_fn, use_neighbor_list=True
    )
    dt = units.fs_to_internal(float(config.md.timestep_fs))
    sim = md.make_simulator(
        potential.energy_fn,
        md.masses_from_atomic_numbers(z),
        dt=dt,
        kT=units.kT(temperature_kelvin),
        space=space,
        cutoff=cutoff,
        skin=skin,
        history_every=history_every,
        history_length=int(config.stabie.history_length),
        mesh=md.replica_mesh(n_replicas),
        replica_batch_size=molecule.replica_batch_size(config),
        **molecule.integrator_kwargs(config, integrator_section),
    )
    fault_check = replica_fault_check(loaded.module, space.displacement_fn, sim.dt, sim.masses)
    sim = md.with_nonfinite_check(sim, fault_check)  # a GemNet-T table overflow raises
    return potential, sim, space, neighbor_fn


def check_qm_weight(config) -> None:
    """The water problem has no QM loss: refuse a λ it would silently ignore."""
    if float(config.stabie.qm_weight) != 0.0:
        raise ValueError(
            f"config key stabie.qm_weight = {float(config.stabie.qm_weight)}: the water pipeline "
            "has no QM loss term (the authors train water with lambda = 0); set "
            "--config.stabie.qm_weight=0"
        )


def run_stabie_stage(pretrained_dir, water: WaterData, config, workdir) -> pathlib.Path:
    s = config.stabie
    check_qm_weight(config)
    loaded = checkpoint.load_model_checkpoint(pretrained_dir)
    T = float(config.md.temperature_kelvin)
    t = int(s.steps_per_epoch)
    potential, sim, space, neighbor_fn = _potential_and_simulator(
        loaded, water, config, T, t, int(config.stabie.n_replicas)
    )
    # Neighbour list for the estimator's per-atom energies: allocated with headroom from the
    # training frames, updated inside jit; overflow is reported in the metrics, and the driver
    # skips such a step instead of using a gradient with dropped neighbours.
    template = neighbor_fn.allocate(jnp.asarray(water.train.positions[0]), extra_capacity=0)
    template = jax.tree.map(lambda x: x, template)

    def per_atom_energy_fn(params, positions):
        return potential.per_atom_energy_fn(params, positions, template.update(positions))

    def overflow_fn(frames):
        return jnp.any(jax.vmap(lambda r: template.update(r).did_buffer_overflow)(frames))

    kT = units.kT(T)
    reduction = str(s.get("observable_reduction", "sum"))
    hp = exact_hyperparameters(
        str(s.hyperparameter_convention),
        float(s.learning_rate),
        float(s.qm_weight),
        float(s.grad_clip_norm) if s.grad_clip_norm else None,
        kT,
        int(s.minibatch_size),
        reduction=reduction,
        n_observable=int(np.size(water.oh_reference)),
    )
    lr, qm_weight, clip = hp.learning_rate, hp.qm_weight, hp.grad_clip_norm
    obs_loss = trajectory_losses.local_observable_loss(
        per_atom_energy_fn,
        water.neighbourhoods,
        water.oh_reference,
        kT,
        bond_equilibrium=float(np.mean(water.oh_reference)),
        displacement_fn=space.displacement_fn,
        batch_size=int(s.minibatch_size),
        n_bins=int(s.n_bins),
        per_bin=int(s.per_bin),
        overflow_fn=overflow_fn,
        reduction=reduction,
        vjp=str(s.get("observable_vjp", "global")),
    )

    def stable_fn(traj):
        return stability.min_intermolecular_distance(
            traj.positions,
            water.molecule_ids,
            float(s.min_intermolecular_angstrom),
            box=water.box,
            frame_axis=0,
        )[0]

    problem = stabie_lib.StabieProblem(
        sim,
        stable_fn,
        obs_loss,
        None,
        energy_fn=lambda params, positions: jnp.sum(per_atom_energy_fn(params, positions)),
    )
    settings = stabie_lib.StabieSettings(
        steps_per_epoch=t,
        sample_every=int(s.sample_every),
        learning_rate=lr,
        qm_weight=qm_weight,
        grad_clip_norm=clip,
        f_max=float(s.f_max),
        f_min=float(s.f_min),
        plateau_factor=float(s.plateau_factor),
        plateau_patience=int(s.plateau_patience),
        min_lr_fraction=float(s.min_lr_fraction),
        reset_probability=float(s.reset_probability),
        max_learning_epochs=int(s.max_learning_epochs),
        max_epochs=int(s.max_epochs),
        max_wall_seconds=float(s.max_wall_hours) * 3600 if s.max_wall_hours else None,
        checkpoint_every=int(s.checkpoint_every),
        gradient_scale=hp.gradient_scale,
        reuse_min_neff=float(s.get("reuse_min_neff", 0.0)),
        max_reuse_steps=int(s.get("max_reuse_steps", 10)),
        split_cosine_every=int(s.get("split_cosine_every", 0)),
    )
    n_dev = jax.device_count()
    meta = {
        "config": molecule.stabie_run_config(config),
        "exact_learning_rate": lr,
        "exact_grad_clip_norm": clip,
        "gradient_scale": hp.gradient_scale,
    }
    return molecule.train_from_frames(
        problem,
        settings,
        loaded,
        water.train.positions,
        n_replicas=int(s.n_replicas),
        seed=int(config.seed),
        workdir=workdir,
        metadata=meta,
        progress=bool(config.progress),
        rescale_velocities=bool(config.md.rescale_velocities),
        shard=n_dev > 1 and int(s.n_replicas) % n_dev == 0,
        tensorboard=bool(config.get("tensorboard", False)),
    )


def _ase_cell(box) -> np.ndarray:
    """ASE cell (lattice vectors as rows) of a JAX-MD box (scalar, side lengths, or vectors as
    columns)."""
    box = np.asarray(box, np.float64)
    if box.ndim == 0:
        return np.eye(3) * box
    return np.diag(box) if box.ndim == 1 else box.T


def evaluate_water(config, workdir, water: WaterData, pretrained_dir, stabie_dir, wall) -> dict:
    out = pathlib.Path(workdir) / "evaluate"
    out.mkdir(parents=True, exist_ok=True)
    e = config.evaluate
    T = float(config.md.temperature_kelvin)
    dt_fs = float(config.md.timestep_fs)
    check = int(e.check_every_steps)
    total = check * max(1, int(round(float(e.length_ps) * 1000.0 / dt_fs / check)))
    z = np.asarray(water.train.atomic_numbers)
    pairs = ((8, 8), (8, 1), (1, 1))
    reference_rdfs = {
        p: np.asarray(
            jnp.mean(
                observables.rdf(jnp.asarray(water.reference.positions), z, p, water.box, 6.0, 500),
                axis=0,
            )
        )
        for p in pairs
    }

    def stable_fn(traj):
        return stability.rdf_mae_criterion(
            traj.positions, z, water.box, reference_rdfs, float(e.rdf_mae_threshold), frame_axis=0
        )[0]

    n_rep = int(e.n_replicas)
    initial = jnp.asarray(water.test.positions[:n_rep], jnp.float32)
    key = jax.random.PRNGKey(int(config.seed) + 1000)

    def evaluate_one(name, loaded, scratch):
        _, sim, _, _ = _potential_and_simulator(
            loaded, water, config, T, check, n_rep, integrator_section="evaluate"
        )
        result = ev.evaluate_stability(
            sim,
            loaded.params,
            initial,
            key,
            stable_fn=stable_fn,
            total_steps=total,
            check_every_steps=check,
            sample_every=int(e.sample_every),
            stop_fraction=float(e.stop_fraction),
            frame_observables=ev.rdf_observables(z, water.box),
            msd_atoms=z == 8,
            checkpoint_dir=scratch / "stability",
            checkpoint_every_seconds=float(e.checkpoint_every_seconds),
            progress=bool(config.progress),
            tensorboard=bool(config.get("tensorboard", False)),
            keep_last_chunks=bool(e.get("save_trajectories", False)),
            desc=f"{name} {T:g} K",
        )
        result, kept = export_kept_frames(
            result,
            z,
            evaluated_models.trajectory_dir(scratch),
            tag=f"{T:g}K",
            cell=_ase_cell(water.box),
        )
        rdfs = {ev.rdf_name(p): result.observables[ev.rdf_name(p)] for p in pairs}
        entry = {
            "median_stable_time_ps": result.median_stable_time_ps,
            "mean_stable_time_ps": result.mean_stable_time_ps,
            "stable_time_ps": result.stable_time_ps,
            "rdf_errors": ev.rdf_errors(rdfs, {ev.rdf_name(p): reference_rdfs[p] for p in pairs}),
            "diffusivity_m2_per_s": None
            if result.diffusivity_m2_per_s is None
            else np.asarray(result.diffusivity_m2_per_s)[-1],
        }
        if kept:
            entry["trajectories"] = {k: str(v) for k, v in kept.items()}
        return result, entry

    models = evaluated_models.load_models(pretrained_dir, stabie_dir, str(e.extra_models))
    results, numbers = evaluated_models.evaluate_each(
        models,
        out,
        lambda name, loaded: evaluated_models.protocol_fingerprint(
            config, name, loaded.params, config.data.to_dict()
        ),
        evaluate_one,
    )
    figures = {
        "fraction_unstable": plots.plot_fraction_unstable(
            {n: (results[n].times_ps, results[n].fraction_unstable) for n in results},
            out / "fraction_unstable.png",
            title=f"water: fraction of unstable replicas at {T:g} K",
            n_replicas=n_rep,
            criterion=f"RDF MAE > {float(e.rdf_mae_threshold):g}",
        ),
        "rdfs": plots.plot_element_rdfs(
            observables.rdf_bins(6.0, 500)[0],
            {ev.rdf_name(p): reference_rdfs[p] for p in pairs},
            {
                n: {ev.rdf_name(p): results[n].observables[ev.rdf_name(p)] for p in pairs}
                for n in results
            },
            out / "rdfs.png",
        ),
    }
    records = metrics_log.read_records(pathlib.Path(workdir) / "stabie" / stabie_lib.METRICS_FILE)
    if records:
        figures["training"] = plots.plot_training_curve(records, out / "training.png")
    table = {
        name: {
            "median stable time (ps)": r["median_stable_time_ps"],
            "O–O RDF MAE": r["rdf_errors"]["rdf_8_8"]["rdf_mae"],
            "O–H RDF MAE": r["rdf_errors"]["rdf_8_1"]["rdf_mae"],
            "H–H RDF MAE": r["rdf_errors"]["rdf_1_1"]["rdf_mae"],
            "D (m²/s)": r["diffusivity_m2_per_s"],
        }
        for name, r in numbers.items()
    }
    report.write_report(
        out,
        title=(
            f"water ({config.get('variant', '')}, data {config.data.source}): {n_rep} replicas × "
            f"{total * dt_fs / 1000.0:g} "
            f"ps at {T:g} K, RDF MAE > {float(e.rdf_mae_threshold)} over "
            f"{check * dt_fs / 1000:g} ps"
        ),
        results={"comparison": table, "details": numbers},
        config=config.to_dict(),
        wall_clock_seconds=wall,
        plots=figures,
        trajectories=trajectory_links(numbers),
    )
    return {n: {k: v for k, v in r.items() if k != "stable_time_ps"} for n, r in numbers.items()}


def run(config, workdir) -> dict:
    workdir = pathlib.Path(workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    for warning in configs.check_config(config):
        logging.warning(warning)
    stages = parse_stages(config.stages)
    if "stabie" in stages:
        check_qm_weight(config)  # at setup, not after pretraining
    wall: dict[str, float] = {}
    water = load_water_data(config.data)
    check_neighbor_capacity(config, water)
    if config.init_checkpoint:
        pretrained_dir = pathlib.Path(config.init_checkpoint).expanduser().resolve()
        checkpoint.read_model_metadata(pretrained_dir)
    elif "pretrain" in stages:
        started = time.time()
        molecule.claim_pretrain(config, workdir, water.train, water.val, (water.box,))
        pretrained_dir = run_pretrain(water, config, workdir)
        wall["pretrain"] = time.time() - started
    else:
        pretrained_dir = workdir / PRETRAINED_MODEL
        checkpoint.read_model_metadata(pretrained_dir)
    stabie_dir = workdir / STABIE_MODEL
    if "stabie" in stages:
        started = time.time()
        molecule.claim_stabie(config, workdir, water.train, pretrained_dir, (water.box,))
        stabie_dir = run_stabie_stage(pretrained_dir, water, config, workdir)
        wall["stabie"] = time.time() - started
    summary = {"workdir": str(workdir), "stages": list(stages), "wall_seconds": wall}
    if "evaluate" in stages:
        started = time.time()
        summary["evaluation"] = evaluate_water(
            config, workdir, water, pretrained_dir, stabie_dir, wall
        )
        wall["evaluate"] = time.time() - started
    # Written last: a run refused by a stage claim (other settings on this workdir) must not
    # leave its config beside results it did not produce; stages.json records every stage.
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
