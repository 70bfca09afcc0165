"""The per-model loop shared by the evaluation stages (molecules and water).

Which models are evaluated (baseline, StABlE, ``evaluate.extra_models``), the fingerprint of the
protocol each result depends on, and the store that keeps finished models so that a rerun (after
a kill, or with more models) simulates only what is new.
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

MODELS_DIR = "models"  # under WORKDIR/evaluate/
_NOT_IN_FINGERPRINT = ("extra_models", "checkpoint_every_seconds")
IN_PROGRESS_DIR = "in_progress"  # under MODELS_DIR/NAME/: checkpoints of an unfinished model


def load_models(pretrained_dir, stabie_dir, extra_models: str = "") -> dict:
    """``{name: LoadedModel}``: baseline, StABlE (if trained) and ``extra_models``.

    ``extra_models`` is ``"name=DIR,name=DIR"`` (e.g. a published model imported with
    ``python -m stabie_jax.interop``), evaluated under exactly the same protocol.
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


def protocol_fingerprint(config, name: str, params, data_spec) -> str:
    """What determines one model's evaluation: protocol, data, seed and the parameters.

    Args:
      config: the experiment config (its ``evaluate``, ``md`` and, if present, ``observable``
        sections enter; ``evaluate.extra_models`` and ``evaluate.checkpoint_every_seconds`` do
        not: the other models evaluated alongside and how often progress is saved do not change
        this one's result).
      name: the model's name in the comparison.
      params: its parameters (checksummed).
      data_spec: JSON-able description of the data the evaluation uses.
    """
    spec = {"name": name, "params": checkpoint.state_checksum(params)}
    for section in ("evaluate", "md", "observable"):
        if section in config:
            values = config[section].to_dict()
            spec[section] = {k: v for k, v in values.items() if k not in _NOT_IN_FINGERPRINT}
    spec["seed"] = int(config.seed)
    spec["data"] = data_spec
    return evaluation_store.fingerprint(spec)


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
      fingerprint_fn: ``(name, loaded) -> str``, :func:`protocol_fingerprint` of the model.
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
