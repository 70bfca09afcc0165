"""Tests for stabie_jax.data.splits: disjointness, reproducibility, the authors' recipes."""

from __future__ import annotations

import numpy as np
import pytest

from stabie_jax.data import authors_split, md17_split, md22_split, split_by_counts


def _disjoint(split) -> bool:
    parts = [set(a.tolist()) for a in split]
    return all(not (parts[i] & parts[j]) for i in range(3) for j in range(i + 1, 3))


def test_split_by_counts_random():
    a = split_by_counts(5000, n_train=1000, n_val=50, n_test=1000, seed=7)
    b = split_by_counts(5000, n_train=1000, n_val=50, n_test=1000, seed=7)
    c = split_by_counts(5000, n_train=1000, n_val=50, n_test=1000, seed=8)
    assert [len(x) for x in a] == [1000, 50, 1000]
    assert _disjoint(a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a.train, c.train)
    assert a.train.dtype == np.int64 and not a.train.flags.writeable
    assert 0 <= a.train.min() and a.test.max() < 5000
    # A random split is not time ordered: train indices span the whole trajectory.
    assert a.train.max() - a.train.min() > 4000


def test_split_by_counts_contiguous():
    s = split_by_counts(100, n_train=10, n_val=5, n_test=20, contiguous=True)
    np.testing.assert_array_equal(s.train, np.arange(10))
    np.testing.assert_array_equal(s.val, np.arange(10, 15))
    np.testing.assert_array_equal(s.test, np.arange(15, 35))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_train=60, n_val=30, n_test=20), "only 100 exist"),
        (dict(n_train=-1), "n_train=-1"),
        (dict(n_train=1.5), "n_train=1.5"),
    ],
)
def test_split_by_counts_rejects_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        split_by_counts(100, **kwargs)


def test_md17_split_matches_scikit_learn_values():
    # Expected values computed with scikit-learn 1.x train_test_split(random_state=123) exactly as
    # in StABlE-Training data/md17.py (2026-11-25); the implementation does not use sklearn.
    s = md17_split(211_762, 1000)
    assert [len(x) for x in s] == [950, 50, 10_000] and _disjoint(s)
    assert s.test[:6].tolist() == [120426, 159361, 87224, 45316, 63268, 69104]
    assert s.train[:6].tolist() == [127637, 10541, 10658, 10697, 6212, 94988]
    assert s.val[:6].tolist() == [208437, 154058, 35132, 146673, 109109, 150029]


def test_md22_split_matches_checkpoint_size_and_sklearn():
    s = md22_split(85_109, 0.25)
    assert len(s.train) == 14_894  # n_train of the authors' NequIP Ac-Ala3 checkpoint
    assert [len(x) for x in s] == [14_894, 2127, 4256] and _disjoint(s)
    assert s.test[:6].tolist() == [73862, 29323, 46470, 31773, 54226, 6531]
    assert s.train[:6].tolist() == [41706, 17572, 60908, 73573, 81017, 32575]
    assert s.val[:6].tolist() == [63393, 15343, 43974, 17257, 80649, 49386]


def test_authors_split_against_sklearn_if_installed():
    model_selection = pytest.importorskip("sklearn.model_selection")
    n = 3000
    pool, test = model_selection.train_test_split(
        np.arange(n), train_size=n - 500, test_size=500, random_state=123
    )
    train, val = model_selection.train_test_split(
        pool[:300], train_size=250, test_size=50, random_state=123
    )
    s = authors_split(n, n_train=250, n_val=50, n_test=500)
    np.testing.assert_array_equal(s.train, train)
    np.testing.assert_array_equal(s.val, val)
    np.testing.assert_array_equal(s.test, test)


def test_authors_split_contiguous():
    s = md17_split(100_001, 1000, contiguous=True)
    np.testing.assert_array_equal(s.train, np.arange(950))
    np.testing.assert_array_equal(s.val, np.arange(950, 1000))
    np.testing.assert_array_equal(s.test, np.arange(1000, 11_000))
