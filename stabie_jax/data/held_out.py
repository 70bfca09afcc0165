"""A molecule's dataset split for training, validation, held-out testing and reference.

:func:`load_molecule_data` loads a dataset (files, the registry or the built-in data), cuts
train/validation/test splits (or takes the test frames from a separate source, removing any
frame the two share) and keeps the non-test frames, at most ``max_reference_frames`` of them, as
the *reference*: the frames that reference observables and equilibrium bond lengths come from.
Test frames never enter training, validation or the reference.

Example:
  >>> m = load_molecule_data("builtin:aspirin_xtb_500K", test_source="", reader_options={},
  ...     download=False, n_train=50, n_val=10, n_test=20, split_seed=0, contiguous=False,
  ...     max_reference_frames=300)
  >>> m.train.n_frames, m.val.n_frames, m.test.n_frames, m.reference.n_frames
  (50, 10, 20, 300)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from stabie_jax.data.bonds import BondGraph, bonds_from_dataset
from stabie_jax.data.dataset import Dataset
from stabie_jax.data.loader import load_dataset
from stabie_jax.data.splits import split_by_counts

__all__ = ["MoleculeData", "load_molecule_data"]


class MoleculeData(NamedTuple):
    """Splits of one molecule's dataset and what is derived from the reference frames.

    Attributes:
      train, val, test: :class:`~stabie_jax.data.Dataset` splits (test is held out).
      reference: non-test frames used for the reference h(r) and equilibrium bond lengths.
      bonds: :class:`~stabie_jax.data.BondGraph` (covalent bonds, mean lengths Å).
    """

    train: Dataset
    val: Dataset
    test: Dataset
    reference: Dataset
    bonds: BondGraph

    @property
    def atomic_numbers(self) -> np.ndarray:
        return np.asarray(self.train.atomic_numbers)


def load_molecule_data(
    source: str,
    *,
    test_source: str,
    reader_options: dict,
    download: bool,
    n_train: int,
    n_val: int,
    n_test: int,
    split_seed: int,
    contiguous: bool,
    max_reference_frames: int,
) -> MoleculeData:
    """Load and split the dataset; test frames never enter training or the reference."""
    full = load_dataset(source, download=download, **reader_options)
    if test_source:
        test_full = load_dataset(test_source, download=download, **reader_options)
        if n_test > test_full.n_frames:
            raise ValueError(f"n_test={n_test} but {test_source} holds {test_full.n_frames} frames")
        test = test_full.subset(np.arange(n_test))
        # Registry splits may share frames (rMD17's train/test files overlap a little): frames
        # of the held-out set never enter training, validation or the reference.
        pool = np.arange(full.n_frames)
        if full.frame_ids is not None and test_full.frame_ids is not None:
            pool = pool[~np.isin(full.frame_ids, test_full.frame_ids)]
        inner = split_by_counts(
            len(pool), n_train=n_train, n_val=n_val, seed=split_seed, contiguous=contiguous
        )
        train_idx, val_idx, not_test = pool[inner.train], pool[inner.val], pool
    else:
        split = split_by_counts(
            full.n_frames,
            n_train=n_train,
            n_val=n_val,
            n_test=n_test,
            seed=split_seed,
            contiguous=contiguous,
        )
        test = full.subset(split.test)
        train_idx, val_idx = split.train, split.val
        not_test = np.setdiff1d(np.arange(full.n_frames), split.test)
    if len(not_test) > max_reference_frames:
        rng = np.random.default_rng(split_seed + 1)
        not_test = np.sort(rng.choice(not_test, max_reference_frames, replace=False))
    reference = full.subset(not_test)
    bonds = bonds_from_dataset(reference)
    return MoleculeData(full.subset(train_idx), full.subset(val_idx), test, reference, bonds)
