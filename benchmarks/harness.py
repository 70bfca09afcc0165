"""What every benchmark shares: the report header, the aspirin geometry, the paper's SchNet and
the timing of a jitted call.

A benchmark is run from the repository root as ``python benchmarks/NAME.py ...``, so this module
is imported as ``harness`` (its folder is the script's ``sys.path[0]``). The header
(:func:`environment_lines`) makes every report say when, where and with what it was measured:
the UTC date, the exact command, the CPU model and count, the load average at the end (this
machine is shared), the JAX backend and devices, and the versions of the packages that are
installed.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

from stabie_jax.evaluation.report import cpu_model, software_versions

__all__ = [
    "PACKAGES",
    "PAPER_SCHNET",
    "aspirin_geometry",
    "command_line",
    "environment_lines",
    "paper_schnet",
    "time_call",
    "versions",
]

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"

PACKAGES = (
    "jax",
    "jaxlib",
    "jax-md",
    "flax",
    "optax",
    "numpy",
    "torch",
    "torch_geometric",
    "stabie-jax",
)
"""Packages whose versions a report lists (those not installed are left out)."""

PAPER_SCHNET = dict(hidden=64, num_filters=64, num_interactions=6, num_gaussians=25, cutoff=5.0)
"""The StABlE paper's aspirin SchNet: 64 features and filters, 6 interactions, 25 Gaussians,
5-Å cutoff."""


def versions(packages: Sequence[str] = PACKAGES) -> str:
    """``"python 3.11.9, jax 0.4.35, ..."``: the installed ones of ``packages``
    (:func:`stabie_jax.evaluation.report.software_versions`)."""
    found = software_versions(packages)
    return ", ".join(f"{name} {v}" for name, v in found.items() if v is not None)


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that ran this process, quoted so it can be pasted into a shell."""
    argv = list(sys.argv if argv is None else argv)
    return "python " + " ".join(shlex.quote(a) for a in argv)


def environment_lines(
    command: str | Sequence[str] | None = None, packages: Sequence[str] = PACKAGES, extra: str = ""
) -> list[str]:
    """Markdown bullets for a report header: date, command, machine, devices, versions.

    Args:
      command: the command to record: a string as it stands, or the script and its arguments
        (like ``sys.argv``), quoted by :func:`command_line`; default this process's.
      packages: the packages whose versions are listed.
      extra: appended to the machine line (e.g. ``"torch threads 2"``).
    """
    import jax

    if not isinstance(command, str):
        command = command_line(command)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    devices = jax.devices()
    kinds = sorted({getattr(d, "device_kind", d.platform) for d in devices})
    machine = (
        f"{cpu_model()}, {os.cpu_count()} logical CPUs, {platform.system()} "
        f"{platform.release()}; load average at the end {load[0]:.1f}/{load[1]:.1f}/"
        f"{load[2]:.1f} (timings on a shared machine are indicative)"
    )
    return [
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- command: `{command}`",
        f"- machine: {machine}" + (f"; {extra}" if extra else ""),
        f"- JAX backend: {jax.default_backend()}, {len(devices)} device(s): {', '.join(kinds)}",
        f"- versions: {versions(packages)}",
    ]


def print_and_write(text: str, output: str | None) -> None:
    """Print a report and, when ``output`` is given, write it there too."""
    print(text)
    if output:
        pathlib.Path(output).write_text(text)


def aspirin_geometry() -> tuple[np.ndarray, np.ndarray, str]:
    """One aspirin structure: ``(positions [21, 3] float32 Å, atomic numbers [21], source)``.

    The first frame of the staged rMD17 training file when it is present, else a synthetic
    stand-in with aspirin's composition on a jittered 1.45-Å grid (timings only: same atom
    count and species, no chemistry).
    """
    path = SHARED / "rmd17_aspirin" / "rmd17_aspirin_train_01.npz"
    if path.exists():
        d = np.load(path)
        positions = d["coords"][0].astype(np.float32)
        return positions, d["nuclear_charges"].astype(int), "rMD17 frame"
    z = np.array([6] * 9 + [8] * 4 + [1] * 8)
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)[:21]
    rng = np.random.default_rng(0)
    positions = (1.45 * grid + 0.05 * rng.normal(size=(21, 3))).astype(np.float32)
    return positions, z, "synthetic"


def paper_schnet(**overrides):
    """The paper's SchNet (:data:`PAPER_SCHNET`) as a Flax module; ``overrides`` change any
    hyperparameter (e.g. ``undirected_edges=True``)."""
    from stabie_jax.models.registry import build_model

    return build_model("schnet", **{**PAPER_SCHNET, **overrides})


def time_call(fn: Callable, *args, repeats: int = 5) -> dict:
    """Wall-clock seconds of ``fn(*args)``, waiting for its results (``jax.block_until_ready``).

    The first call (compilation included) is timed on its own as ``first_s``; then ``repeats``
    calls give ``median_s`` and ``best_s``.
    """
    import jax

    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(max(1, int(repeats))):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return {"first_s": first, "median_s": statistics.median(times), "best_s": min(times)}
