"""Train/validation/test splits as frame-index arrays.

Two recipes:

* :func:`split_by_counts`: ``n_train``/``n_val``/``n_test`` frames, disjoint, drawn with a seeded
  ``numpy.random.default_rng`` permutation, or, with ``contiguous=True``, consecutive blocks in
  time order (train first, then val, then test) so that dynamical observables (VACF, diffusion)
  can be computed on each split. The paper trains on 1,000 frames.
* :func:`md17_split` / :func:`md22_split` / :func:`authors_split`: the StABlE authors' recipe
  (``data/md17.py``, ``data/water.py``, ``data/md22.py`` of StABlE-Training, adapted from
  MDsim). MD17 and water: a random test set of 10,000 frames, then train/val = 95%/5% of the
  first ``size`` frames of the shuffled remaining pool; MD22: 70/10/20% of a fraction of the
  frames. Each draw is scikit-learn's ``train_test_split(..., random_state=123)``, which is
  ``RandomState(123).permutation(n)`` with the test part first; it is reproduced here with
  NumPy's legacy ``RandomState`` (same bit stream), so no scikit-learn dependency is needed.
  With ``contiguous=True`` they give the authors' time-ordered blocks instead.

All functions return a :class:`Split` of sorted-as-drawn ``int64`` arrays and never touch the
data: apply them with :meth:`stabie_jax.data.Dataset.subset`.

Examples:
  >>> s = split_by_counts(100, n_train=10, n_val=5, n_test=20, seed=0)
  >>> len(s.train), len(s.val), len(s.test)
  (10, 5, 20)
  >>> bool(set(s.train.tolist()) & set(s.test.tolist()))
  False
  >>> split_by_counts(100, n_train=3, n_val=2, n_test=2, contiguous=True).val.tolist()
  [3, 4]
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Split", "authors_split", "md17_split", "md22_split", "split_by_counts"]


class Split(NamedTuple):
    """Disjoint frame indices.

    Attributes:
      train: ``[n_train]`` int64.
      val: ``[n_val]`` int64.
      test: ``[n_test]`` int64.
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def _check_counts(n_frames: int, counts: dict[str, int]) -> None:
    if int(n_frames) != n_frames or n_frames < 1:
        raise ValueError(f"n_frames={n_frames!r}; expected a positive integer.")
    for name, count in counts.items():
        if int(count) != count or count < 0:
            raise ValueError(f"{name}={count!r}; expected a non-negative integer.")
    total = sum(counts.values())
    if total > n_frames:
        detail = " + ".join(f"{k}={v}" for k, v in counts.items())
        raise ValueError(f"{detail} = {total} frames requested but only {n_frames} exist.")


def _frozen(array) -> np.ndarray:
    array = np.asarray(array, dtype=np.int64).copy()
    array.setflags(write=False)
    return array


def split_by_counts(
    n_frames: int,
    *,
    n_train: int,
    n_val: int = 0,
    n_test: int = 0,
    seed: int = 0,
    contiguous: bool = False,
) -> Split:
    """Disjoint train/val/test index arrays with the requested sizes.

    Args:
      n_frames: frames in the dataset.
      n_train, n_val, n_test: sizes; their sum must not exceed ``n_frames``.
      seed: seed of ``numpy.random.default_rng`` (ignored when ``contiguous``).
      contiguous: if True, consecutive blocks ``[0, n_train)``, then val, then test (time order);
        otherwise a random permutation, first ``n_train`` for train, then val, then test.

    Returns:
      A :class:`Split`; the same arguments always give the same arrays.
    """
    _check_counts(n_frames, {"n_train": n_train, "n_val": n_val, "n_test": n_test})
    order = np.arange(n_frames) if contiguous else np.random.default_rng(seed).permutation(n_frames)
    a, b, c = n_train, n_train + n_val, n_train + n_val + n_test
    return Split(_frozen(order[:a]), _frozen(order[a:b]), _frozen(order[b:c]))


def _sklearn_shuffle_split(indices: np.ndarray, n_train: int, n_test: int, seed: int):
    """``sklearn.model_selection.train_test_split(indices, train_size=n_train,
    test_size=n_test, random_state=seed)`` without scikit-learn: ``ShuffleSplit`` draws
    ``RandomState(seed).permutation(n)`` and takes the test part first."""
    permutation = np.random.RandomState(seed).permutation(len(indices))
    test = indices[permutation[:n_test]]
    train = indices[permutation[n_test : n_test + n_train]]
    return train, test


def authors_split(
    n_frames: int,
    *,
    n_train: int,
    n_val: int,
    n_test: int,
    seed: int = 123,
    contiguous: bool = False,
) -> Split:
    """The split scheme of the StABlE/MDsim data scripts, for explicit sizes.

    Random mode: test = the first ``n_test`` entries of ``RandomState(seed).permutation(n_frames)``
    and pool = the rest (``train_test_split(arange(n_frames), train_size=n_frames - n_test,
    test_size=n_test, random_state=seed)``); then train/val come from ``pool[:n_train + n_val]``
    by a second ``train_test_split`` with the same seed (val is the first ``n_val`` of that
    permutation). Contiguous mode: train = ``[0, n_train)``, then val, then test, in time order.

    Returns:
      A :class:`Split` identical to the authors' index arrays.
    """
    _check_counts(n_frames, {"n_train": n_train, "n_val": n_val, "n_test": n_test})
    if contiguous:
        return split_by_counts(
            n_frames, n_train=n_train, n_val=n_val, n_test=n_test, contiguous=True
        )
    pool, test = _sklearn_shuffle_split(
        np.arange(n_frames), n_train=n_frames - n_test, n_test=n_test, seed=seed
    )
    train, val = _sklearn_shuffle_split(
        pool[: n_train + n_val], n_train=n_train, n_test=n_val, seed=seed
    )
    return Split(_frozen(train), _frozen(val), _frozen(test))


def md17_split(
    n_frames: int,
    size: int = 1000,
    *,
    n_test: int = 10_000,
    seed: int = 123,
    contiguous: bool = False,
) -> Split:
    """StABlE-Training ``data/md17.py`` (and ``data/water.py``): sizes for a train+val pool.

    ``n_train = int(0.95 * size)``, ``n_val = int(0.05 * size)`` (950/50 for "1k"), ``n_test``
    10,000, scheme of :func:`authors_split` with seed 123. MD17 aspirin has 211,762 frames; MDsim
    water 100,001.

    Args:
      n_frames: frames in the full trajectory.
      size: 1,000 ("1k"), 10,000 ("10k"), 50,000 or 90,000.
      n_test: test-set size.
      seed: ``random_state`` (123).
      contiguous: the authors' ``--contiguous`` time-ordered blocks.
    """
    return authors_split(
        n_frames,
        n_train=int(0.95 * size),
        n_val=int(0.05 * size),
        n_test=n_test,
        seed=seed,
        contiguous=contiguous,
    )


def md22_split(
    n_frames: int, fraction: float = 1.0, *, seed: int = 123, contiguous: bool = False
) -> Split:
    """StABlE-Training ``data/md22.py``: 70/10/20% of ``fraction * n_frames``.

    ``n_train = int(n_frames * 0.7 * fraction)``, ``n_val = int(n_frames * 0.1 * fraction)``,
    ``n_test = int(n_frames * fraction) - n_train - n_val``; scheme of :func:`authors_split`.
    ``fraction`` is 1.0, 0.5, 0.25, 0.1 or 0.05 ("100percent", ..., "5percent").
    """
    n_train = int(n_frames * 0.7 * fraction)
    n_val = int(n_frames * 0.1 * fraction)
    n_test = int(n_frames * fraction) - n_train - n_val
    return authors_split(
        n_frames, n_train=n_train, n_val=n_val, n_test=n_test, seed=seed, contiguous=contiguous
    )
