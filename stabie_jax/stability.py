"""Stability criteria: is a simulated replica still physical?

Each criterion is a pure, jit-able function of positions ``[..., N, 3]`` (Å) with any leading
axes (frames, replicas). It returns ``(stable, value)``: the criterion value per leading index and
a boolean that is False whenever the value crosses the threshold *or is not finite* (a replica
that produced NaN/inf is unstable). Reduce over frames with ``frame_axis`` (the worst frame
decides), e.g. on a :class:`stabie_jax.md.Trajectory` ``[F, R, N, 3]`` use ``frame_axis=0`` to
get per-replica results ``[R]``.

Criteria (docs/method.md, Stability criteria; the authors' thresholds):

* bond-length deviation: ``max_b |d_b − d_b^eq|`` over the molecule's bonds; unstable above
  0.25 Å (training) or 0.5 Å (evaluation);
* minimum intermolecular distance: the smallest distance between atoms of different molecules
  (minimum image); unstable below 1.2 Å (water training);
* RDF-MAE: ``r_max · mean_r |g(r) − g_ref(r)|`` (= 6·mean|Δ| for r_max = 6 Å, bin 0.012 Å),
  computed on the RDF averaged over a window of frames for O–O, O–H and H–H; unstable when any
  of them exceeds 3.0 (water evaluation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from stabie_jax import observables

__all__ = [
    "BOND_DEVIATION_EVAL",
    "BOND_DEVIATION_TRAIN",
    "MIN_INTERMOLECULAR_DISTANCE",
    "RDF_MAE_THRESHOLD",
    "bond_length_deviation",
    "min_intermolecular_distance",
    "rdf_mae",
    "rdf_mae_criterion",
]

BOND_DEVIATION_TRAIN = 0.25
"""Å, training threshold (molecules)."""
BOND_DEVIATION_EVAL = 0.5
"""Å, evaluation threshold (molecules)."""
MIN_INTERMOLECULAR_DISTANCE = 1.2
"""Å, water training threshold."""
RDF_MAE_THRESHOLD = 3.0
"""Water evaluation threshold on the RDF MAE."""


def _reduce_frames(value, frame_axis, worst):
    if frame_axis is None:
        return value
    # NaN-propagating reductions: a single non-finite frame makes the result non-finite.
    return worst(value, axis=frame_axis)


def bond_length_deviation(
    positions,
    bonds,
    equilibrium_lengths,
    threshold: float = BOND_DEVIATION_TRAIN,
    displacement_fn: Callable | None = None,
    frame_axis: int | None = None,
):
    """Maximum bond-length deviation criterion.

    Args:
      positions: ``[..., N, 3]`` Å.
      bonds: ``[B, 2]`` indices (static), e.g. ``stabie_jax.data.find_bonds(...).bonds`` of
        reference frames.
      equilibrium_lengths: ``[B]`` Å (e.g. mean lengths over the training set).
      threshold: Å (0.25 training, 0.5 evaluation).
      displacement_fn: broadcasting displacement (periodic systems).
      frame_axis: axis of ``positions``' leading axes to reduce (max over frames).

    Returns:
      ``(stable, max_deviation)``, each ``[...]`` (without ``frame_axis``); deviation in Å.
    """
    lengths = observables.bond_lengths(positions, bonds, displacement_fn)
    dev = jnp.max(jnp.abs(lengths - jnp.asarray(equilibrium_lengths, lengths.dtype)), axis=-1)
    dev = _reduce_frames(dev, frame_axis, jnp.max)
    return jnp.isfinite(dev) & (dev <= threshold), dev


def min_intermolecular_distance(
    positions,
    molecule_ids,
    threshold: float = MIN_INTERMOLECULAR_DISTANCE,
    box=None,
    frame_axis: int | None = None,
):
    """Minimum distance between atoms of different molecules.

    Args:
      positions: ``[..., N, 3]`` Å.
      molecule_ids: ``[N]`` ints (static), e.g. ``stabie_jax.data.molecule_labels``.
      threshold: Å (1.2 for water).
      box: periodic box for minimum image (``[3]`` side lengths or a ``[3, 3]`` matrix with the
        lattice vectors as columns, Å; ``md.periodic_space(cell).box``), or None (free space).
      frame_axis: axis to reduce (min over frames).

    Returns:
      ``(stable, min_distance)``, each ``[...]``; distance in Å.
    """
    ids = np.asarray(molecule_ids)
    disp = None if box is None else observables.minimum_image_displacement(box)
    d = jnp.sqrt(jnp.sum(observables.pair_displacements(positions, disp) ** 2, axis=-1))
    inter = ids[:, None] != ids[None, :]
    if not inter.any():
        raise ValueError("min_intermolecular_distance: all atoms are in one molecule")
    dmin = jnp.min(jnp.where(inter, d, jnp.inf), axis=(-2, -1))
    # NaN positions give NaN distances, which jnp.where above keeps and jnp.min propagates.
    dmin = _reduce_frames(dmin, frame_axis, jnp.min)
    return jnp.isfinite(dmin) & (dmin >= threshold), dmin


def rdf_mae(g, g_ref, r_max: float = 6.0):
    """``r_max · mean|g − g_ref|`` over bins (the authors' 6·mean|Δ| for r_max = 6 Å)."""
    return r_max * jnp.mean(jnp.abs(g - g_ref), axis=-1)


def rdf_mae_criterion(
    positions,
    species,
    box,
    reference_rdfs: dict[tuple[int, int], jnp.ndarray],
    threshold: float = RDF_MAE_THRESHOLD,
    r_max: float = 6.0,
    frame_axis: int = 0,
    pairs: Sequence[tuple[int, int]] | None = None,
):
    """RDF-MAE criterion on the RDF averaged over a window of frames.

    Args:
      positions: ``[F, ..., N, 3]`` Å, the τ window of frames (averaged over ``frame_axis``).
      species: ``[N]`` (e.g. atomic numbers 8, 1).
      box: ``[3]`` side lengths or ``[3, 3]`` box matrix (lattice vectors as columns), Å.
      reference_rdfs: ``{(a, b): g_ref [n_bins]}``, e.g. O–O, O–H, H–H on the 0.012-Å grid
        (500 bins to 6 Å), from :func:`stabie_jax.observables.rdf` of reference frames.
      threshold: 3.0 in the authors' water evaluation.
      r_max: RDF range, Å.
      frame_axis: the window axis.
      pairs: subset of ``reference_rdfs`` keys (default all).

    Returns:
      ``(stable, max_mae)``, each ``[...]``: worst pair's MAE.
    """
    pairs = list(reference_rdfs) if pairs is None else list(pairs)
    maes = []
    for pair in pairs:
        ref = jnp.asarray(reference_rdfs[pair])
        g = observables.rdf(positions, species, pair, box, r_max=r_max, n_bins=ref.shape[-1])
        maes.append(rdf_mae(jnp.mean(g, axis=frame_axis), ref.astype(g.dtype), r_max))
    worst = jnp.max(jnp.stack(maes, axis=-1), axis=-1)
    # Histograms drop NaN distances silently, so non-finite frames are flagged explicitly.
    finite = jnp.all(jnp.isfinite(positions), axis=(-2, -1))
    worst = jnp.where(jnp.all(finite, axis=frame_axis), worst, jnp.nan)
    return jnp.isfinite(worst) & (worst <= threshold), worst
