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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import shutil
import warnings
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from stabie_jax.jsonable import to_jsonable
from stabie_jax.models.potential import Potential, make_potential
from stabie_jax.models.registry import abstract_params, build_model
from stabie_jax.models.scale_shift import scale_shift_potential

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

_CHECKSUM_KEY = "_state_sha256"
MODEL_JSON = "model.json"
MODEL_PARAMS = "params"
MODEL_FORMAT_VERSION = 1


class RestoredCheckpoint(NamedTuple):
    """Result of :func:`restore_checkpoint`.

    Attributes:
      state: the pytree, with the structure and dtypes of ``target``.
      metadata: the JSON blob saved with it (dict), without the internal checksum.
      step: the step that was restored.
    """

    state: Any
    metadata: dict
    step: int


# ---------------------------------------------------------------------------------------------
# Training checkpoints.


def open_manager(
    directory,
    *,
    max_to_keep: int | None = 3,
    create: bool = True,
    async_save: bool = True,
) -> ocp.CheckpointManager:
    """An orbax ``CheckpointManager`` over ``directory`` keeping the last ``max_to_keep`` steps.

    Args:
      directory: checkpoint root; made absolute.
      max_to_keep: number of most recent steps kept (``None``: all).
      create: create the directory if missing. With ``create=False`` a missing directory is an
        error (use this when resuming or evaluating).
      async_save: write in a background thread (call ``wait_until_finished()``).

    Raises:
      ValueError: ``create=False`` and the directory does not exist.
    """
    path = pathlib.Path(directory).expanduser().resolve()
    if not create and not path.is_dir():
        raise ValueError(
            f"checkpoint directory {path} does not exist; check the path (e.g. "
            "--config.init_checkpoint) or run the stage that writes it first"
        )
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=create, enable_async_checkpointing=async_save
    )
    # Handlers named up front, so that a fresh manager can read a step's metadata (its leaf
    # shapes) before anything is restored with it.
    handlers = {"state": ocp.StandardCheckpointHandler(), "metadata": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(path, options=options, item_handlers=handlers)


def latest_step(directory) -> int | None:
    """Newest finalised step under ``directory`` (``None`` if there is none).

    Raises:
      ValueError: the directory does not exist.
    """
    with open_manager(directory, create=False, async_save=False) as manager:
        return manager.latest_step()


def _host_leaf(leaf) -> np.ndarray:
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    return np.asarray(jax.device_get(leaf))


def state_checksum(state) -> str | None:
    """SHA-256 over the structure, dtypes, shapes and bytes of every leaf of ``state``.

    Returns None when some array is not fully addressable from this process (multi-host
    sharding), where the bytes cannot be hashed locally; such checkpoints are not verified.
    """
    digest = hashlib.sha256()
    leaves, treedef = jax.tree_util.tree_flatten(state)
    if any(isinstance(x, jax.Array) and not x.is_fully_addressable for x in leaves):
        return None
    digest.update(str(treedef).encode())
    for leaf in leaves:
        array = _host_leaf(leaf)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _keep_nonfinite(value):
    """:func:`stabie_jax.jsonable.to_jsonable` keeping NaN/inf (metadata round-trips as floats)."""
    return to_jsonable(value, nonfinite="keep")


def save_checkpoint(
    manager: ocp.CheckpointManager,
    step: int,
    state,
    metadata: Mapping | None = None,
    *,
    wait: bool = False,
) -> None:
    """Save ``state`` (any pytree) and ``metadata`` (JSON-able mapping) as ``step``.

    Args:
      manager: from :func:`open_manager`.
      step: non-negative int, larger than every saved step.
      state: pytree of arrays, PRNG keys, and Python/numpy scalars.
      metadata: e.g. ``{"config": ..., "metrics": ...}``; numpy values are converted.
      wait: block until the files are written.
    """
    blob = _keep_nonfinite(dict(metadata or {}))
    if _CHECKSUM_KEY in blob:
        raise ValueError(f"metadata key {_CHECKSUM_KEY!r} is reserved")
    blob[_CHECKSUM_KEY] = state_checksum(state)
    manager.save(
        int(step),
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(blob)
        ),
        force=True,
    )
    if wait:
        manager.wait_until_finished()


def _abstract(target):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, target)


def _on_this_device(abstract):
    """``abstract`` (a ShapeDtypeStruct tree) with a sharding on this machine's first device.

    Without one, orbax restores onto the devices recorded at save time (``cpu:0`` for a
    checkpoint written on a CPU), which fails on a GPU or TPU machine.
    """
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding or device), abstract
    )


def _quarantine(manager: ocp.CheckpointManager, step: int) -> pathlib.Path:
    root = pathlib.Path(manager.directory)
    source = root / str(step)
    dest = root / f"corrupt_step_{step}"
    suffix = 0
    while dest.exists():
        suffix += 1
        dest = root / f"corrupt_step_{step}_{suffix}"
    if source.exists():
        shutil.move(os.fspath(source), os.fspath(dest))
    manager.reload()
    return dest


def _leaf_name(path) -> str:
    parts = []
    for entry in path:
        for attr in ("name", "key", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
    return "/".join(parts)


def _shape(leaf) -> tuple:
    shape = getattr(leaf, "shape", None)
    return tuple(shape) if shape is not None else ()


def _dtype(leaf) -> str | None:
    dtype = getattr(leaf, "dtype", None)
    try:
        return None if dtype is None else str(np.dtype(dtype))
    except TypeError:
        return None


def _structure_mismatch(manager: ocp.CheckpointManager, step: int, abstract) -> list[str]:
    """Differences between the leaves (paths, shapes, dtypes) saved at ``step`` and ``abstract``.

    A dtype difference (e.g. a float64 run resuming a float32 checkpoint) is structural too:
    restoring would cast the values and fail the checksum, and a valid checkpoint would be
    quarantined as corrupt.

    Empty when they match or when the saved metadata cannot be read (then the restore itself
    decides whether the step is corrupt).
    """
    try:
        saved = manager.item_metadata(step)["state"]
        saved = getattr(saved, "tree", saved)
        saved_leaves = jax.tree_util.tree_flatten_with_path(saved)[0]
        saved = {_leaf_name(p): _shape(x) for p, x in saved_leaves}
        saved_dtypes = {_leaf_name(p): _dtype(x) for p, x in saved_leaves}
    except Exception:  # noqa: BLE001 - unreadable metadata: leave it to the restore
        return []
    if not saved:  # no leaf metadata (damaged step): leave it to the restore
        return []
    wanted_leaves = jax.tree_util.tree_flatten_with_path(abstract)[0]
    wanted = {_leaf_name(p): _shape(x) for p, x in wanted_leaves}
    wanted_dtypes = {_leaf_name(p): _dtype(x) for p, x in wanted_leaves}
    diffs = [f"{k}: not in this run's state" for k in sorted(set(saved) - set(wanted))]
    diffs += [f"{k}: missing from the checkpoint" for k in sorted(set(wanted) - set(saved))]
    diffs += [
        f"{k}: saved shape {saved[k]}, this run expects {wanted[k]}"
        for k in sorted(set(saved) & set(wanted))
        if saved[k] != wanted[k]
    ]
    diffs += [
        f"{k}: saved dtype {saved_dtypes[k]}, this run expects {wanted_dtypes[k]}"
        for k in sorted(set(saved_dtypes) & set(wanted_dtypes))
        if saved[k] == wanted[k]
        and None not in (saved_dtypes[k], wanted_dtypes[k])
        and saved_dtypes[k] != wanted_dtypes[k]
    ]
    return diffs


def restore_checkpoint(
    manager: ocp.CheckpointManager,
    target,
    *,
    step: int | None = None,
    fallback: bool = True,
) -> RestoredCheckpoint:
    """Restore into the structure of ``target`` (an example pytree, e.g. the initial state).

    Args:
      manager: from :func:`open_manager`.
      target: pytree whose structure, shapes and dtypes the saved state must have; only its
        shapes/dtypes are used.
      step: a specific step; default the latest.
      fallback: if the requested/latest step cannot be read or fails its checksum, warn,
        move it aside to ``corrupt_step_<n>`` and try the next older step.

    A checkpoint whose leaves have other names or shapes than ``target`` (written by a run with
    another configuration: replica count, model size, ...) is not corrupt: it is left in place
    and a ``ValueError`` says which leaves differ.

    Returns:
      :class:`RestoredCheckpoint`.

    Raises:
      ValueError: there is no (readable) checkpoint in the directory, or the latest one was
        written for a differently shaped state.
    """
    manager.wait_until_finished()
    manager.reload()
    steps = sorted(manager.all_steps(), reverse=True)
    if step is not None:
        if step not in steps:
            raise ValueError(
                f"no checkpoint for step {step} in {manager.directory}; available: {steps}"
            )
        steps = [s for s in steps if s <= step]
    if not steps:
        raise ValueError(
            f"no checkpoint found in {manager.directory}; run the stage that writes it first "
            "or point to the right directory"
        )
    abstract = _abstract(target)
    errors = []
    for candidate in steps:
        diffs = _structure_mismatch(manager, candidate, abstract)
        if diffs:
            shown = "; ".join(diffs[:6]) + (
                f"; ... ({len(diffs)} in all)" if len(diffs) > 6 else ""
            )
            raise ValueError(
                f"checkpoint step {candidate} in {manager.directory} was written for a different "
                f"state than this run's ({shown}): it comes from a run with another "
                "configuration (e.g. replica count or model size). Resume with the configuration "
                "that wrote it, or start in another --workdir; the checkpoint was left in place."
            )
        try:
            restored = manager.restore(
                candidate,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), metadata=ocp.args.JsonRestore()
                ),
            )
            metadata = dict(restored.metadata)
            if _CHECKSUM_KEY not in metadata:
                raise ValueError("checksum entry missing from metadata (partial checkpoint)")
            expected = metadata.pop(_CHECKSUM_KEY)
            if expected is not None and state_checksum(restored.state) != expected:
                raise ValueError("checksum mismatch (corrupt data)")
            return RestoredCheckpoint(restored.state, metadata, int(candidate))
        except Exception as err:  # noqa: BLE001 - any read failure means "try the previous step"
            errors.append(f"step {candidate}: {type(err).__name__}: {str(err)[:300]}")
            if not fallback:
                raise
            moved = _quarantine(manager, candidate)
            message = (
                f"checkpoint step {candidate} in {manager.directory} is unreadable or corrupt "
                f"({type(err).__name__}: {str(err)[:200]}); moved to {moved}, falling back"
            )
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            logging.warning(message)
    raise ValueError(
        f"no readable checkpoint in {manager.directory}; errors: {errors}. Delete the directory "
        "to start fresh."
    )


# ---------------------------------------------------------------------------------------------
# Model checkpoints.


class ModelMetadata(NamedTuple):
    """Everything besides the parameters needed to rebuild a trained potential.

    Attributes:
      kind: model kind for :func:`stabie_jax.models.registry.build_model` (e.g. ``"schnet"``).
      hparams: keyword arguments of the model constructor (JSON-able).
      atomic_numbers: ``[N]`` atomic numbers of the system it was trained on.
      cutoff_angstrom: interaction cutoff of the model, Å (sizes neighbour lists).
      energy_scale: ``s`` in ``e_i = s·u_i + μ_Z``, eV per model unit.
      energy_shift: ``{Z: μ_Z}`` per-species shifts, eV.
      extra: free-form JSON (training report, dataset, versions, ...).
    """

    kind: str
    hparams: dict
    atomic_numbers: tuple[int, ...]
    cutoff_angstrom: float
    energy_scale: float = 1.0
    energy_shift: dict = {}
    extra: dict = {}

    def to_json(self) -> dict:
        """JSON-ready dict (the content of ``model.json`` minus the format version)."""
        return _keep_nonfinite(
            {
                "kind": self.kind,
                "hparams": self.hparams,
                "atomic_numbers": [int(z) for z in self.atomic_numbers],
                "cutoff_angstrom": float(self.cutoff_angstrom),
                "energy_scale": float(self.energy_scale),
                "energy_shift": {str(int(z)): float(v) for z, v in self.energy_shift.items()},
                "extra": self.extra,
            }
        )

    @classmethod
    def from_json(cls, blob: Mapping, source: str = "model.json") -> ModelMetadata:
        """Inverse of :meth:`to_json`; ``source`` names the file in error messages."""
        required = ("kind", "hparams", "atomic_numbers", "cutoff_angstrom")
        missing = [k for k in required if k not in blob]
        if missing:
            raise ValueError(f"{source} lacks required keys {missing}; re-save the model")
        return cls(
            kind=str(blob["kind"]),
            hparams=dict(blob["hparams"]),
            atomic_numbers=tuple(int(z) for z in blob["atomic_numbers"]),
            cutoff_angstrom=float(blob["cutoff_angstrom"]),
            energy_scale=float(blob.get("energy_scale", 1.0)),
            energy_shift={int(z): float(v) for z, v in blob.get("energy_shift", {}).items()},
            extra=dict(blob.get("extra", {})),
        )


class LoadedModel(NamedTuple):
    """A model checkpoint in memory: ``module`` (Flax), ``params``, ``metadata``."""

    module: Any
    params: Any
    metadata: ModelMetadata


def save_model_checkpoint(
    directory, params, metadata: ModelMetadata, *, overwrite: bool = False
) -> pathlib.Path:
    """Write ``model.json`` and ``params/`` under ``directory`` (synchronously).

    Args:
      directory: target directory (created).
      params: Flax ``params`` collection of ``build_model(metadata.kind, **metadata.hparams)``.
      metadata: see :class:`ModelMetadata`.
      overwrite: replace an existing model checkpoint.

    Returns:
      The absolute directory.
    """
    path = pathlib.Path(directory).expanduser().resolve()
    if (path / MODEL_JSON).exists() and not overwrite:
        raise ValueError(f"a model checkpoint already exists in {path}; pass overwrite=True")
    path.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path / MODEL_PARAMS, params, force=True)
        checkpointer.wait_until_finished()
    blob = {"format_version": MODEL_FORMAT_VERSION, **metadata.to_json()}
    blob["extra"][_CHECKSUM_KEY] = state_checksum(params)
    tmp = path / (MODEL_JSON + ".tmp")
    tmp.write_text(json.dumps(blob, indent=2, sort_keys=True))
    os.replace(tmp, path / MODEL_JSON)
    return path


def read_model_metadata(directory) -> ModelMetadata:
    """Parse ``model.json`` of a model checkpoint without loading the parameters."""
    path = pathlib.Path(directory).expanduser().resolve()
    json_path = path / MODEL_JSON
    if not json_path.is_file():
        raise ValueError(
            f"{json_path} not found: {path} is not a model checkpoint (write one with "
            "stabie_jax.checkpoint.save_model_checkpoint, e.g. by running the pretrain stage)"
        )
    try:
        blob = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{json_path} is not valid JSON ({err}): the model file is truncated or corrupt; "
            "re-save the model (rerun its stage with --config.overwrite_stages) or restore it"
        ) from err
    if not isinstance(blob, dict):
        raise ValueError(f"{json_path} holds a {type(blob).__name__}, not a model description")
    version = blob.get("format_version")
    if version != MODEL_FORMAT_VERSION:
        raise ValueError(
            f"{json_path} has format_version {version}, expected {MODEL_FORMAT_VERSION}"
        )
    return ModelMetadata.from_json(blob, source=os.fspath(json_path))


def model_params_checksum(directory) -> str | None:
    """sha256 of the parameters of the model checkpoint in ``directory`` (from its model.json;
    None for a model saved without one)."""
    return read_model_metadata(directory).extra.get(_CHECKSUM_KEY)


def load_model_checkpoint(directory) -> LoadedModel:
    """Load a model checkpoint: ``(module, params, metadata)``.

    The params are restored into the abstract tree of ``module.init`` (shapes checked) and
    verified against the checksum in ``model.json``.

    Raises:
      ValueError: missing directory/files, unknown model kind, or corrupt parameters.
    """
    metadata = read_model_metadata(directory)
    path = pathlib.Path(directory).expanduser().resolve()
    module = build_model(metadata.kind, **metadata.hparams)
    abstract = _on_this_device(abstract_params(module, metadata.atomic_numbers))
    with ocp.StandardCheckpointer() as checkpointer:
        try:
            params = checkpointer.restore(path / MODEL_PARAMS, abstract)
        except Exception as err:
            raise ValueError(f"cannot read parameters in {path / MODEL_PARAMS}: {err}") from err
    expected = metadata.extra.get(_CHECKSUM_KEY)
    if expected is not None and state_checksum(params) != expected:
        raise ValueError(f"parameters in {path / MODEL_PARAMS} fail their checksum (corrupt)")
    extra = {k: v for k, v in metadata.extra.items() if k != _CHECKSUM_KEY}
    return LoadedModel(module, params, metadata._replace(extra=extra))


def make_model_potential(
    module, metadata: ModelMetadata, displacement_fn, *, use_neighbor_list: bool = False
) -> Potential:
    """The physical (scaled and shifted) :class:`Potential` of a checkpointed model.

    Args:
      module: the Flax module (``LoadedModel.module``).
      metadata: its :class:`ModelMetadata`.
      displacement_fn: JAX-MD displacement of the space to simulate in.
      use_neighbor_list: see :func:`stabie_jax.models.potential.make_potential`.
    """
    bare = make_potential(
        module, metadata.atomic_numbers, displacement_fn, use_neighbor_list=use_neighbor_list
    )
    return scale_shift_potential(
        bare,
        metadata.atomic_numbers,
        energy_scale=metadata.energy_scale,
        energy_shift=metadata.energy_shift,
    )
