"""Training checkpoints: an orbax ``CheckpointManager`` directory with one sub-directory per
step, each holding the ``state`` pytree and a JSON ``metadata`` blob with a SHA-256 of the
arrays; a step that fails to read or to match its checksum is moved aside and the previous one
is tried; a restore into a different tree structure is refused with the differing leaves."""

from __future__ import annotations

import hashlib
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

__all__ = [
    "RestoredCheckpoint",
    "latest_step",
    "open_manager",
    "restore_checkpoint",
    "save_checkpoint",
    "state_checksum",
]


_CHECKSUM_KEY = "_state_sha256"


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
