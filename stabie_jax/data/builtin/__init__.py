"""Reference datasets shipped inside the package, so the pipeline runs offline.

The files were made by ``python -m stabie_jax.data.generate`` (exact commands, versions and
validation in ``PROVENANCE.md`` beside this file) and are stabie npz files (Å, eV, eV/Å, Å/fs):

* ``aspirin_xtb_500K`` — one aspirin molecule, GFN2-xTB NVT MD at 500 K;
* ``ala3_xtb_500K`` — one Ac-Ala3-NHMe molecule, GFN2-xTB NVT MD at 500 K (smoke-test scale);
* ``water_spcfw_64_300K`` — 64 SPC/Fw waters, cubic periodic box, OpenMM NVT MD at 300 K.

Load them with ``stabie_jax.data.load_dataset("builtin:<name>")``; :func:`verify_builtin` checks
a file against the SHA-256 recorded here.
"""

from __future__ import annotations

import pathlib
from typing import NamedTuple

BUILTIN_DIR = pathlib.Path(__file__).resolve().parent


class BuiltinDataset(NamedTuple):
    """Record of one shipped file."""

    name: str
    filename: str
    sha256: str
    description: str


BUILTIN_DATASETS = {
    "aspirin_xtb_500K": BuiltinDataset(
        name="aspirin_xtb_500K",
        filename="aspirin_xtb_500K.npz",
        sha256="0e84205ed4e7d310370f492c5a10786773ff76cf1c869d13ccbdaa9a4d81b7fa",
        description=(
            "Aspirin (C9H8O4, 21 atoms), GFN2-xTB (tblite) NVT Langevin MD at 500 K, 0.5 fs "
            "steps, 3,000 frames 10 fs apart after 5 ps equilibration"
        ),
    ),
    "ala3_xtb_500K": BuiltinDataset(
        name="ala3_xtb_500K",
        filename="ala3_xtb_500K.npz",
        sha256="dc01785eb1d72396e96c83034f7b00b1dadedffe178b6a152edb208842375908",
        description=(
            "Ac-Ala3-NHMe (C12H22N4O4, 42 atoms), GFN2-xTB (tblite) NVT Langevin MD at 500 K, "
            "0.5 fs steps, 600 frames 10 fs apart after 1 ps equilibration"
        ),
    ),
    "water_spcfw_64_300K": BuiltinDataset(
        name="water_spcfw_64_300K",
        filename="water_spcfw_64_300K.npz",
        sha256="6ceeb8ed32e6218225089a266f8b37ea36e9f808b7280ca42a77a8eb96dfbe94",
        description=(
            "64 SPC/Fw waters, 0.997 g/cm³ cubic box, PME, OpenMM Langevin (1/ps) MD at "
            "300 K, 1 fs steps, 1,000 frames 100 fs apart after 30 ps equilibration"
        ),
    ),
}


def builtin_path(name: str) -> pathlib.Path:
    """Path of a shipped dataset file.

    Raises:
      ValueError: unknown name or missing file.
    """
    if name not in BUILTIN_DATASETS:
        raise ValueError(f"unknown built-in dataset {name!r}; known: {sorted(BUILTIN_DATASETS)}")
    path = BUILTIN_DIR / BUILTIN_DATASETS[name].filename
    if not path.is_file():
        raise ValueError(f"built-in dataset file {path} is missing; reinstall stabie-jax")
    return path


def verify_builtin(name: str) -> pathlib.Path:
    """Path of a shipped dataset after checking its SHA-256 against the record.

    Raises:
      ValueError: unknown name, missing file or checksum mismatch.
    """
    from stabie_jax.data.generate.resumable import sha256_of

    path = builtin_path(name)
    digest = sha256_of(path)
    if digest != BUILTIN_DATASETS[name].sha256:
        raise ValueError(
            f"{path}: SHA-256 {digest} does not match the recorded "
            f"{BUILTIN_DATASETS[name].sha256}; the file is corrupt or was replaced"
        )
    return path
