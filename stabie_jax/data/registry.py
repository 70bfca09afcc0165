"""Registry of the paper's datasets: where to download them, checksums, units, split recipes.

Files are kept in a cache directory: the ``cache_dir`` argument, else the environment variable
``STABIE_JAX_DATA_DIR``, else ``~/.cache/stabie_jax``; each dataset has its own sub-directory
``<cache>/<dataset name>/``. Nothing is downloaded unless asked (``download=True``): without the
file, :func:`fetch` raises a ``ValueError`` that names the exact URL, file name and directory,
so an offline machine can be provisioned by hand.

Checksums: where a sha256 is published or was recorded from a verified copy, it is in the entry
and every load verifies it. Where none could be found (``sha256=None``, with the reason in
``sha256_note``), the hash of the first copy seen is written next to it as ``<file>.sha256``
and later loads verify against that record, so a file that changes is noticed.

Examples:
  >>> sorted(REGISTRY)[:2]
  ['md17_aspirin', 'md22_ac_ala3_nhme']
  >>> get_entry("water_mdsim_1k").split(100_001).train.shape
  (950,)
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import tempfile
import urllib.request
from collections.abc import Mapping
from typing import Any

from stabie_jax.data.splits import Split, md17_split, md22_split

__all__ = [
    "DATA_DIR_ENV",
    "REGISTRY",
    "DatasetEntry",
    "RemoteFile",
    "cache_dir_for",
    "fetch",
    "get_entry",
    "list_datasets",
    "sha256_of_file",
]

DATA_DIR_ENV = "STABIE_JAX_DATA_DIR"
"""Environment variable naming the dataset cache directory."""

_DEFAULT_CACHE = pathlib.Path("~/.cache/stabie_jax")


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """One downloadable file.

    Attributes:
      url: download URL.
      file_name: name of the file in the cache directory.
      sha256: hex digest, or None when no published or verified checksum exists.
      sha256_note: where the checksum comes from, or why there is none.
    """

    url: str
    file_name: str
    sha256: str | None
    sha256_note: str


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    """A dataset of the paper.

    Attributes:
      name: registry key (also the cache sub-directory).
      description: what it is, with its reference.
      files: the files that make up the dataset (loaded in order and concatenated).
      format: reader format (``"sgdml"``, ``"rmd17"``, ``"mdsim_water"``).
      units: units in the files, e.g. ``{"energy": "kcal/mol", "length": "Å"}``.
      reader_options: options passed to :func:`stabie_jax.data.readers.read_file`.
      temperature_kelvin: temperature of the generating MD, or None if not recorded here.
      n_frames: frames in the full dataset (used by the split recipe).
      split_recipe: ``{"recipe": "md17" | "md22" | "none", ...}`` arguments of
        :func:`stabie_jax.data.splits.md17_split` / :func:`~stabie_jax.data.splits.md22_split`.
      notes: caveats.
    """

    name: str
    description: str
    files: tuple[RemoteFile, ...]
    format: str
    units: Mapping[str, str]
    reader_options: Mapping[str, Any]
    temperature_kelvin: float | None
    n_frames: int | None
    split_recipe: Mapping[str, Any]
    notes: str = ""

    def split(self, n_frames: int | None = None, **overrides) -> Split:
        """The authors' split of this dataset (``overrides`` replace recipe arguments).

        Args:
          n_frames: frames actually loaded; default :attr:`n_frames`.
        """
        n = self.n_frames if n_frames is None else n_frames
        recipe = dict(self.split_recipe, **overrides)
        kind = recipe.pop("recipe")
        if n is None:
            raise ValueError(f"{self.name}: n_frames unknown; pass it explicitly.")
        if kind == "md17":
            return md17_split(n, **recipe)
        if kind == "md22":
            return md22_split(n, **recipe)
        raise ValueError(
            f"{self.name}: split recipe {kind!r} has no index split (the files are already "
            "split); use stabie_jax.data.split_by_counts."
        )


_NO_SHA = (
    "No sha256 is published by the host and none was found in the StABlE/MDsim code; the hash "
    "of the first copy is recorded in the cache as <file>.sha256 and verified afterwards."
)

_RMD17_COMMIT = "4f6bb0a186822c90d47cd98b7a27991fe0b3173b"
_RMD17_BASE = f"https://raw.githubusercontent.com/andersx/rmd17-npz/{_RMD17_COMMIT}/rmd17-npz/"
_RMD17_SHA = {
    "train_01": "d460f0e43a1a9411b55cdcd9cdbeb9466ae62851ac91392516ab88e4ebc68143",
    "train_02": "8a5699756e1a9c2bc30c22985cff03b45cb1eb36550941d742d8ce5abfac2d01",
    "train_03": "9153827bb89e26d43e9e590d35d5572dd0b535a190a3486c320c75494aa94a7c",
    "train_04": "c086ab96170e5bdc0363674d1e5d6ea9786a7a76fca286eb87f35850b5e21c13",
    "train_05": "25cc9584b5cd79f63d56d051bab326e18077b3719f8f45807747fbfa6a55e7ed",
    "test_01": "a3c3b61e782d01e6dd649a126004903f7873e8e7ee5034135abfdb8873be711d",
    "test_02": "445e26aa2253dcf7e8d9386785c4a9cea69f1e196f54fbd69a969c53177a1a9c",
    "test_03": "818d5bbb8c8ff17bd049ab09e2614354b0a8a21a1cd5667bc13e934247162a36",
    "test_04": "724b808f3ed9eb542b864e14982aa2246a4c5098165b86ec8b22e893cd9271c5",
    "test_05": "03e1e6673698867c73e3be38a37a19b062ed49a4961aee21e67702db869f3d9d",
}


def _rmd17_files(part: str) -> tuple[RemoteFile, ...]:
    return tuple(
        RemoteFile(
            url=_RMD17_BASE + f"rmd17_aspirin_{part}_0{i}.npz",
            file_name=f"rmd17_aspirin_{part}_0{i}.npz",
            sha256=_RMD17_SHA[f"{part}_0{i}"],
            sha256_note=(
                "sha256 of a locally staged copy (byte-identical to "
                f"andersx/rmd17-npz at commit {_RMD17_COMMIT}, CC0)."
            ),
        )
        for i in range(1, 6)
    )


_WATER_FILE = RemoteFile(
    url="https://zenodo.org/record/7196767/files/water.npy?download=1",
    file_name="water.npy",
    sha256=None,
    sha256_note=_NO_SHA,
)

_WATER_NOTE = (
    "MDsim (Fu et al. 2022, arXiv:2210.07237) water: 64 H2O (192 atoms), flexible SPC/E-type "
    "classical model, 300 K, 100,001 frames every 10 fs, cubic box from 'lengths'. water.npy is a "
    "pickled dict; it is unpickled (allow_pickle) only through this registry."
)

REGISTRY: dict[str, DatasetEntry] = {
    "md17_aspirin": DatasetEntry(
        name="md17_aspirin",
        description=(
            "Original MD17 aspirin (Chmiela et al., Sci. Adv. 3, e1603015, 2017): 211,762 frames "
            "of 500 K ab initio MD (PBE+vdW-TS), sGDML npz. StABlE's aspirin/SchNet run uses the "
            "1k split (950 train / 50 val) and a 10,000-frame test set."
        ),
        files=(
            RemoteFile(
                url="http://www.quantum-machine.org/gdml/data/npz/md17_aspirin.npz",
                file_name="md17_aspirin.npz",
                sha256=None,
                sha256_note=_NO_SHA,
            ),
        ),
        format="sgdml",
        units={"energy": "kcal/mol", "length": "Å", "forces": "kcal/mol/Å"},
        reader_options={"energy_unit": "kcal/mol"},
        temperature_kelvin=500.0,
        n_frames=211_762,
        split_recipe={"recipe": "md17", "size": 1000, "n_test": 10_000, "seed": 123},
    ),
    "rmd17_aspirin_train": DatasetEntry(
        name="rmd17_aspirin_train",
        description=(
            "Revised MD17 aspirin (Christensen & von Lilienfeld 2020, figshare "
            "10.6084/m9.figshare.12672038), the five official 1,000-frame TRAIN splits as npz "
            "(andersx/rmd17-npz). Geometries are MD17 frames (old_indices)."
        ),
        files=_rmd17_files("train"),
        format="rmd17",
        units={"energy": "kcal/mol", "length": "Å", "forces": "kcal/mol/Å"},
        reader_options={"labels": "rmd17"},
        temperature_kelvin=500.0,
        n_frames=5000,
        split_recipe={"recipe": "none"},
        notes=(
            "labels='md17' selects the original MD17 labels (old_energies/old_forces), which the "
            "StABlE checkpoints were trained on. The five train splits overlap a little (check "
            "frame_ids); the rMD17 authors advise training on at most 1,000 frames."
        ),
    ),
    "rmd17_aspirin_test": DatasetEntry(
        name="rmd17_aspirin_test",
        description="Revised MD17 aspirin, the five official 1,000-frame TEST splits.",
        files=_rmd17_files("test"),
        format="rmd17",
        units={"energy": "kcal/mol", "length": "Å", "forces": "kcal/mol/Å"},
        reader_options={"labels": "rmd17"},
        temperature_kelvin=500.0,
        n_frames=5000,
        split_recipe={"recipe": "none"},
        notes="Evaluation only: never train on these frames.",
    ),
    "md22_ac_ala3_nhme": DatasetEntry(
        name="md22_ac_ala3_nhme",
        description=(
            "MD22 Ac-Ala3-NHMe (Chmiela et al., Sci. Adv. 9, eadf0873, 2023): 85,109 frames, "
            "42 atoms, PBE+MBD, sGDML npz. StABlE's NequIP checkpoint used the 25percent split "
            "(14,894 train frames)."
        ),
        files=(
            RemoteFile(
                url="http://www.quantum-machine.org/gdml/data/npz/md22_Ac-Ala3-NHMe.npz",
                file_name="md22_Ac-Ala3-NHMe.npz",
                sha256=None,
                sha256_note=_NO_SHA,
            ),
        ),
        format="sgdml",
        units={"energy": "kcal/mol", "length": "Å", "forces": "kcal/mol/Å"},
        reader_options={"energy_unit": "kcal/mol"},
        temperature_kelvin=None,
        n_frames=85_109,
        split_recipe={"recipe": "md22", "fraction": 0.25, "seed": 123},
        notes="Simulation temperature not recorded here (see the MD22 paper).",
    ),
    "water_mdsim_1k": DatasetEntry(
        name="water_mdsim_1k",
        description=_WATER_NOTE + " Split: 1k (950 train / 50 val), 10,000 test.",
        files=(_WATER_FILE,),
        format="mdsim_water",
        units={"energy": "kcal/mol", "length": "Å", "forces": "kcal/mol/Å"},
        reader_options={"allow_pickle": True},
        temperature_kelvin=300.0,
        n_frames=100_001,
        split_recipe={"recipe": "md17", "size": 1000, "n_test": 10_000, "seed": 123},
    ),
    "water_mdsim_10k": DatasetEntry(
        name="water_mdsim_10k",
        description=_WATER_NOTE + " Split: 10k (9,500 train / 500 val), 10,000 test.",
        files=(_WATER_FILE,),
        format="mdsim_water",
        units={"energy": "kcal/mol", "length": "Å", "forces": "kcal/mol/Å"},
        reader_options={"allow_pickle": True},
        temperature_kelvin=300.0,
        n_frames=100_001,
        split_recipe={"recipe": "md17", "size": 10_000, "n_test": 10_000, "seed": 123},
    ),
}
"""Known datasets by name."""


def list_datasets() -> list[str]:
    """Names of the registered datasets."""
    return sorted(REGISTRY)


def get_entry(name: str) -> DatasetEntry:
    """The registry entry ``name``; ValueError listing the known names otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; registered: {list_datasets()}.")
    return REGISTRY[name]


def cache_dir_for(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The cache root: ``cache_dir``, else ``$STABIE_JAX_DATA_DIR``, else ~/.cache/stabie_jax."""
    if cache_dir is not None:
        return pathlib.Path(cache_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    return pathlib.Path(env).expanduser() if env else _DEFAULT_CACHE.expanduser()


def sha256_of_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: pathlib.Path, remote: RemoteFile) -> None:
    """Checks a cached file against the entry's sha256 or the recorded ``<file>.sha256``."""
    actual = sha256_of_file(path)
    record = path.with_name(path.name + ".sha256")
    expected, origin = remote.sha256, "the registry"
    if expected is None and record.exists():
        expected, origin = record.read_text().split()[0].strip(), f"the record {record}"
    if expected is None:
        record.write_text(f"{actual}  {path.name}\n")
        return
    if actual != expected:
        raise ValueError(
            f"{path}: sha256 {actual} does not match {expected} from {origin}; the file is "
            f"corrupt or a different version. Delete it and download {remote.url} again."
        )


def _download(remote: RemoteFile, destination: pathlib.Path, timeout_s: float) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=destination.name + ".", suffix=".part", dir=destination.parent
    )
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(remote.url, timeout=timeout_s) as r:
            while chunk := r.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        actual = digest.hexdigest()
        if remote.sha256 is not None and actual != remote.sha256:
            raise ValueError(
                f"download of {remote.url}: sha256 {actual} does not match the registry's "
                f"{remote.sha256}; the file was not saved."
            )
        os.replace(tmp, destination)
        if remote.sha256 is None:
            record = destination.with_name(destination.name + ".sha256")
            record.write_text(f"{actual}  {destination.name}\n")
    finally:
        pathlib.Path(tmp).unlink(missing_ok=True)


def fetch(
    name: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    download: bool = False,
    timeout_s: float = 60.0,
) -> list[pathlib.Path]:
    """Local paths of dataset ``name``'s files, verified; downloads them if asked.

    Args:
      name: a registry name (:func:`list_datasets`).
      cache_dir: cache root (see :func:`cache_dir_for`).
      download: fetch missing files with ``urllib`` and verify their sha256.
      timeout_s: network timeout per request.

    Raises:
      ValueError: when a file is missing and ``download`` is False (naming the URL, the file
        name and the directory to put it in), or when a checksum does not match.
    """
    entry = get_entry(name)
    directory = cache_dir_for(cache_dir) / entry.name
    paths = []
    for remote in entry.files:
        path = directory / remote.file_name
        if not path.exists():
            if not download:
                raise ValueError(
                    f"dataset {name!r}: file {remote.file_name!r} is not in the cache directory "
                    f"{directory}. Download {remote.url} and save it as {path} (e.g. "
                    f"`mkdir -p {directory} && curl -L -o {path} '{remote.url}'`), or call "
                    f"load_dataset({name!r}, download=True). The cache root is set by "
                    f"cache_dir= or ${DATA_DIR_ENV}."
                )
            _download(remote, path, timeout_s)
        _verify(path, remote)
        paths.append(path)
    return paths
