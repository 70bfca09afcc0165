"""Datasets: loading, validation, splits, bonds and the registry of the paper's data.

Everything inside is in eV, Å, amu (velocities in Å per internal time unit); readers convert at
load time. Typical use::

    from stabie_jax import data

    ds = data.load_dataset("rmd17_aspirin_train", labels="md17")   # registry (cache)
    ds = data.load_dataset("builtin:water_spcfw_64_300K")          # shipped with the package
    ds = data.load_dataset(["a.npz", "b.npz"])                     # files, concatenated
    split = data.split_by_counts(ds.n_frames, n_train=1000, n_val=50, n_test=1000, seed=0)
    train = ds.subset(split.train)
    graph = data.bonds_from_dataset(train)                         # bonds + mean lengths
    labels = data.molecule_labels(ds.n_atoms, graph.bonds)         # molecules (water)
"""

from stabie_jax.data.bonds import (
    BondGraph,
    bond_lengths,
    bonds_from_dataset,
    covalent_cutoffs,
    find_bonds,
    intermolecular_mask,
    minimum_image,
    molecule_labels,
    molecule_members,
    pair_distances,
)
from stabie_jax.data.dataset import (
    Dataset,
    concatenate,
    velocities_from_angstrom_per_fs,
    velocities_to_angstrom_per_fs,
)
from stabie_jax.data.held_out import MoleculeData, load_molecule_data
from stabie_jax.data.loader import BUILTIN_DIR, list_builtin, load_dataset
from stabie_jax.data.readers import (
    detect_npz_format,
    max_plausible_energy_ev,
    read_ase,
    read_file,
    read_mdsim_water_npy,
    read_npz,
    read_openmm_water_npz,
    read_rmd17_npz,
    read_sgdml_npz,
    read_stabie_npz,
    save_dataset,
    write_extxyz,
)
from stabie_jax.data.registry import (
    DATA_DIR_ENV,
    REGISTRY,
    DatasetEntry,
    RemoteFile,
    cache_dir_for,
    fetch,
    get_entry,
    list_datasets,
    sha256_of_file,
)
from stabie_jax.data.splits import Split, authors_split, md17_split, md22_split, split_by_counts

__all__ = [
    "BUILTIN_DIR",
    "BondGraph",
    "DATA_DIR_ENV",
    "Dataset",
    "DatasetEntry",
    "MoleculeData",
    "REGISTRY",
    "RemoteFile",
    "Split",
    "authors_split",
    "bond_lengths",
    "bonds_from_dataset",
    "cache_dir_for",
    "concatenate",
    "covalent_cutoffs",
    "detect_npz_format",
    "fetch",
    "find_bonds",
    "get_entry",
    "intermolecular_mask",
    "list_builtin",
    "list_datasets",
    "load_dataset",
    "load_molecule_data",
    "max_plausible_energy_ev",
    "md17_split",
    "md22_split",
    "minimum_image",
    "molecule_labels",
    "molecule_members",
    "pair_distances",
    "read_ase",
    "read_file",
    "read_mdsim_water_npy",
    "read_npz",
    "read_openmm_water_npz",
    "read_rmd17_npz",
    "read_sgdml_npz",
    "read_stabie_npz",
    "save_dataset",
    "sha256_of_file",
    "split_by_counts",
    "velocities_from_angstrom_per_fs",
    "velocities_to_angstrom_per_fs",
    "write_extxyz",
]
