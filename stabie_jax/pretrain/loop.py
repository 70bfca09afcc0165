"""The resumable pretraining loop (:func:`pretrain`): epochs with validation, plateau or cosine
schedule, EMA, early stopping, checkpoints that refuse a mismatched resume, and the report; and
the metadata of the pretrained model (:func:`pretrained_model_metadata`)."""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time
from typing import Any

import numpy as np

from stabie_jax.checkpoint import ModelMetadata
from stabie_jax.losses import check_loss_names
from stabie_jax.models.potential import Potential
from stabie_jax.models.registry import model_hparams
from stabie_jax.pretrain.frames import PretrainData, prepare_data
from stabie_jax.pretrain.settings import (
    _RESUMABLE_CHANGES,
    SCHEDULES,
    PretrainSettings,
    PretrainState,
)
from stabie_jax.pretrain.steps import initial_state, make_epoch_fn, make_evaluate_fn
from stabie_jax.run_loop import ResumableLoop

__all__ = [
    "REPORT_FILE",
    "pretrain",
    "pretrained_model_metadata",
]


REPORT_FILE = "report.json"


def _settings_json(settings: PretrainSettings) -> dict:
    return dataclasses.asdict(settings)


def _check_resume_compatible(saved: dict, settings: PretrainSettings, workdir) -> None:
    current = _settings_json(settings)
    # The cosine schedule's length is max_epochs: changing it would change the past schedule.
    fixed = {"max_epochs"} if settings.schedule == "cosine" else set()
    saved = {"schedule": "plateau", "cosine_final_factor": 0.01, "max_wall_seconds": None, **saved}
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r} vs now {v!r}"
        for k, v in current.items()
        if (k not in _RESUMABLE_CHANGES or k in fixed) and saved.get(k) != v
    ]
    if diffs:
        raise ValueError(
            f"cannot resume the pretraining run in {workdir} with different settings "
            f"({'; '.join(diffs)}); use a new workdir or the original settings"
        )


def _stop_reason(state: PretrainState, settings: PretrainSettings, elapsed: float) -> str | None:
    if settings.max_wall_seconds is not None and elapsed >= settings.max_wall_seconds:
        return "wall_clock"
    if (
        settings.early_stopping_patience is not None
        and state.epochs_without_improvement >= settings.early_stopping_patience
    ):
        return "early_stopping"
    if settings.stop_at_min_learning_rate and (
        state.plateau.learning_rate <= settings.min_learning_rate
    ):
        return "min_learning_rate"
    return None


def _check_same_training_set(metadata: dict, data: PretrainData, workdir) -> None:
    saved_shift = {int(k): v for k, v in metadata["energy_shift"].items()}
    if metadata["energy_scale"] != data.energy_scale or saved_shift != data.energy_shift:
        raise ValueError(
            f"the training set differs from the one of the checkpoints in {workdir} "
            "(energy shift/scale changed); use a new workdir"
        )


def pretrain(
    potential: Potential,
    params,
    train,
    val,
    *,
    atomic_numbers,
    settings: PretrainSettings,
    workdir,
    test=None,
    neighbor_fn=None,
    fault_check=None,
) -> tuple[Any, dict]:
    """Train ``params`` of a bare potential on energies and forces; resume if ``workdir`` has
    checkpoints.

    Args:
      potential: :class:`Potential` of the bare model (dense edges; ``neighbor=None``). Its
        outputs are treated as normalised energies; the fitted shift/scale turn them into eV.
      params: initial parameters.
      train, val: reference frames with ``.positions [F,N,3]`` Å, ``.energies [F]`` eV,
        ``.forces [F,N,3]`` eV/Å (e.g. :class:`~stabie_jax.losses.LabelledFrames`).
      atomic_numbers: ``[N]`` ints, as ``potential`` was built.
      settings: :class:`PretrainSettings`.
      workdir: output directory (checkpoints/, metrics.jsonl, report.json).
      test: optional held-out frames for the final report.
      neighbor_fn: for a potential built with ``use_neighbor_list=True`` (bulk systems): the
        JAX-MD sparse ``neighbor_list`` of its space. Per-frame neighbour indices are then
        precomputed once (:func:`precompute_neighbor_indices`) and batched with the frames.
      fault_check: ``check(positions [F, N, 3]) -> None`` run on the training and validation
        frames before any compute, raising for frames the model cannot evaluate (a GemNet-T
        table overflow: :func:`stabie_jax.models.registry.frames_fault_check`).

    Returns:
      ``(params, report)``: the parameters with the best validation force MAE (bare model),
      and the report dict also written to ``workdir/report.json``, including
      ``energy_scale`` and ``energy_shift`` (``{Z: eV}``) to store with the model.
    """
    workdir = pathlib.Path(workdir).expanduser().resolve()
    if fault_check is not None:
        fault_check(np.concatenate([np.asarray(train.positions), np.asarray(val.positions)]))
    data = prepare_data(train, val, test, atomic_numbers, settings, neighbor_fn)
    check_loss_names(settings.energy_loss, settings.force_loss)
    if settings.schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {settings.schedule!r}")
    per_atom_shift = np.zeros(np.shape(atomic_numbers), np.float32)  # already off the labels
    evaluate = make_evaluate_fn(potential, settings, data.energy_scale, per_atom_shift)
    epoch_fn = make_epoch_fn(potential, settings, data, evaluate)
    checkpoint_metadata = {
        "settings": _settings_json(settings),
        "energy_scale": data.energy_scale,
        "energy_shift": data.energy_shift,
    }
    with ResumableLoop(
        workdir,
        counter="epoch",
        total=settings.max_epochs,
        desc="pretrain",
        progress=settings.progress_bar,
        max_to_keep=settings.max_checkpoints_to_keep,
        tensorboard=settings.tensorboard,
    ) as loop:
        state, metadata, _ = loop.resume(initial_state(params, settings))
        if metadata is None:
            elapsed, stop_reason = 0.0, None
            initial = evaluate(state.params, data.val)
            record = {"epoch": 0, "step": 0, **{f"val_{k}": v for k, v in initial.items()}}
            loop.log(record, advance=False)
        else:
            _check_resume_compatible(metadata["settings"], settings, workdir)
            _check_same_training_set(metadata, data, workdir)
            stop_reason = metadata.get("stop_reason")
            elapsed = float(metadata.get("metrics", {}).get("wall_seconds", 0.0))
            logging.info("resumed pretraining from epoch %d in %s", state.epoch, workdir)
        while stop_reason is None and state.epoch < settings.max_epochs:
            t0 = time.perf_counter()
            state, record = epoch_fn(state)
            elapsed += time.perf_counter() - t0
            stop_reason = _stop_reason(state, settings, elapsed)
            record.update(epoch_seconds=time.perf_counter() - t0, wall_seconds=elapsed)
            # Log first: lines past the checkpoint a resumed run starts from are dropped.
            loop.log(
                record,
                lr=f"{record['lr']:.2e}",
                loss=f"{record['train_loss']:.3g}",
                val_f_mae=f"{record['val_force_mae_ev_per_angstrom']:.4f}",
            )
            if (
                state.epoch % settings.checkpoint_every_epochs == 0
                or stop_reason is not None
                or state.epoch >= settings.max_epochs
            ):
                blob = {**checkpoint_metadata, "metrics": record, "stop_reason": stop_reason}
                loop.save(state.epoch, state, blob)

    report = {
        "epochs": state.epoch,
        "steps": int(state.step),
        "best_epoch": state.best_epoch,
        "stop_reason": stop_reason or "max_epochs",
        "final_learning_rate": state.plateau.learning_rate,
        "energy_scale": data.energy_scale,
        "energy_shift": {str(k): v for k, v in data.energy_shift.items()},
        "n_train": int(data.train.positions.shape[0]),
        "n_val": int(data.val.positions.shape[0]),
        "val": evaluate(state.best_params, data.val),
        "settings": _settings_json(settings),
    }
    if data.test is not None:
        report["n_test"] = int(data.test.positions.shape[0])
        report["test"] = evaluate(state.best_params, data.test)
    (workdir / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return state.best_params, report


def pretrained_model_metadata(
    kind: str, module, atomic_numbers, cutoff_angstrom: float, report: dict, **extra
) -> ModelMetadata:
    """:class:`~stabie_jax.checkpoint.ModelMetadata` for the result of :func:`pretrain`.

    Carries the fitted energy scale and per-species shift, so that
    ``save_model_checkpoint(dir, params, pretrained_model_metadata(...))`` gives a checkpoint
    whose :func:`~stabie_jax.checkpoint.make_model_potential` reproduces the trained potential.

    Args:
      kind: registry name of ``module`` (e.g. ``"schnet"``).
      module: the Flax module that was trained.
      atomic_numbers: ``[N]`` ints.
      cutoff_angstrom: the model's cutoff, Å.
      report: the report returned by :func:`pretrain`.
      **extra: more JSON-able entries for ``metadata.extra`` (e.g. dataset name).
    """
    return ModelMetadata(
        kind=kind,
        hparams=model_hparams(module),
        atomic_numbers=tuple(int(z) for z in np.asarray(atomic_numbers)),
        cutoff_angstrom=float(cutoff_angstrom),
        energy_scale=float(report["energy_scale"]),
        energy_shift={int(k): float(v) for k, v in report["energy_shift"].items()},
        extra={"pretrain_report": report, **extra},
    )
