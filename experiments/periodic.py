"""Pretrain → StABlE → evaluate for a periodic system (64-water, or any bulk system of yours).

The config layer for ``experiments/water.py`` and the periodic side of ``experiments/custom.py``;
library code receives explicit arguments. Any species in any order, any cell from the data
(orthorhombic or triclinic, periodic in all three directions), unwrapped positions with JAX-MD
sparse neighbour lists. Molecules are the connected components of the covalent bond graph of the
reference frames (``stabie_jax.data.find_bonds``); an atomic system (no bonds) has one molecule
per atom.

Chosen by config:

* training observable ``observable.kind``, a registered trainable observable
  (:mod:`stabie_jax.observables`); the built-ins: ``"bond_lengths"`` (water: per-molecule distances
  from the centre atom, localized estimator with the molecule's per-atom energies, molecules
  balanced over ``stabie.n_bins`` deviation bins) or ``"rdf"`` (the element-pair RDFs on
  ``observable.rdf_n_bins`` bins to ``observable.rdf_r_max_angstrom``, global estimator);
* training criterion ``stabie.criterion``: ``"min_intermolecular"`` (distance between atoms of
  different molecules below ``stabie.min_intermolecular_angstrom``; water: 1.2 Å) or
  ``"bond_deviation"`` (a bond of the graph off its mean length by more than
  ``stabie.bond_deviation_angstrom``);
* evaluation criterion ``evaluate.criterion``: ``"rdf_mae"`` (water: the element-pair RDFs over
  each ``check_every_steps`` window, ``r_max·mean|Δg|`` above ``evaluate.rdf_mae_threshold``),
  ``"min_intermolecular"`` or ``"bond_deviation"``; the evaluation also reports the element-pair
  RDF errors and the diffusivity of the heaviest element.
"""

from __future__ import annotations

import logging
import pathlib

import numpy as np

from experiments import config_reader, configs, stages
from stabie_jax import md, observables, workflows
from stabie_jax.localized_estimator import neighbourhoods_from_bonds
from stabie_jax.models.gemnet_t import GemNetT
from stabie_jax.models.gemnet_table import max_neighbors_in_frames, suggested_capacity
from stabie_jax.models.potential import neighbor_format
from stabie_jax.models.registry import build_model
from stabie_jax.workflows import periodic_evaluation
from stabie_jax.workflows.periodic import PeriodicData

TRAINING_CRITERIA = workflows.TRAINING_CRITERIA
EVALUATION_CRITERIA = workflows.EVALUATION_CRITERIA


def load_data(config) -> PeriodicData:
    """``config.data`` loaded and split (:func:`stabie_jax.workflows.load_periodic_data`)."""
    d = config.data
    return workflows.load_periodic_data(d.source, **config_reader.data_split_kwargs(d))


def check_choices(config, periodic: PeriodicData) -> None:
    """Refuse observable/criterion choices the data cannot support, naming the key and the fix."""
    if str(config.observable.kind) == "bond_lengths" and periodic.neighbourhoods is None:
        neighbourhoods_from_bonds(periodic.atomic_numbers, periodic.bonds.bonds)  # raises, says why
    for key, allowed in (
        ("stabie.criterion", TRAINING_CRITERIA),
        ("evaluate.criterion", EVALUATION_CRITERIA),
    ):
        section, name = key.split(".")
        value = str(config[section][name])
        if value not in allowed:
            raise ValueError(f"config.{key} = {value!r}: choose one of {allowed}")
        if value == "bond_deviation" and not len(periodic.bonds.bonds):
            raise ValueError(
                f"config.{key} = 'bond_deviation', but the data has no covalent bonds; use "
                f"--config.{key}=min_intermolecular"
            )
        if value == "min_intermolecular" and len(np.unique(periodic.molecule_ids)) < 2:
            raise ValueError(
                f"config.{key} = 'min_intermolecular', but the bond graph joins all atoms into "
                f"one molecule; use --config.{key}=bond_deviation"
            )
    sampled = float(config.data.get("reference_temperature_kelvin", 0.0) or 0.0)
    if sampled and not np.isclose(sampled, float(config.md.temperature_kelvin)):
        raise ValueError(
            f"config.data.reference_temperature_kelvin = {sampled:g} K differs from "
            f"config.md.temperature_kelvin = {float(config.md.temperature_kelvin):g} K: the "
            "periodic pipeline takes its reference observables from the frames as they are "
            "(reweighting a bulk system's energies to another temperature leaves almost no "
            "effective samples); simulate at the data's temperature"
        )
    half = 0.5 * observables.cell_heights(periodic.box).min()
    reach = float(config.model.hparams.get("cutoff", 5.0)) + float(
        config.model.neighbor_skin_angstrom
    )
    if reach > half + 1e-9:
        raise ValueError(
            f"config.model.hparams.cutoff + config.model.neighbor_skin_angstrom = {reach:g} Å "
            f"exceeds half the smallest cell height of the data ({half:.3f} Å): minimum-image "
            "neighbour lists would miss periodic images; lower them or use a supercell of your "
            "frames (ase.build.make_supercell)"
        )
    for key in ("observable.rdf_r_max_angstrom", "evaluate.rdf_r_max_angstrom"):
        section, name = key.split(".")
        if float(config[section][name]) > half + 1e-9:
            fits = np.floor(half * 10) / 10
            raise ValueError(
                f"config.{key} = {float(config[section][name]):g} Å exceeds half the smallest "
                f"cell height of the data ({half:.3f} Å); set --config.{key}={fits:g}"
            )
    observables.get(config_reader.observable_kind(config), trainable=True)  # a trainable kind


def training_observable(config, periodic: PeriodicData) -> observables.BuiltObservable:
    """The configured training observable built for the periodic system's reference frames."""
    return config_reader.training_observable(
        config,
        observables.ObservableSystem(
            atomic_numbers=periodic.atomic_numbers,
            reference_positions=periodic.reference.positions,
            temperature_kelvin=float(config.md.temperature_kelvin),
            box=periodic.box,
            displacement_fn=periodic.space.displacement_fn,
            neighbourhoods=periodic.neighbourhoods,
        ),
    )


def check_neighbor_capacity(config, periodic: PeriodicData) -> None:
    """Refuse a GemNet-T neighbour table too small for the data (its energies would be NaN)."""
    if config.model.kind != "gemnet_t":
        return
    hparams = config.model.hparams
    capacity = int(hparams.get("neighbor_capacity", GemNetT.neighbor_capacity))
    cutoff = float(hparams.get("cutoff", 5.0))
    frames = np.concatenate(
        [periodic.train.positions, periodic.val.positions, periodic.test.positions]
    )
    most = max_neighbors_in_frames(frames, periodic.space.displacement_fn, cutoff)
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


def run_pretrain_stage(periodic: PeriodicData, config, workdir: pathlib.Path) -> pathlib.Path:
    hparams = dict(config.model.hparams)
    fmt = neighbor_format(build_model(config.model.kind, **hparams))
    space, neighbor_fn = workflows.periodic_neighbor_fn(
        periodic.box, float(hparams.get("cutoff", 5.0)), 0.0, fmt
    )
    return stages.run_pretrain(
        periodic.train,
        periodic.val,
        periodic.test,
        kind=config.model.kind,
        hparams=hparams,
        settings=config_reader.pretrain_settings_from_config(config),
        workdir=workdir,
        seed=int(config.seed),
        displacement_fn=space.displacement_fn,
        neighbor_fn=neighbor_fn,
        extra={"box_angstrom": np.asarray(periodic.box).tolist()},
    )


def run_stabie_stage(
    pretrained_dir, periodic: PeriodicData, config, workdir, observable
) -> pathlib.Path:
    """:func:`stabie_jax.workflows.train_periodic` with the config's settings; returns the
    trained model's checkpoint directory."""
    return workflows.train_periodic(
        pretrained_dir,
        periodic,
        config_reader.periodic_stabie_inputs(config),
        observable,
        seed=int(config.seed),
        run_dir=workdir / "stabie",
        model_dir=workdir / stages.STABIE_MODEL,
        metadata={"config": config_reader.stabie_run_config(config)},
        progress=bool(config.progress),
        shard=md.splits_replicas(int(config.stabie.n_replicas)),
        tensorboard=bool(config.get("tensorboard", False)),
    )


def evaluate_periodic(
    config, workdir, periodic: PeriodicData, pretrained_dir, stabie_dir, wall
) -> dict:
    """The evaluation stage: every model under the config's protocol, then the report."""
    settings = config_reader.periodic_evaluation(config)
    out = pathlib.Path(workdir) / stages.EVALUATION_DIR
    results, numbers = workflows.evaluate_periodic_models(
        settings,
        periodic,
        stages.evaluation_models(config, pretrained_dir, stabie_dir),
        out,
        lambda name, loaded: config_reader.evaluation_fingerprint(
            config, name, loaded.params, config.data.to_dict()
        ),
    )
    records, rate = stages.training_curve_inputs(config, workdir)
    run = settings.run
    return workflows.write_periodic_report(
        settings,
        periodic,
        results,
        numbers,
        out,
        system=str(config.system),
        title=stages.evaluation_title(
            config,
            run,
            f"{periodic_evaluation.criterion_text(settings.criterion, settings.threshold)} "
            f"(checked every {run.check_every_steps * run.timestep_fs / 1000:g} ps)",
        ),
        config=config.to_dict(),
        wall_clock_seconds=wall,
        training_records=records,
        training_plot_kwargs=rate,
    )


def run(config, workdir, frames: PeriodicData | None = None) -> dict:
    """Run the configured stages; ``frames`` is :func:`load_data` of the config when the
    caller has it already. Returns a summary dict (also in workdir)."""
    workdir = pathlib.Path(workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    for warning in configs.check_config(config):
        logging.warning(warning)
    if "stabie" in config_reader.parse_stages(config.stages):
        workflows.check_qm_weight(float(config.stabie.qm_weight))  # at setup, not after pretraining
    periodic = load_data(config) if frames is None else frames
    check_choices(config, periodic)
    check_neighbor_capacity(config, periodic)
    observable = None
    if "stabie" in config_reader.parse_stages(config.stages):
        observable = training_observable(config, periodic)  # fits these data: before any work
    logging.info(
        "data: %d train / %d val / %d test frames, %d atoms, %d molecules",
        periodic.train.n_frames,
        periodic.val.n_frames,
        periodic.test.n_frames,
        len(periodic.atomic_numbers),
        len(np.unique(periodic.molecule_ids)),
    )
    return stages.run_stages(
        config,
        workdir,
        train=periodic.train,
        val=periodic.val,
        pretrain=lambda: run_pretrain_stage(periodic, config, workdir),
        stabie=lambda pretrained: run_stabie_stage(
            pretrained, periodic, config, workdir, observable
        ),
        evaluate=lambda pretrained, trained, wall: evaluate_periodic(
            config, workdir, periodic, pretrained, trained, wall
        ),
        extra_arrays=(np.asarray(periodic.box),),
    )
