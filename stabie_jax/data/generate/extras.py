"""Optional dependencies of the generators (the ``reference`` extra) and run metadata helpers.

The generators need packages that the core library does not: ``tblite`` (GFN2-xTB),
``openmm`` (classical water) and, for SMILES input, ``rdkit``. They are imported lazily so that
``import stabie_jax.data.generate`` always works; a missing one raises :class:`MissingExtraError`
with the exact install command.
"""

from __future__ import annotations

import datetime
import importlib
import importlib.metadata
import platform
import shlex
import sys
from typing import Any

__all__ = [
    "MissingExtraError",
    "command_line",
    "package_versions",
    "require",
    "utc_now",
]

# Distribution names on PyPI for the importable modules the generators use.
_DISTRIBUTIONS = {"tblite": "tblite", "openmm": "openmm", "rdkit": "rdkit"}


class MissingExtraError(ImportError):
    """An optional dependency of a generator is not installed."""


def require(module: str, purpose: str) -> Any:
    """Import an optional module or raise :class:`MissingExtraError` saying how to install it.

    Args:
      module: importable name, e.g. ``"tblite.ase"`` or ``"openmm"``.
      purpose: what it is needed for, used in the message.

    Returns:
      The imported module.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        dist = _DISTRIBUTIONS.get(top, top)
        raise MissingExtraError(
            f"{purpose} needs the Python package '{dist}' (import '{module}' failed: {err}). "
            f"It is part of the optional 'reference' extra: pip install 'stabie-jax[reference]' "
            f"(or pip install {dist})."
        ) from err


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions plus python/numpy/ase/stabie-jax."""
    versions = {"python": platform.python_version()}
    for name in ("numpy", "ase", "stabie-jax", *names):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def command_line(argv: list[str] | None) -> str:
    """The generator command as a user would type it."""
    args = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", "-m", "stabie_jax.data.generate", *args])


def utc_now() -> str:
    """Current UTC time, ISO 8601, seconds."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
