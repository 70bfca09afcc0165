"""Trajectories of chosen evaluation replicas as extended XYZ: see how a replica failed.

:func:`stabie_jax.evaluation.evaluate_stability` with ``keep_last_chunks=True`` keeps each
replica's frames of its last two stability-check chunks (for a failed replica: the chunk before
the failure and the chunk it failed in). :func:`write_replica_trajectories` writes those of two
replicas per evaluation: the first to fail and the median one (by stable time), one frame per
``sample_every`` steps, each frame's simulation time in ps in its comment line (``time_ps``).

Open them with ASE's GUI (``ase gui FILE.extxyz``), OVITO or VMD (extended XYZ); periodic
systems carry their cell and ``pbc``.

Examples:
  >>> result = evaluate_stability(..., keep_last_chunks=True)           # doctest: +SKIP
  >>> write_replica_trajectories(result, atomic_numbers, "traj", tag="500K")  # doctest: +SKIP
  {'first_failure': PosixPath('traj/500K_first_failure_replica3.extxyz'), ...}
"""

from __future__ import annotations

import pathlib

import numpy as np

__all__ = [
    "chosen_replicas",
    "export_kept_frames",
    "trajectory_links",
    "write_replica_trajectories",
]


def chosen_replicas(stable_time_ps, censored) -> dict[str, int]:
    """The replicas worth looking at: ``first_failure`` (shortest stable time among the failed
    ones, lowest index on ties; absent when none failed) and ``median`` (the replica at the
    median of the stable times, lower middle for an even count)."""
    times = np.asarray(stable_time_ps, np.float64)
    failed = ~np.asarray(censored, bool)
    chosen = {}
    if failed.any():
        chosen["first_failure"] = int(np.flatnonzero(failed)[np.argmin(times[failed])])
    order = np.argsort(times, kind="stable")
    chosen["median"] = int(order[(len(times) - 1) // 2])
    return chosen


def write_replica_trajectories(
    result, atomic_numbers, directory, *, tag: str = "", cell=None
) -> dict[str, pathlib.Path]:
    """Write the kept frames of :func:`chosen_replicas` as ``.extxyz`` files.

    Args:
      result: a :class:`~stabie_jax.evaluation.StabilityResult` with ``last_frames``.
      atomic_numbers: ``[N]``.
      directory: output folder (created).
      tag: file-name prefix, e.g. the temperature ``"500K"``.
      cell: ``[3, 3]`` Å, lattice vectors as rows (ASE), for periodic systems; None for free
        molecules.

    Returns:
      ``{"first_failure" | "median": path}`` of the files written.

    Raises:
      ValueError: the result kept no frames (``keep_last_chunks=False``).
    """
    import ase
    import ase.io

    if result.last_frames is None:
        raise ValueError("the evaluation kept no frames: run it with keep_last_chunks=True")
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    numbers = np.asarray(atomic_numbers, int)
    periodic = cell is not None
    written = {}
    for label, replica in chosen_replicas(result.stable_time_ps, result.censored).items():
        frames, times = result.last_frames[replica], result.last_frames_time_ps[replica]
        images = []
        for positions, time_ps in zip(frames, times, strict=True):
            if not np.isfinite(time_ps) or not np.all(np.isfinite(positions)):
                continue  # before the run's first chunks, or non-finite after a blow-up
            atoms = ase.Atoms(numbers=numbers, positions=np.asarray(positions, np.float64))
            if periodic:
                atoms.set_cell(np.asarray(cell, np.float64))
                atoms.set_pbc(True)
            atoms.info.update(
                time_ps=float(time_ps),
                replica=replica,
                stable_time_ps=float(result.stable_time_ps[replica]),
                failed=bool(~result.censored[replica]),
            )
            images.append(atoms)
        if not images:
            continue
        name = f"{tag + '_' if tag else ''}{label}_replica{replica}.extxyz"
        path = directory / name
        ase.io.write(path, images, format="extxyz")
        written[label] = path
    return written


def export_kept_frames(result, atomic_numbers, directory, *, tag: str = "", cell=None):
    """Write the chosen replicas' kept frames and drop the frames from the result.

    Returns:
      ``(result, {"<tag> first failure" | "<tag> median": path})``: the result with
      ``last_frames=None`` (for a small result store) and the files written; a result without
      kept frames comes back unchanged with ``{}``.
    """
    if result.last_frames is None:
        return result, {}
    written = write_replica_trajectories(result, atomic_numbers, directory, tag=tag, cell=cell)
    labels = {f"{tag + ' ' if tag else ''}{k.replace('_', ' ')}": v for k, v in written.items()}
    return result._replace(last_frames=None, last_frames_time_ps=None), labels


def trajectory_links(entries: dict) -> dict:
    """``{"MODEL 500K first failure": path}`` from per-model entries holding a
    ``"trajectories"`` dict (as the experiments store them), for the report."""
    return {
        f"{name} {caption}": path
        for name, entry in entries.items()
        if isinstance(entry, dict)
        for caption, path in (entry.get("trajectories") or {}).items()
    }
