"""Checkpoints: resumable training state and self-describing trained models.

Two formats, both on orbax-checkpoint:

**Training checkpoints** (:func:`open_manager`, :func:`save_checkpoint`,
:func:`restore_checkpoint`). A directory managed by ``orbax.checkpoint.CheckpointManager`` with
one sub-directory per step. Each step holds two items: ``state``, any pytree (params, optimizer
state, replica state, typed or raw PRNG keys, Python ints/floats as loop counters), and
``metadata``, a JSON blob (config, metrics). Saving is asynchronous; call
``manager.wait_until_finished()`` (or :func:`save_checkpoint` with ``wait=True``) before relying
on the files. Restoring goes into an *abstract* tree built from an example ``target`` pytree, so
dtypes, shapes and the pytree structure (NamedTuples, dataclasses) come back exactly.
Each save also records a SHA-256 of all array bytes in the metadata (single-host; skipped for
arrays sharded across hosts); on restore, a step that
fails to read or whose checksum differs (a corrupt or partial checkpoint, e.g. a run killed
mid-write) is moved aside to ``<directory>/corrupt_step_<n>`` with a warning and the previous
step is tried.

**Model checkpoints** (:func:`save_model_checkpoint`, :func:`load_model_checkpoint`). A
directory with ``model.json`` (model kind, hyperparameters, atomic numbers, cutoff, energy
scale and per-species shift; see :class:`ModelMetadata`) and ``params/`` (orbax). Entry points
(``--config.init_checkpoint=DIR``) and the ASE calculator load these.

Examples:
  >>> manager = open_manager("/tmp/run/checkpoints", max_to_keep=3)       # doctest: +SKIP
  >>> save_checkpoint(manager, 10, state, {"epoch": 10})                  # doctest: +SKIP
  >>> restored = restore_checkpoint(manager, target=state)                # doctest: +SKIP
  >>> restored.state, restored.metadata, restored.step                    # doctest: +SKIP

The two live in ``checkpoint.training`` and ``checkpoint.model``; every public name is
available here.
"""

from __future__ import annotations

from stabie_jax.checkpoint.model import (
    MODEL_FORMAT_VERSION,
    MODEL_JSON,
    MODEL_PARAMS,
    LoadedModel,
    ModelMetadata,
    load_model_checkpoint,
    make_model_potential,
    model_params_checksum,
    read_model_metadata,
    save_model_checkpoint,
)
from stabie_jax.checkpoint.training import (
    RestoredCheckpoint,
    latest_step,
    open_manager,
    restore_checkpoint,
    save_checkpoint,
    state_checksum,
)

__all__ = [
    "LoadedModel",
    "MODEL_FORMAT_VERSION",
    "MODEL_JSON",
    "MODEL_PARAMS",
    "ModelMetadata",
    "RestoredCheckpoint",
    "latest_step",
    "load_model_checkpoint",
    "make_model_potential",
    "model_params_checksum",
    "open_manager",
    "read_model_metadata",
    "restore_checkpoint",
    "save_checkpoint",
    "save_model_checkpoint",
    "state_checksum",
]
