"""The stages every system shares: workdir claims, pretraining, and :func:`run_stages`, the
sequence around a system's own stage functions.

``claim_pretrain`` / ``claim_stabie`` record what produced a stage's outputs in the workdir and
refuse a rerun with other settings (``stabie_jax.workdir``); ``run_pretrain`` fits a model to
energies and forces (free space, or periodic with a neighbour list) and saves its checkpoint.
StABlE itself runs through :mod:`stabie_jax.workflows` (:func:`~stabie_jax.workflows.
train_and_save`), which the systems call with ``workdir/stabie`` and ``workdir/model_stabie``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time
from collections.abc import Callable

import jax
import numpy as np

from experiments.config_reader import (
    overwrite_stages,
    parse_stages,
    pretrain_settings_from_config,
)
from stabie_jax import checkpoint, data, md, metrics_log, run_loop
from stabie_jax import pretrain as pretrain_lib
from stabie_jax import stabie as stabie_lib
from stabie_jax import workdir as workdir_lib
from stabie_jax.evaluation import models as evaluation_models_lib
from stabie_jax.evaluation import plots
from stabie_jax.models import make_potential
from stabie_jax.models.registry import build_model, frames_fault_check, init_params

__all__ = [
    "EVALUATION_DIR",
    "PRETRAINED_MODEL",
    "STABIE_MODEL",
    "STAGE_OUTPUTS",
    "claim_pretrain",
    "claim_stabie",
    "data_fingerprint",
    "evaluation_models",
    "evaluation_title",
    "run_pretrain",
    "run_stages",
    "training_curve_inputs",
]


PRETRAINED_MODEL = "model_pretrained"


STABIE_MODEL = "model_stabie"


EVALUATION_DIR = "evaluate"


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
    "stabie": (
        "checkpoint_every",
        "max_wall_hours",
        "split_cosine_every",  # diagnostics
        "estimator_chunk_size",  # layout: the same sums up to round-off
        "qm_chunk_size",
    ),
    "md": ("replica_batch_size", "layout"),
    "data": ("n_test", "test_source", "download"),
}


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


def run_stages(
    config,
    workdir: pathlib.Path,
    *,
    train: data.Dataset,
    val: data.Dataset,
    pretrain: Callable[[], pathlib.Path],
    stabie: Callable[[pathlib.Path], pathlib.Path],
    evaluate: Callable[[pathlib.Path, pathlib.Path, dict], dict],
    extra_arrays: tuple = (),
    wall: dict | None = None,
) -> dict:
    """The stage sequence every system shares, around its own stage functions.

    The starting model comes from ``config.init_checkpoint``, from ``pretrain()`` (when
    ``pretrain`` is among ``config.stages``) or from an earlier run in ``workdir``; then
    ``stabie(pretrained_dir) -> model dir`` and ``evaluate(pretrained_dir, stabie_dir, wall) ->
    summary`` run when asked for. Pretraining and StABlE are claimed in ``workdir/stages.json``
    first (:func:`claim_pretrain`, :func:`claim_stabie`; ``extra_arrays`` such as the cell enter
    the data fingerprint), so a rerun with other settings is refused before anything is
    computed. Each stage's wall time goes into ``wall`` (seconds); ``config.json`` and
    ``summary.json`` are written last, so a refused run leaves nothing beside results it did
    not produce. Returns the summary.
    """
    requested = parse_stages(config.stages)
    wall = {} if wall is None else wall
    if config.init_checkpoint:
        pretrained_dir = pathlib.Path(config.init_checkpoint).expanduser().resolve()
        checkpoint.read_model_metadata(pretrained_dir)  # a clear error if it is not a model
    elif "pretrain" in requested:
        started = time.time()
        claim_pretrain(config, workdir, train, val, extra_arrays)
        pretrained_dir = pretrain()
        wall["pretrain"] = time.time() - started
    else:
        pretrained_dir = workdir / PRETRAINED_MODEL
        checkpoint.read_model_metadata(pretrained_dir)
    stabie_dir = workdir / STABIE_MODEL
    if "stabie" in requested:
        started = time.time()
        claim_stabie(config, workdir, train, pretrained_dir, extra_arrays)
        stabie_dir = stabie(pretrained_dir)
        wall["stabie"] = time.time() - started
    summary = {
        "workdir": str(workdir),
        "stages": list(requested),
        "wall_seconds": wall,
        "pretrained_model": str(pretrained_dir),
    }
    if "evaluate" in requested:
        started = time.time()
        summary["evaluation"] = evaluate(pretrained_dir, stabie_dir, wall)
        wall["evaluate"] = time.time() - started
    summary["stabie_model"] = str(stabie_dir) if stabie_dir.exists() else None
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def evaluation_models(config, pretrained_dir, stabie_dir) -> dict:
    """``{name: LoadedModel}`` to evaluate: baseline, StABlE (when trained) and
    ``config.evaluate.extra_models``."""
    return evaluation_models_lib.load_models(
        pretrained_dir, stabie_dir, str(config.evaluate.extra_models)
    )


def training_curve_inputs(config, workdir) -> tuple[list, dict]:
    """The StABlE metrics log of ``workdir`` (empty when StABlE has not run) and the keywords
    that plot its learning rate as the α the user configured: the driver runs the exact
    estimator's rate (converted from the authors' convention), recorded with the model."""
    workdir = pathlib.Path(workdir)
    records = metrics_log.read_records(workdir / "stabie" / stabie_lib.METRICS_FILE)
    try:
        meta = checkpoint.read_model_metadata(workdir / STABIE_MODEL)
        exact = float(meta.extra["stabie"]["exact_learning_rate"])
    except (OSError, ValueError, KeyError, TypeError):
        return records, {}
    convention = config.stabie.get("hyperparameter_convention", "authors")
    return records, {
        "lr_scale": float(config.stabie.learning_rate) / exact,
        "lr_label": f"learning rate α ({convention} convention, as configured)",
    }


def evaluation_title(config, run, criterion: str) -> str:
    """The evaluation report's title: system, variant, data, replicas × length at T, and the
    stability criterion in words (``run`` is the :class:`stabie_jax.workflows.EvaluationRun`)."""
    length_ps = run.total_steps * run.timestep_fs / 1000.0
    return (
        f"{config.system} ({config.get('variant', '')}, data {config.data.source}): "
        f"{run.n_replicas} replicas × {length_ps:g} ps at {run.temperature_kelvin:g} K, {criterion}"
    )
