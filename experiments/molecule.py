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

from experiments import config_reader, configs, stages
from stabie_jax import data, md, observables, workflows


def training_observable(config, molecule: data.MoleculeData) -> observables.BuiltObservable:
    """``config.observable.kind`` built for the molecule's reference frames at the simulation
    temperature (the molecule pipeline runs the global estimator only)."""
    system = config_reader.molecule_observable_system(
        config, molecule, float(config.md.temperature_kelvin)
    )
    return config_reader.training_observable(config, system, estimators=("global",))


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
    molecule = data.load_molecule_data(
        d.source, test_source=d.test_source, **config_reader.data_split_kwargs(d)
    )
    wall["data"] = time.time() - started
    observable = None
    if "stabie" in config_reader.parse_stages(config.stages):
        # built once, here: one that does not fit the data is refused before any work
        observable = training_observable(config, molecule)
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
        return workflows.train_molecule(
            pretrained_dir,
            molecule,
            config_reader.molecule_stabie_inputs(config),
            run_dir=workdir / "stabie",
            model_dir=workdir / stages.STABIE_MODEL,
            seed=int(config.seed),
            metadata={"config": config_reader.stabie_run_config(config)},
            progress=bool(config.progress),
            shard=md.splits_replicas(int(config.stabie.n_replicas)),
            tensorboard=bool(config.get("tensorboard", False)),
            observable=observable,
        )

    def evaluate(pretrained_dir, stabie_dir, wall):
        settings = config_reader.molecule_evaluation(config, molecule)
        spec = config_reader.molecule_data_spec(config)
        out = workdir / stages.EVALUATION_DIR
        results, numbers = workflows.evaluate_molecule_models(
            settings,
            molecule,
            stages.evaluation_models(config, pretrained_dir, stabie_dir),
            out,
            lambda name, loaded: config_reader.evaluation_fingerprint(
                config, name, loaded.params, spec
            ),
        )
        records, rate = stages.training_curve_inputs(config, workdir)
        return workflows.write_molecule_report(
            settings,
            molecule,
            results,
            numbers,
            out,
            system=str(config.system),
            title=stages.evaluation_title(
                config,
                settings.run,
                f"bond-length deviation > {settings.bond_deviation_angstrom} Å",
            ),
            config=config.to_dict(),
            wall_clock_seconds=wall,
            notes=[
                "Same held-out initial structures and momenta for both models.",
                f"Integrator: {config_reader.md_integrator(config, 'evaluate')} (the authors "
                "evaluated aspirin with Langevin, Ac-Ala3 and water with their Nosé–Hoover).",
            ],
            training_records=records,
            training_plot_kwargs=rate,
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
