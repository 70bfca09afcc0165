"""Tests for stabie_jax.data.registry and load_dataset (no network: downloads are mocked)."""

from __future__ import annotations

import hashlib
import io
import os
import re

import numpy as np
import pytest
from conftest import shared_file

from stabie_jax.data import (
    DATA_DIR_ENV,
    REGISTRY,
    Dataset,
    DatasetEntry,
    RemoteFile,
    cache_dir_for,
    fetch,
    get_entry,
    list_datasets,
    load_dataset,
    loader,
    registry,
    save_dataset,
    sha256_of_file,
)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to reach the network fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(registry.urllib.request, "urlopen", refuse)


def _toy(n_frames=3, source="toy"):
    rng = np.random.default_rng(0)
    return Dataset(
        positions=rng.normal(size=(n_frames, 2, 3)) + [[0, 0, 0], [0.74, 0, 0]],
        energies=rng.normal(size=n_frames),
        forces=rng.normal(size=(n_frames, 2, 3)),
        atomic_numbers=np.array([1, 1]),
        metadata={"source_files": [source], "temperature_kelvin": 10.0},
    )


def _fake_entry(monkeypatch, content: bytes, sha256):
    entry = DatasetEntry(
        name="toy_remote",
        description="test entry",
        files=(RemoteFile("https://example.invalid/toy.npz", "toy.npz", sha256, "test"),),
        format="stabie",
        units={"energy": "eV", "length": "Å"},
        reader_options={},
        temperature_kelvin=42.0,
        n_frames=3,
        split_recipe={"recipe": "md17", "size": 2, "n_test": 1, "seed": 123},
    )
    monkeypatch.setitem(REGISTRY, "toy_remote", entry)

    def urlopen(url, timeout):
        assert url == "https://example.invalid/toy.npz" and timeout > 0
        return io.BytesIO(content)

    monkeypatch.setattr(registry.urllib.request, "urlopen", urlopen)
    return entry


def _toy_bytes(tmp_path) -> bytes:
    path = save_dataset(_toy(), tmp_path / "src" / "toy.npz")
    return path.read_bytes()


def test_registry_entries_are_complete():
    assert {"md17_aspirin", "rmd17_aspirin_train", "md22_ac_ala3_nhme", "water_mdsim_1k"} <= set(
        list_datasets()
    )
    for entry in REGISTRY.values():
        assert entry.files and entry.units["energy"] == "kcal/mol"
        for remote in entry.files:
            assert remote.url.startswith(("http://", "https://"))
            assert remote.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", remote.sha256)
            assert remote.sha256_note  # the origin of the checksum, or why there is none
    with pytest.raises(ValueError, match="unknown dataset 'nope'; registered"):
        get_entry("nope")


def test_registry_split_recipes():
    assert [len(x) for x in get_entry("md17_aspirin").split()] == [950, 50, 10_000]
    assert [len(x) for x in get_entry("water_mdsim_10k").split()] == [9500, 500, 10_000]
    assert len(get_entry("md22_ac_ala3_nhme").split().train) == 14_894
    with pytest.raises(ValueError, match="already"):
        get_entry("rmd17_aspirin_test").split()


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert str(cache_dir_for()) == os.path.expanduser("~/.cache/stabie_jax")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env"))
    assert cache_dir_for() == tmp_path / "env"
    assert cache_dir_for(tmp_path / "arg") == tmp_path / "arg"


def test_offline_error_names_url_file_and_directory(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(ValueError) as info:
        load_dataset("md17_aspirin")
    message = str(info.value)
    assert "http://www.quantum-machine.org/gdml/data/npz/md17_aspirin.npz" in message
    assert "'md17_aspirin.npz'" in message
    assert str(tmp_path / "md17_aspirin") in message
    assert "download=True" in message
    assert not (tmp_path / "md17_aspirin").exists()  # nothing created when offline


def test_download_with_known_sha256(monkeypatch, tmp_path):
    content = _toy_bytes(tmp_path)
    _fake_entry(monkeypatch, content, hashlib.sha256(content).hexdigest())
    ds = load_dataset("toy_remote", cache_dir=tmp_path / "cache", download=True)
    assert ds.n_frames == 3 and ds.metadata["registry_entry"] == "toy_remote"
    assert ds.temperature_kelvin == 10.0  # the file's own value wins over the entry's
    cached = tmp_path / "cache" / "toy_remote" / "toy.npz"
    assert cached.read_bytes() == content
    assert not list(cached.parent.glob("*.part"))
    # Second load: from the cache, without network (urlopen now refuses).
    monkeypatch.setattr(registry.urllib.request, "urlopen", None)
    assert load_dataset("toy_remote", cache_dir=tmp_path / "cache").n_frames == 3


def test_download_with_wrong_sha256_keeps_nothing(monkeypatch, tmp_path):
    content = _toy_bytes(tmp_path)
    _fake_entry(monkeypatch, content, "0" * 64)
    with pytest.raises(ValueError, match="does not match the registry"):
        fetch("toy_remote", cache_dir=tmp_path / "cache", download=True)
    assert list((tmp_path / "cache" / "toy_remote").iterdir()) == []


def test_unknown_sha256_is_recorded_then_verified(monkeypatch, tmp_path):
    content = _toy_bytes(tmp_path)
    _fake_entry(monkeypatch, content, None)
    (path,) = fetch("toy_remote", cache_dir=tmp_path / "cache", download=True)
    record = path.with_name("toy.npz.sha256")
    assert record.read_text().split()[0] == hashlib.sha256(content).hexdigest()
    assert sha256_of_file(path) == hashlib.sha256(content).hexdigest()
    path.write_bytes(content[:-1] + b"x")  # the cached file changes afterwards
    with pytest.raises(ValueError, match="does not match .* from the record"):
        fetch("toy_remote", cache_dir=tmp_path / "cache")


def test_real_rmd17_shards_verify_against_registry(tmp_path):
    directory = tmp_path / "rmd17_aspirin_train"
    directory.mkdir()
    for i in range(1, 6):
        name = f"rmd17_aspirin_train_0{i}.npz"
        (directory / name).symlink_to(shared_file("rmd17_aspirin", name))
    ds = load_dataset("rmd17_aspirin_train", cache_dir=tmp_path, labels="md17")
    assert (ds.n_frames, ds.n_atoms) == (5000, 21)
    assert ds.metadata["labels"] == "md17" and ds.metadata["name"] == "rmd17_aspirin_train"
    assert ds.temperature_kelvin == 500.0


def test_builtin_datasets(monkeypatch, tmp_path):
    monkeypatch.setattr(loader, "BUILTIN_DIR", tmp_path)
    save_dataset(_toy(), tmp_path / "toy_builtin.npz")
    assert loader.list_builtin() == ["toy_builtin"]
    assert load_dataset("builtin:toy_builtin").n_frames == 3
    with pytest.raises(
        ValueError, match=r"built-in dataset 'missing' not found.*\['toy_builtin'\]"
    ):
        load_dataset("builtin:missing")


def test_load_lists_globs_and_errors(tmp_path):
    for i in range(3):
        save_dataset(_toy(2 + i), tmp_path / f"part_{i}.npz")
    ds = load_dataset([tmp_path / "part_0.npz", str(tmp_path / "part_2.npz")])
    assert ds.n_frames == 6 and ds.metadata["concatenated_frames"] == (2, 4)
    assert load_dataset(str(tmp_path / "part_*.npz")).metadata["concatenated_frames"] == (2, 3, 4)
    with pytest.raises(ValueError, match="matches no files"):
        load_dataset(str(tmp_path / "none_*.npz"))
    with pytest.raises(ValueError, match="no such file, and not a registry name"):
        load_dataset(str(tmp_path / "absent.npz"))
    with pytest.raises(ValueError, match="empty list"):
        load_dataset([])
    with pytest.raises(ValueError, match="expected a path"):
        load_dataset([3])
    (tmp_path / "part_1.npz").write_bytes(b"corrupt")  # one bad file: no partial result
    with pytest.raises(ValueError, match="part_1.npz"):
        load_dataset(str(tmp_path / "part_*.npz"))


@pytest.mark.parametrize(
    "name, n_atoms, n_molecules",
    [("aspirin_xtb_500K", 21, 1), ("ala3_xtb_500K", 42, 1), ("water_spcfw_64_300K", 192, 64)],
)
def test_shipped_builtin_datasets_load(name, n_atoms, n_molecules):
    from stabie_jax.data import bonds_from_dataset, molecule_labels

    if name not in loader.list_builtin():
        pytest.skip(f"builtin:{name} not generated yet (see stabie_jax/data/generate)")
    ds = load_dataset(f"builtin:{name}")
    assert ds.n_atoms == n_atoms and ds.has_labels and ds.metadata["format"] == "stabie"
    assert ds.temperature_kelvin is not None
    graph = bonds_from_dataset(ds, frames=np.arange(0, ds.n_frames, max(1, ds.n_frames // 50)))
    assert molecule_labels(ds.n_atoms, graph.bonds).max() + 1 == n_molecules
    if name.startswith("aspirin"):
        assert len(graph.bonds) == 21
    if name.startswith("ala3"):
        assert len(graph.bonds) == 41  # acyclic: a spanning tree of the 42 atoms


def test_mdsim_water_entry_from_cache_records_sha256(tmp_path):
    rng = np.random.default_rng(3)
    water = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    data = dict(
        wrapped_coords=water + 0.01 * rng.normal(size=(4, 3, 3)),
        atom_types=np.array([8, 1, 1]),
        lengths=np.array([6.0, 6.0, 6.0]),
        angles=np.array([90.0, 90.0, 90.0]),
        energy=rng.normal(size=4),
        forces=rng.normal(size=(4, 3, 3)),
    )
    directory = tmp_path / "water_mdsim_1k"
    directory.mkdir()
    np.save(directory / "water.npy", np.array(data, dtype=object), allow_pickle=True)
    ds = load_dataset("water_mdsim_1k", cache_dir=tmp_path)
    assert ds.metadata["format"] == "mdsim_water" and ds.temperature_kelvin == 300.0
    np.testing.assert_allclose(ds.energies, data["energy"] * 0.0433641042418, rtol=1e-9)
    record = (directory / "water.npy.sha256").read_text().split()[0]
    assert record == sha256_of_file(directory / "water.npy")
