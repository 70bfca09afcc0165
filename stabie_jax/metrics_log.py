"""JSON-lines metrics logs that survive a kill and a resume.

A long run appends one JSON object per line (epoch, losses, learning rate, ...). When the run
resumes from a checkpoint older than the last line, the lines written after that checkpoint are
dropped so the log describes exactly one history.

Examples:
  >>> import pathlib, tempfile
  >>> path = pathlib.Path(tempfile.mkdtemp()) / "metrics.jsonl"
  >>> for epoch in range(4):
  ...     append_record(path, {"epoch": epoch, "loss": 1.0 / (epoch + 1)})
  >>> truncate_after(path, "epoch", 1)
  >>> [r["epoch"] for r in read_records(path)]
  [0, 1]
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Mapping

import numpy as np

__all__ = [
    "append_record",
    "read_records",
    "truncate_after",
]


def _plain(value):
    """JSON-compatible copy: numpy scalars/arrays to Python, non-finite floats to None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray | np.generic) or hasattr(value, "__array__"):
        value = np.asarray(value)
        return _plain(value.tolist()) if value.ndim else _plain(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def append_record(path, record: Mapping) -> None:
    """Append ``record`` as one JSON line (flushed and closed, so a kill loses at most it)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(_plain(record)) + "\n")


def read_records(path) -> list[dict]:
    """All complete records; a torn last line (killed mid-write) is ignored."""
    path = pathlib.Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_after(path, key: str, last_value) -> None:
    """Keep only records with ``record[key] <= last_value`` (and drop torn lines)."""
    path = pathlib.Path(path)
    if not path.exists():
        return
    kept = [r for r in read_records(path) if key in r and r[key] <= last_value]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
