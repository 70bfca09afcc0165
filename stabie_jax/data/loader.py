"""``load_dataset``: one entry point for files, globs, registry names and built-in data.

``source`` may be

* a path (``str`` or ``os.PathLike``) to any file :func:`stabie_jax.data.readers.read_file`
  reads;
* a glob pattern (``"data/rmd17_aspirin_train_*.npz"``), expanded in sorted order;
* a list/tuple of any of these, concatenated frame-wise into one :class:`Dataset`;
* a registry name (:func:`stabie_jax.data.registry.list_datasets`), fetched from the cache
  (``download=True`` to fetch from the network);
* ``"builtin:<name>"``: ``stabie_jax/data/builtin/<name>.npz`` shipped with the package.

Reader options (``labels``, ``energy_unit``, ``require_labels``, ...) are passed to every file;
for a registry name they override the entry's own options. Nothing is cached in memory: every
call returns a new, fully validated dataset or raises ``ValueError``.
"""

from __future__ import annotations

import glob
import os
import pathlib
from collections.abc import Sequence

from stabie_jax.data import registry
from stabie_jax.data.dataset import Dataset, concatenate, thaw_metadata
from stabie_jax.data.readers import read_file

__all__ = ["BUILTIN_DIR", "BUILTIN_PREFIX", "list_builtin", "load_dataset"]

BUILTIN_PREFIX = "builtin:"
BUILTIN_DIR = pathlib.Path(__file__).resolve().parent / "builtin"
"""Directory of the data files shipped in the package."""


def list_builtin() -> list[str]:
    """Names ``<name>`` of the available ``builtin:<name>`` datasets."""
    if not BUILTIN_DIR.is_dir():
        return []
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.npz"))


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _load_one(source, cache_dir, download, options) -> list[Dataset]:
    if isinstance(source, os.PathLike):
        return [read_file(source, **options)]
    if not isinstance(source, str):
        raise ValueError(
            f"dataset source {source!r} has type {type(source).__name__}; expected a path, a "
            "glob, a registry name, 'builtin:<name>' or a list of these."
        )
    if source.startswith(BUILTIN_PREFIX):
        name = source[len(BUILTIN_PREFIX) :]
        path = BUILTIN_DIR / f"{name}.npz"
        if not path.is_file():
            raise ValueError(
                f"built-in dataset {name!r} not found at {path}; available: {list_builtin()}."
            )
        return [read_file(path, **options)]
    if source in registry.REGISTRY and not pathlib.Path(source).exists():
        entry = registry.get_entry(source)
        paths = registry.fetch(source, cache_dir=cache_dir, download=download)
        merged = dict(entry.reader_options, **options)
        parts = [read_file(path, **merged) for path in paths]
        return [_tag_registry(concatenate(parts), entry)]
    if _is_glob(source) and not pathlib.Path(source).exists():
        matches = sorted(glob.glob(os.path.expanduser(source)))
        if not matches:
            raise ValueError(f"glob {source!r} matches no files.")
        return [read_file(path, **options) for path in matches]
    path = pathlib.Path(source).expanduser()
    if not path.exists():
        raise ValueError(
            f"{source}: no such file, and not a registry name ({registry.list_datasets()}) or "
            f"'builtin:<name>' ({list_builtin()})."
        )
    return [read_file(path, **options)]


def _tag_registry(dataset: Dataset, entry: registry.DatasetEntry) -> Dataset:
    metadata = thaw_metadata(dataset.metadata)
    metadata["name"] = entry.name
    metadata["registry_entry"] = entry.name
    if metadata.get("temperature_kelvin") is None:
        metadata["temperature_kelvin"] = entry.temperature_kelvin
    return dataset.replace(metadata=metadata)


def load_dataset(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    cache_dir: str | os.PathLike | None = None,
    download: bool = False,
    **reader_options,
) -> Dataset:
    """Loads a dataset from a path, glob, list, registry name or ``builtin:<name>``.

    Args:
      source: see the module docstring.
      cache_dir: registry cache root (default ``$STABIE_JAX_DATA_DIR`` or ~/.cache/stabie_jax).
      download: allow registry datasets to be downloaded when missing from the cache.
      **reader_options: passed to :func:`stabie_jax.data.readers.read_file`, e.g.
        ``labels="md17"`` for rMD17's original MD17 labels, ``energy_unit="eV"`` for an
        extxyz file, ``require_labels=False`` for a velocity-only trajectory.

    Returns:
      One :class:`Dataset` (several files are concatenated in the given/sorted order).

    Raises:
      ValueError: for unreadable or inconsistent files, unknown names, or registry files missing
        from the cache (the message names the URL and where to put the file).

    Examples:
      >>> ds = load_dataset("builtin:water_spcfw_64_300K")  # doctest: +SKIP
      >>> ds = load_dataset("rmd17_aspirin_train", labels="md17")  # doctest: +SKIP
    """
    sources = [source] if isinstance(source, str | os.PathLike) else list(source)
    if not sources:
        raise ValueError("load_dataset: empty list of sources.")
    parts = [
        part for item in sources for part in _load_one(item, cache_dir, download, reader_options)
    ]
    return concatenate(parts)
