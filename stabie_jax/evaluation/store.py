"""Save and reload finished evaluation results, keyed by a fingerprint of what produced them.

An evaluation of one model (hundreds of replica-picoseconds) is the expensive part of an
experiment; a later run that asks for the same model under the same protocol, e.g. a three-way
comparison that adds a newly trained model next to two already evaluated ones, or a rerun after
a kill in the middle of the next model, reuses the stored result instead of simulating again.

A result is a nest of tuples, ``NamedTuple`` s (:class:`~stabie_jax.evaluation.StabilityResult`,
:class:`~stabie_jax.evaluation.TemperatureTransferResult`), dicts, numpy arrays, Python scalars
and ``None``. It is written as ``result.npz`` (arrays, ``allow_pickle=False``) plus
``result.json`` (structure, scalars and the fingerprint). Nothing is pickled.

Examples:
  >>> import tempfile, pathlib, numpy as np
  >>> out = pathlib.Path(tempfile.mkdtemp())
  >>> fp = fingerprint({"protocol": {"n_replicas": 4}, "params": "sha256-of-the-params"})
  >>> load_result(out / "baseline", fp) is None           # absent: compute it
  True
  >>> save_result(out / "baseline", {"stable_time_ps": np.array([1.0, 2.5])}, fp)
  >>> result, extra = load_result(out / "baseline", fp)
  >>> result["stable_time_ps"]
  array([1. , 2.5])
  >>> load_result(out / "baseline", fingerprint({"other": 1})) is None   # stale: recompute
  True
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import zipfile
from typing import Any

import numpy as np
from absl import logging

from stabie_jax.data.registry import sha256_of_file
from stabie_jax.evaluation.state import StabilityResult, TemperatureTransferResult
from stabie_jax.jsonable import to_jsonable

__all__ = ["fingerprint", "load_result", "save_result"]

_ARRAYS = "result.npz"
_LAYOUT = "result.json"
_TYPES = {
    "StabilityResult": StabilityResult,
    "TemperatureTransferResult": TemperatureTransferResult,
}


def fingerprint(spec: Any) -> str:
    """sha256 of the canonical JSON of ``spec`` (a JSON-able description of the protocol)."""
    text = json.dumps(to_jsonable(spec, nonfinite="keep"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _encode(value, key: str, arrays: dict) -> Any:
    if value is None:
        return {"none": True}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        name = type(value).__name__
        if name not in _TYPES:
            raise TypeError(f"cannot store a {name}; known: {sorted(_TYPES)}")
        fields = {f: _encode(getattr(value, f), f"{key}/{f}", arrays) for f in value._fields}
        return {"type": name, "fields": fields}
    if isinstance(value, tuple | list):
        return {"tuple": [_encode(v, f"{key}/{i}", arrays) for i, v in enumerate(value)]}
    if isinstance(value, dict):
        return {"dict": {str(k): _encode(v, f"{key}/{k}", arrays) for k, v in value.items()}}
    if isinstance(value, bool | int | float | str | np.generic) and np.ndim(value) == 0:
        return {"scalar": value.item() if isinstance(value, np.generic) else value}
    arrays[key] = np.asarray(value)
    return {"array": key}


def _decode(layout: dict, arrays) -> Any:
    if "none" in layout:
        return None
    if "type" in layout:
        cls = _TYPES[layout["type"]]
        return cls(**{f: _decode(v, arrays) for f, v in layout["fields"].items()})
    if "tuple" in layout:
        return tuple(_decode(v, arrays) for v in layout["tuple"])
    if "dict" in layout:
        return {k: _decode(v, arrays) for k, v in layout["dict"].items()}
    if "scalar" in layout:
        return layout["scalar"]
    return np.asarray(arrays[layout["array"]])


def save_result(directory, result, fingerprint_hex: str, extra: dict | None = None) -> None:
    """Write ``result`` (and JSON-able ``extra``) under ``directory`` atomically.

    The previous JSON layout is removed first and the new one written last, through a
    temporary file and ``os.replace``; it records the sha256 of the arrays file, checked on
    load. A run killed while saving therefore leaves no readable result, never an old layout
    paired with new arrays.
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays: dict = {}
    layout = _encode(result, "r", arrays)
    (directory / _LAYOUT).unlink(missing_ok=True)
    tmp_npz = directory / (_ARRAYS + ".tmp.npz")
    np.savez(tmp_npz, **arrays)
    os.replace(tmp_npz, directory / _ARRAYS)
    blob = {
        "fingerprint": fingerprint_hex,
        "arrays_sha256": sha256_of_file(directory / _ARRAYS),
        "layout": layout,
        "extra": extra or {},
    }
    tmp_json = directory / (_LAYOUT + ".tmp")
    tmp_json.write_text(json.dumps(to_jsonable(blob, nonfinite="keep"), indent=1))
    os.replace(tmp_json, directory / _LAYOUT)


def load_result(directory, fingerprint_hex: str):
    """``(result, extra)`` stored under ``directory`` for this fingerprint, else ``None``.

    A missing, stale (other fingerprint) or unreadable store returns ``None`` (the caller
    recomputes and overwrites it).
    """
    directory = pathlib.Path(directory)
    try:
        blob = json.loads((directory / _LAYOUT).read_text())
        if blob.get("fingerprint") != fingerprint_hex:
            return None
        if blob.get("arrays_sha256") != sha256_of_file(directory / _ARRAYS):
            raise ValueError(f"{_ARRAYS} does not match the checksum recorded in {_LAYOUT}")
        with np.load(directory / _ARRAYS, allow_pickle=False) as arrays:
            return _decode(blob["layout"], arrays), blob.get("extra", {})
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as err:
        # A torn or corrupt store (e.g. a disk-full write): recompute rather than crash.
        if (directory / _LAYOUT).exists():
            logging.warning("unreadable evaluation result in %s (%s): recomputing", directory, err)
        return None
