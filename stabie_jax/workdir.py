"""A run directory owned by one run, recording what produced each of its stages.

Two guarantees, each a small function:

* :func:`lock_workdir` — one run per workdir. An advisory ``fcntl`` lock on
  ``<workdir>/.stabie.lock`` (with the holder's PID, host, start time and command written in
  it) refuses a second concurrent run with :class:`WorkdirBusyError`. The kernel drops the lock
  when its process dies, however it dies, so a lock file left by a killed run never blocks.
* :func:`claim_stage` — a stage's outputs match the settings asked for. Each stage records the
  fingerprint (sha256 of the canonical JSON) of the settings that determine its result in
  ``<workdir>/stages.json``. A rerun with the same settings resumes or reuses the stage; one
  with different settings is refused with :class:`StageMismatchError`, naming the differing
  keys and the two ways forward: another workdir, or ``overwrite=True``, which moves the old
  outputs aside to ``<workdir>/replaced/<stage>-<UTC time>/`` (never deletes them).

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> claim_stage(root, "pretrain", {"lr": 1e-3}, outputs=("pretrain",))[:8]
'bb90828f'
>>> claim_stage(root, "pretrain", {"lr": 1e-3}, outputs=("pretrain",))[:8]  # same: resume
'bb90828f'
>>> claim_stage(root, "pretrain", {"lr": 2e-3}, outputs=("pretrain",))  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
stabie_jax.workdir.StageMismatchError: stage 'pretrain' in ... settings: lr: 0.001 -> 0.002. ...
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import socket
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
from absl import logging

__all__ = [
    "LOCK_FILE",
    "STAGES_FILE",
    "StageMismatchError",
    "WorkdirBusyError",
    "array_fingerprint",
    "claim_stage",
    "lock_workdir",
    "settings_diff",
    "settings_fingerprint",
]

LOCK_FILE = ".stabie.lock"
STAGES_FILE = "stages.json"
REPLACED_DIR = "replaced"


class WorkdirBusyError(RuntimeError):
    """Another live process holds the workdir's lock."""


class StageMismatchError(ValueError):
    """A stage's recorded settings differ from the ones asked for."""


# --- one run per workdir ------------------------------------------------------------------------
@contextlib.contextmanager
def lock_workdir(workdir) -> Iterator[pathlib.Path]:
    """Hold the exclusive advisory lock of ``workdir`` (created) for the ``with`` block.

    Raises:
      WorkdirBusyError: another live process holds it; the message names its PID, host, start
        time and command, and the fix.
    """
    workdir = pathlib.Path(workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / LOCK_FILE
    handle = open(path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "an unknown process"
            raise WorkdirBusyError(
                f"{workdir} is in use by another run ({holder}); wait for it to finish, or "
                "give this run another --workdir"
            ) from None
        handle.seek(0)
        handle.truncate()
        started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        command = " ".join(sys.argv)
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {started}: {command}\n")
        handle.flush()
        yield workdir
    finally:
        handle.close()  # releases the lock


# --- what produced each stage -------------------------------------------------------------------
def _canonical(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_canonical(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pathlib.Path):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot fingerprint a {type(value).__name__}: {value!r}")


def settings_fingerprint(spec: Mapping) -> str:
    """sha256 of the canonical JSON of ``spec`` (nested mappings, sequences, numbers, strings)."""
    text = json.dumps(_canonical(spec), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def array_fingerprint(*arrays) -> str:
    """sha256 over the dtype, shape and bytes of each array (e.g. a dataset's frames)."""
    digest = hashlib.sha256()
    for array in arrays:
        a = np.ascontiguousarray(np.asarray(array))
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def _flatten(spec: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(spec, Mapping):
        out: dict[str, Any] = {}
        for key, value in spec.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: spec}


def settings_diff(old: Mapping, new: Mapping) -> list[str]:
    """``"key: old -> new"`` for every dotted key whose value differs (absent keys: ``<unset>``)."""
    a, b = _flatten(_canonical(old)), _flatten(_canonical(new))
    unset = "<unset>"
    return [
        f"{key}: {a.get(key, unset)} -> {b.get(key, unset)}"
        for key in sorted(set(a) | set(b))
        if a.get(key, unset) != b.get(key, unset)
    ]


def _read_records(workdir: pathlib.Path) -> dict:
    path = workdir / STAGES_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}); it records what produced each stage of this "
            "workdir. Restore it, or use another --workdir"
        ) from err


def _write_records(workdir: pathlib.Path, records: dict) -> None:
    tmp = workdir / (STAGES_FILE + ".tmp")
    tmp.write_text(json.dumps(records, indent=2, sort_keys=True))
    os.replace(tmp, workdir / STAGES_FILE)


def _move_aside(workdir: pathlib.Path, stage: str, outputs: Iterable[str]) -> pathlib.Path | None:
    present = [name for name in outputs if (workdir / name).exists()]
    if not present:
        return None
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    dest = workdir / REPLACED_DIR / f"{stage}-{stamp}"
    suffix = 1
    while dest.exists():
        dest = workdir / REPLACED_DIR / f"{stage}-{stamp}-{suffix}"
        suffix += 1
    dest.mkdir(parents=True)
    for name in present:
        shutil.move(str(workdir / name), str(dest / name))
    return dest


def claim_stage(
    workdir,
    stage: str,
    spec: Mapping,
    *,
    outputs: Iterable[str],
    overwrite: bool = False,
) -> str:
    """Check (or record) that ``stage``'s outputs in ``workdir`` come from ``spec``.

    Call before running or resuming the stage.

    Args:
      workdir: the run directory.
      stage: stage name (``"pretrain"``, ``"stabie"``, ...).
      spec: JSON-able settings that determine the stage's result (config subtree, data
        fingerprint, the upstream stage's model checksum); not the ones that only change how it
        runs (progress bars, checkpoint intervals, wall-clock budgets).
      outputs: names under ``workdir`` the stage writes (moved aside on ``overwrite``).
      overwrite: on a mismatch, move the old outputs to ``workdir/replaced/<stage>-<time>/`` and
        record ``spec`` instead of refusing.

    Returns:
      The fingerprint of ``spec``.

    Raises:
      StageMismatchError: the recorded settings differ and ``overwrite`` is False.
    """
    workdir = pathlib.Path(workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    outputs = tuple(outputs)
    spec = _canonical(spec)
    fp = settings_fingerprint(spec)
    records = _read_records(workdir)
    old = records.get(stage)
    if old is not None and old.get("fingerprint") != fp:
        changes = settings_diff(old.get("spec", {}), spec)
        if not overwrite:
            shown = "; ".join(changes[:12]) + (
                f"; and {len(changes) - 12} more" if len(changes) > 12 else ""
            )
            raise StageMismatchError(
                f"stage {stage!r} in {workdir} was produced by other settings: {shown}. "
                f"Either run with another --workdir, or pass --config.overwrite_stages={stage} "
                f"to move its outputs to {workdir / REPLACED_DIR}/ and run it again (later "
                "stages that used it must then be overwritten too)"
            )
        moved = _move_aside(workdir, stage, outputs)
        logging.warning(
            "stage %s: settings changed (%s); old outputs moved to %s",
            stage,
            "; ".join(changes),
            moved,
        )
    elif old is None and any((workdir / name).exists() for name in outputs):
        if overwrite:
            moved = _move_aside(workdir, stage, outputs)
            logging.warning("stage %s: unrecorded outputs moved to %s", stage, moved)
        else:
            logging.warning(
                "stage %s in %s has outputs but no record of their settings (a workdir from "
                "an older version): recording the current settings for it",
                stage,
                workdir,
            )
    records[stage] = {"fingerprint": fp, "spec": spec}
    _write_records(workdir, records)
    return fp
