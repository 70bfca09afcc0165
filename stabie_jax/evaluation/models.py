"""Evaluate several models under one protocol, each once: finished models are kept in the
store (:mod:`stabie_jax.evaluation.store`), so that a rerun (after a kill, or with more models)
simulates only what is new.

:func:`load_models` gathers the models (baseline, StABlE, extra ``NAME=DIR`` models);
:func:`evaluate_each` runs the caller's per-model evaluation for those whose result under the
given fingerprint is not stored yet, with a scratch directory for in-progress checkpoints;
:func:`trajectory_dir` is where a model's exported frames go.
"""

from __future__ import annotations

import logging
import pathlib
import shutil
import time
from collections.abc import Callable

from stabie_jax import checkpoint, run_loop
from stabie_jax.evaluation import report
from stabie_jax.evaluation import store as evaluation_store

__all__ = ["IN_PROGRESS_DIR", "MODELS_DIR", "evaluate_each", "load_models", "trajectory_dir"]

MODELS_DIR = "models"  # under the evaluation directory
IN_PROGRESS_DIR = "in_progress"  # under MODELS_DIR/NAME/: checkpoints of an unfinished model


def load_models(pretrained_dir, stabie_dir, extra_models: str = "") -> dict:
    """``{name: LoadedModel}``: baseline, StABlE (if trained) and ``extra_models``.

    ``extra_models`` is ``"name=DIR,name=DIR"`` (config key ``evaluate.extra_models``; e.g. a
    published model imported with ``python -m stabie_jax.interop``), evaluated under exactly
    the same protocol.
    """
    models = {"baseline": checkpoint.load_model_checkpoint(pretrained_dir)}
    if (pathlib.Path(stabie_dir) / checkpoint.MODEL_JSON).exists():
        models["StABlE"] = checkpoint.load_model_checkpoint(stabie_dir)
    for item in filter(None, (part.strip() for part in str(extra_models).split(","))):
        name, sep, directory = item.partition("=")
        if not sep or not name.strip() or not directory.strip():
            raise ValueError(
                f"evaluate.extra_models entry {item!r} is not NAME=DIR; e.g. "
                "--config.evaluate.extra_models='authors_stabie=models/authors_stabie'"
            )
        if name.strip() in models:
            raise ValueError(f"evaluate.extra_models: the name {name.strip()!r} is taken")
        models[name.strip()] = checkpoint.load_model_checkpoint(directory.strip())
    return models


def evaluate_each(
    models: dict,
    out: pathlib.Path,
    fingerprint_fn: Callable[[str, object], str],
    evaluate_one: Callable[[str, object, pathlib.Path], tuple],
) -> tuple[dict, dict]:
    """Evaluate every model once, reusing finished results stored under ``out/models/NAME``.

    Args:
      models: ``{name: LoadedModel}``.
      out: the evaluation directory.
      fingerprint_fn: ``(name, loaded) -> str``, a :func:`stabie_jax.evaluation.store.
        fingerprint` of everything the model's result depends on (protocol, data, seed,
        parameters).
      evaluate_one: ``(name, loaded, scratch) -> (result, entry)``: ``result`` a nest of the
        results (:mod:`stabie_jax.evaluation.store` stores it), ``entry`` a dict of JSON-able
        numbers; ``scratch`` a directory for the model's in-progress checkpoints
        (``checkpoint_dir`` of :func:`stabie_jax.evaluation.evaluate_stability`), so that a run
        killed inside a model resumes there. It is named after the fingerprint, so a changed
        protocol or model never resumes from it, and removed once the model is stored.

    Returns:
      ``({name: result}, {name: entry})``; stored entries come back as JSON (lists for arrays).
    """
    results, numbers = {}, {}
    for name, loaded in models.items():
        fingerprint = fingerprint_fn(name, loaded)
        directory = pathlib.Path(out) / MODELS_DIR / name
        stored = evaluation_store.load_result(directory, fingerprint)
        if stored is not None:
            results[name], numbers[name] = stored
            logging.info("evaluate: %s reused from %s", name, directory)
            continue
        scratch_root = directory / IN_PROGRESS_DIR
        scratch = scratch_root / fingerprint[:16]
        for stale in scratch_root.glob("*") if scratch_root.is_dir() else ():
            if stale != scratch:
                logging.info("evaluate: removing %s (another protocol or model)", stale)
                shutil.rmtree(stale)
        started = time.time()
        result, entry = evaluate_one(name, loaded, scratch)
        entry = {**entry, "wall_seconds": time.time() - started}
        results[name], numbers[name] = result, entry
        # Keep the finished model: a later run (a kill during the next model, or a comparison
        # that adds models) reuses it instead of simulating again.
        evaluation_store.save_result(
            directory, result, fingerprint, extra=report.to_jsonable(entry)
        )
        _keep_tensorboard_events(scratch, directory)
        shutil.rmtree(scratch_root, ignore_errors=True)
    return results, numbers


def trajectory_dir(scratch) -> pathlib.Path:
    """``models/NAME/trajectories`` for the scratch ``models/NAME/in_progress/<fingerprint>``
    that :func:`evaluate_each` hands to ``evaluate_one`` (kept when the scratch is removed)."""
    return pathlib.Path(scratch).parent.parent / "trajectories"


def _keep_tensorboard_events(scratch: pathlib.Path, directory: pathlib.Path) -> None:
    """Move the TensorBoard event folders of a finished model out of its scratch directory
    (``in_progress/<fp>/stability/tensorboard`` -> ``tensorboard/stability``)."""
    for events in sorted(scratch.rglob(run_loop.TENSORBOARD_DIR)) if scratch.is_dir() else ():
        target = directory / run_loop.TENSORBOARD_DIR / events.parent.relative_to(scratch)
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(events), str(target))
