"""Resumable, crash-safe trajectory output for the reference-data generators.

A generation run can take an hour. It must survive being killed and must never leave a file at
the final path that looks complete when it is not. The scheme:

* everything in progress lives in a *work directory* ``<output>.partial/`` next to the output;
* the run advances in chunks; after each chunk the frames (``chunk_00012.npz``) and the engine's
  full dynamical state (``checkpoint_<steps>.npz``: positions, momenta, thermostat and RNG state)
  are written to temporary names and renamed into place, and only then is ``manifest.json``
  replaced (atomically). The manifest is the single commit point: a kill at any moment leaves
  either the previous or the new manifest, both consistent with the files they name;
* on restart with the same settings the driver loads the manifest, restores the engine from the
  named checkpoint and continues; with different settings it refuses (ValueError naming the
  work directory);
* when all frames exist, the chunks are concatenated into one ``np.savez_compressed`` file
  written under a temporary name and renamed to the final path (``os.replace`` is atomic on one
  file system); then the work directory is removed.

The dynamics are hidden behind a tiny :class:`Engine` protocol so the same driver serves ASE
(xTB molecules) and OpenMM (water), and tests can use a cheap classical calculator.

Examples:
  >>> run_resumable(engine, "out.npz", config=cfg, static=static, metadata=meta,
  ...               equilibration_steps=1000, n_frames=500, save_interval=10)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

__all__ = [
    "Engine",
    "FRAME_KEYS",
    "MANIFEST",
    "StopRequested",
    "WORKDIR_FORMAT",
    "run_resumable",
    "sha256_of",
    "stabie_npz_units",
    "work_dir_for",
]

MANIFEST = "manifest.json"
WORKDIR_FORMAT = "stabie-generate-workdir/1"
FRAME_KEYS = ("positions", "velocities", "energies", "forces")


def stabie_npz_units(periodic: bool = False) -> dict[str, str]:
    """The ``metadata["units"]`` entry of a generated stabie npz (ASE units; cell if periodic)."""
    units = {
        "energy": "eV",
        "length": "angstrom",
        "positions": "angstrom",
        "energies": "eV",
        "forces": "eV/angstrom",
        "velocities": "angstrom/fs",
        "masses": "amu",
    }
    if periodic:
        units["cell"] = "angstrom"
    units["time_fs"] = "fs"
    return units


class Engine(Protocol):
    """What the driver needs from an MD engine.

    ``sample(n)`` advances ``n`` steps and returns one frame with keys ``positions`` [N,3] Å,
    ``velocities`` [N,3] Å/fs (on-step), ``energies`` () eV and ``forces`` [N,3] eV/Å. The frame
    may be taken at any fixed point inside those ``n`` steps, as long as successive frames are
    ``n`` steps apart. ``get_state``/``set_state`` round-trip the full dynamical state as a dict
    of numpy arrays so that a resumed run continues the same trajectory.
    """

    def advance(self, n_steps: int) -> None: ...

    def sample(self, n_steps: int) -> dict[str, np.ndarray]: ...

    def get_state(self) -> dict[str, np.ndarray]: ...

    def set_state(self, state: Mapping[str, np.ndarray]) -> None: ...


class StopRequested(RuntimeError):
    """Raised by :func:`run_resumable` after ``stop_after_chunks`` chunks (to test resuming)."""


def work_dir_for(out_path: str | os.PathLike) -> pathlib.Path:
    """The work directory of an output file: ``<out_path>.partial``."""
    out_path = pathlib.Path(out_path)
    return out_path.with_name(out_path.name + ".partial")


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write_bytes(path: pathlib.Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_savez(path: pathlib.Path, arrays: Mapping[str, np.ndarray], compressed: bool) -> None:
    # np.savez appends ".npz" to names without it, so the temporary name keeps the suffix.
    tmp = path.with_name(path.stem + ".tmp.npz")
    (np.savez_compressed if compressed else np.savez)(tmp, **arrays)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _canonical(config: Mapping[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=str)


class _Manifest:
    """The on-disk progress record of one run (see the module docstring)."""

    def __init__(self, work_dir: pathlib.Path, config: Mapping[str, Any]):
        self.work_dir = work_dir
        self.config = json.loads(_canonical(config))
        self.steps_done = 0
        self.frames_done = 0
        self.chunks: list[str] = []
        self.checkpoint: str | None = None

    @classmethod
    def open(cls, work_dir: pathlib.Path, config: Mapping[str, Any]) -> _Manifest:
        manifest = cls(work_dir, config)
        path = work_dir / MANIFEST
        if not path.exists():
            work_dir.mkdir(parents=True, exist_ok=True)
            return manifest
        stored = json.loads(path.read_text())
        if stored.get("format") != WORKDIR_FORMAT:
            raise ValueError(f"{path} is not a stabie_jax generator work directory; remove it.")
        if _canonical(stored["config"]) != _canonical(manifest.config):
            changed = sorted(
                k
                for k in set(stored["config"]) | set(manifest.config)
                if stored["config"].get(k) != manifest.config.get(k)
            )
            raise ValueError(
                f"Cannot resume: the unfinished run in {work_dir} was started with different "
                f"settings (differing: {', '.join(changed)}). Rerun with the same arguments to "
                f"resume it, or delete {work_dir} to start afresh."
            )
        manifest.steps_done = int(stored["steps_done"])
        manifest.frames_done = int(stored["frames_done"])
        manifest.chunks = list(stored["chunks"])
        manifest.checkpoint = stored["checkpoint"]
        return manifest

    def commit(
        self,
        steps_done: int,
        checkpoint: Mapping[str, np.ndarray],
        frames: Mapping[str, np.ndarray] | None,
    ) -> None:
        """Write a new chunk (if any) and checkpoint, then atomically advance the manifest."""
        chunks = list(self.chunks)
        frames_done = self.frames_done
        if frames is not None:
            name = f"chunk_{len(chunks):05d}.npz"
            _atomic_savez(self.work_dir / name, frames, compressed=False)
            chunks.append(name)
            frames_done += len(frames["energies"])
        ckpt_name = f"checkpoint_{steps_done:012d}.npz"
        _atomic_savez(self.work_dir / ckpt_name, checkpoint, compressed=False)
        record = {
            "format": WORKDIR_FORMAT,
            "config": self.config,
            "steps_done": steps_done,
            "frames_done": frames_done,
            "chunks": chunks,
            "checkpoint": ckpt_name,
        }
        _atomic_write_bytes(self.work_dir / MANIFEST, json.dumps(record, indent=1).encode())
        old = self.checkpoint
        self.steps_done, self.frames_done, self.chunks, self.checkpoint = (
            steps_done,
            frames_done,
            chunks,
            ckpt_name,
        )
        if old is not None and old != ckpt_name:
            (self.work_dir / old).unlink(missing_ok=True)

    def load_checkpoint(self) -> dict[str, np.ndarray]:
        with np.load(self.work_dir / self.checkpoint, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}

    def load_frames(self) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {k: [] for k in FRAME_KEYS}
        for name in self.chunks:
            with np.load(self.work_dir / name, allow_pickle=False) as data:
                for k in FRAME_KEYS:
                    parts[k].append(data[k])
        return {k: np.concatenate(v, axis=0) for k, v in parts.items()}


def _stack(frames: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([np.asarray(f[k]) for f in frames]) for k in FRAME_KEYS}


def run_resumable(
    engine: Engine,
    out_path: str | os.PathLike,
    *,
    config: Mapping[str, Any],
    static: Mapping[str, np.ndarray],
    metadata: Mapping[str, Any],
    equilibration_steps: int,
    n_frames: int,
    save_interval: int,
    timestep_fs: float,
    chunk_frames: int = 100,
    float_dtype: str = "float32",
    progress: bool = True,
    stop_after_chunks: int | None = None,
) -> pathlib.Path:
    """Run equilibration then production in checkpointed chunks; write the final stabie npz.

    Args:
      engine: an initialised :class:`Engine` (its state is overwritten when resuming).
      out_path: final ``.npz`` path. Must not exist yet.
      config: every setting that determines the trajectory (JSON-serialisable). A resumed run
        must match it exactly.
      static: per-system arrays stored once: ``atomic_numbers`` [N], ``masses`` [N] amu and,
        for periodic systems, ``cell`` [3,3] Å and ``pbc`` [3].
      metadata: JSON-serialisable description stored as the file's ``metadata`` string.
      equilibration_steps: MD steps before the first saved frame (not saved).
      n_frames: number of production frames.
      save_interval: MD steps between saved frames.
      timestep_fs: MD timestep, fs (for the ``time_fs`` key).
      chunk_frames: frames per checkpointed chunk (equilibration is chunked in
        ``chunk_frames * save_interval`` steps).
      float_dtype: ``"float32"`` or ``"float64"`` for positions, velocities and forces
        (energies are always float64).
      progress: show a tqdm progress bar over MD steps.
      stop_after_chunks: raise :class:`StopRequested` after this many chunks in this call
        (simulates a kill; for tests).

    Returns:
      The final path.

    Raises:
      FileExistsError: if ``out_path`` exists.
      ValueError: if an unfinished run with other settings occupies the work directory, or if
        arguments are out of range.
    """
    out_path = pathlib.Path(out_path)
    _check_arguments(out_path, float_dtype, n_frames, save_interval, equilibration_steps)
    work_dir = work_dir_for(out_path)
    manifest = _Manifest.open(work_dir, config)
    if manifest.checkpoint is not None:
        engine.set_state(manifest.load_checkpoint())

    total = equilibration_steps + n_frames * save_interval
    chunk_steps = chunk_frames * save_interval
    bar = _progress_bar(progress, total, manifest.steps_done, out_path.name)
    tick = bar.update if bar is not None else _no_tick
    after_chunk = _ChunkLimit(stop_after_chunks)
    try:
        _equilibrate(
            engine, manifest, equilibration_steps, chunk_steps, save_interval, tick, after_chunk
        )
        _produce(engine, manifest, n_frames, chunk_frames, save_interval, tick, after_chunk)
    finally:
        if bar is not None:
            bar.close()

    arrays = _final_arrays(manifest, n_frames, save_interval, timestep_fs, float_dtype)
    arrays.update({k: np.asarray(v) for k, v in static.items()})
    arrays["metadata"] = np.asarray(json.dumps(dict(metadata), indent=1, default=str))
    _atomic_savez(out_path, arrays, compressed=True)
    shutil.rmtree(work_dir)
    return out_path


def _check_arguments(
    out_path: pathlib.Path,
    float_dtype: str,
    n_frames: int,
    save_interval: int,
    equilibration_steps: int,
) -> None:
    """The argument checks of :func:`run_resumable` (see its Raises section)."""
    if out_path.suffix != ".npz":
        raise ValueError(f"output {out_path} must end in .npz")
    if out_path.exists():
        raise FileExistsError(f"{out_path} already exists; remove it or choose another --output.")
    if float_dtype not in ("float32", "float64"):
        raise ValueError(f"float_dtype must be 'float32' or 'float64', got {float_dtype!r}")
    for name, value in (("n_frames", n_frames), ("save_interval", save_interval)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if equilibration_steps < 0:
        raise ValueError(f"equilibration_steps must be >= 0, got {equilibration_steps}")


def _progress_bar(progress: bool, total: int, initial: int, desc: str):
    """A tqdm bar over MD steps, or None without ``progress``."""
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", desc=desc)


def _no_tick(n_steps: int) -> None:
    """Progress callback when there is no bar."""


class _ChunkLimit:
    """Called after every chunk; raises :class:`StopRequested` after ``limit`` of them."""

    def __init__(self, limit: int | None):
        self.limit = limit
        self.chunks_this_call = 0

    def __call__(self) -> None:
        self.chunks_this_call += 1
        if self.limit is not None and self.chunks_this_call >= self.limit:
            raise StopRequested(f"stopped after {self.chunks_this_call} chunks (resumable)")


def _equilibrate(
    engine: Engine,
    manifest: _Manifest,
    equilibration_steps: int,
    chunk_steps: int,
    save_interval: int,
    tick: Callable[[int], Any],
    after_chunk: Callable[[], None],
) -> None:
    """Unsaved steps up to ``equilibration_steps``, checkpointed every ``chunk_steps``."""
    while manifest.steps_done < equilibration_steps:
        n = min(chunk_steps, equilibration_steps - manifest.steps_done)
        for done in range(0, n, save_interval):
            engine.advance(min(save_interval, n - done))
            tick(min(save_interval, n - done))
        manifest.commit(manifest.steps_done + n, engine.get_state(), None)
        after_chunk()


def _produce(
    engine: Engine,
    manifest: _Manifest,
    n_frames: int,
    chunk_frames: int,
    save_interval: int,
    tick: Callable[[int], Any],
    after_chunk: Callable[[], None],
) -> None:
    """Saved frames up to ``n_frames``, ``save_interval`` steps apart, in chunks."""
    while manifest.frames_done < n_frames:
        k = min(chunk_frames, n_frames - manifest.frames_done)
        frames = []
        for _ in range(k):
            frames.append(engine.sample(save_interval))
            tick(save_interval)
        manifest.commit(manifest.steps_done + k * save_interval, engine.get_state(), _stack(frames))
        after_chunk()


def _final_arrays(
    manifest: _Manifest, n_frames: int, save_interval: int, timestep_fs: float, float_dtype: str
) -> dict[str, np.ndarray]:
    """All chunks concatenated in their storage dtypes, plus ``time_fs``."""
    frames = manifest.load_frames()
    if len(frames["energies"]) != n_frames:
        found = len(frames["energies"])
        raise RuntimeError(f"{manifest.work_dir}: expected {n_frames} frames, found {found}")
    return {
        "positions": frames["positions"].astype(float_dtype),
        "energies": frames["energies"].astype(np.float64),
        "forces": frames["forces"].astype(float_dtype),
        "velocities": frames["velocities"].astype(float_dtype),
        "time_fs": np.arange(1, n_frames + 1, dtype=np.float64) * save_interval * timestep_fs,
    }
