"""One conversion of computed values to JSON, used by every file the package writes.

:func:`to_jsonable`: numpy/JAX scalars and arrays become Python numbers and lists,
NamedTuples/dataclasses/``ConfigDict`` become dicts, tuples and sets lists, paths strings.
Non-finite floats become ``null`` (strict JSON, e.g. ``report.json``) or, with
``nonfinite="keep"``, stay ``NaN``/``Infinity`` (what Python's ``json`` reads back as floats;
checkpoint metadata and fingerprints, where a NaN must stay a NaN).

Examples:
  >>> import numpy as np
  >>> to_jsonable({"x": np.float32(0.5), "y": np.array([1, 2]), "z": float("nan")})
  {'x': 0.5, 'y': [1, 2], 'z': None}
  >>> to_jsonable((np.nan,), nonfinite="keep")
  [nan]
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["to_jsonable"]

NONFINITE = ("null", "keep")


def to_jsonable(value: Any, *, nonfinite: str = "null") -> Any:
    """JSON-compatible copy of ``value`` (see the module docstring); raises on unknown types.

    Args:
      value: numbers, strings, numpy/JAX arrays, mappings, sequences, NamedTuples,
        dataclasses, ``ml_collections.ConfigDict``, paths, None.
      nonfinite: ``"null"`` (NaN and ±inf become None) or ``"keep"``.

    Returns:
      Nested dicts/lists of ``str``, ``int``, ``float``, ``bool``, ``None``.

    Raises:
      TypeError: naming the type that has no JSON form.
    """
    if nonfinite not in NONFINITE:
        raise ValueError(f"nonfinite must be one of {NONFINITE}, got {nonfinite!r}")

    def convert(item):
        return to_jsonable(item, nonfinite=nonfinite)

    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) or nonfinite == "keep" else None
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if hasattr(value, "to_dict") and callable(value.to_dict):  # ml_collections.ConfigDict
        return convert(value.to_dict())
    if isinstance(value, tuple) and hasattr(value, "_asdict"):  # NamedTuple
        return convert(value._asdict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return convert({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if isinstance(value, Mapping):
        return {str(k): convert(v) for k, v in value.items()}
    if isinstance(value, np.generic | np.ndarray) or hasattr(value, "__array__"):
        arr = np.asarray(value)
        if arr.dtype.kind in "biuf":
            return convert(arr.tolist()) if arr.ndim else convert(arr.item())
        if arr.dtype.kind in "US":
            return arr.tolist()
        raise TypeError(f"to_jsonable: unsupported array dtype {arr.dtype}")
    if isinstance(value, list | tuple | set | frozenset):
        return [convert(v) for v in value]
    raise TypeError(f"to_jsonable: cannot convert {type(value).__name__} to JSON")
