"""Localized Boltzmann estimator: (frame, neighbourhood) samples with neighbourhood energies.

docs/method.md, Localized estimator. The energy of a neighbourhood γ is the sum of its atoms'
energies, ``U_θ(γ) = Σ_{a∈γ} E_a`` (:func:`local_energy_fn`); a sample is a (frame,
neighbourhood) pair (:class:`LocalSample`, :func:`gather_local_samples`), and the pairs are
chosen by binning a per-neighbourhood deviation (:func:`neighbourhood_max_deviation`,
:func:`select_neighbourhoods`). With these, the generic estimators of
:mod:`stabie_jax.estimator` apply unchanged; :func:`localized_expectation` and
:func:`localized_batch_means` are their memory-flat forms that evaluate each frame's per-atom
energies once, not once per sample. Minibatches, masks and the global-or-per-batch vector
follow :mod:`stabie_jax.estimator` (its module docstring); the private plumbing is shared with
it (:mod:`stabie_jax._estimator_core`).

Water pipeline (docs/paper_settings.md, Water)::

    neigh = molecule_neighbourhoods(atomic_numbers)                      # [64, 3] O, H, H
    dev = neighbourhood_max_deviation(frames, neigh, r0_oh, displacement_fn)   # [F, 64] Å
    sel = select_neighbourhoods(key, dev, n_bins=100, per_bin=5)
    obs = lambda s: neighbourhood_bond_lengths(s.positions, s.atoms, displacement_fn)
    expect = localized_expectation(potential.per_atom_energy_fn, obs, kT, batch_size=4)
    loss = lambda p: jnp.sum(
        (expect(p, frames, sel.frame_index, neigh[sel.neighbourhood_index], sel.mask) - g_ref)
        ** 2
    )
    grads = jax.grad(loss)(params)

Units: positions and lengths in Å, energies and ``kT`` in eV.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stabie_jax._estimator_core import (
    _batch_coefficients,
    _batch_weights,
    _estimate_value,
    _guard,
    _map,
    _resolve_mask,
    _sample_coefficients,
    _sample_weights,
    _weighted_energy_grad,
)
from stabie_jax.data import bonds as bond_graph
from stabie_jax.observables.functions import neighbourhood_bond_lengths

__all__ = [
    "LocalSample",
    "NeighbourhoodSelection",
    "gather_local_samples",
    "local_energy_fn",
    "localized_batch_means",
    "localized_expectation",
    "molecule_neighbourhoods",
    "neighbourhoods_from_bonds",
    "neighbourhood_bond_lengths",
    "neighbourhood_max_deviation",
    "select_neighbourhoods",
]


class LocalSample(NamedTuple):
    """One (frame, neighbourhood) sample of the localized estimator (leading ``[M]`` if batched).

    Attributes:
      positions: ``[n_atoms, 3]`` Å, the whole frame the neighbourhood lives in.
      atoms: ``[atoms_per_neighbourhood]`` int, indices of the neighbourhood's atoms (for water:
        O, H, H).
    """

    positions: jax.Array
    atoms: jax.Array


def local_energy_fn(per_atom_energy_fn: Callable) -> Callable:
    """Neighbourhood energy ``U_θ(γ) = Σ_{a∈γ} E_a`` as an ``energy_fn`` for the estimators.

    Args:
      per_atom_energy_fn: ``(params, positions [n_atoms, 3]) -> [n_atoms]`` eV, e.g.
        ``Potential.per_atom_energy_fn`` (wrap a neighbour-list variant in a closure).

    Returns:
      ``(params, sample: LocalSample) -> scalar`` eV. With ``atoms = arange(n_atoms)`` it is the
      global energy, so the localized estimator reduces to the global one.
    """

    def energy_fn(params, sample: LocalSample):
        return jnp.sum(per_atom_energy_fn(params, sample.positions)[sample.atoms])

    return energy_fn


def gather_local_samples(frames, frame_index, atoms) -> LocalSample:
    """Stack (frame, neighbourhood) pairs into samples for the generic estimators.

    Args:
      frames: ``[F, n_atoms, 3]`` Å.
      frame_index: ``[M]`` int, the frame of each sample.
      atoms: ``[M, atoms_per_neighbourhood]`` int, each sample's atom indices.

    Returns:
      :class:`LocalSample` with positions ``[M, n_atoms, 3]`` (a copy of each sample's frame) and
      atoms ``[M, k]``. :func:`localized_expectation` avoids these copies and evaluates each
      frame once.
    """
    frames = jnp.asarray(frames)
    return LocalSample(frames[jnp.asarray(frame_index)], jnp.asarray(atoms))


def molecule_neighbourhoods(atomic_numbers, pattern=(8, 1, 1)) -> np.ndarray:
    """Neighbourhoods = molecules stored contiguously, e.g. water as O, H, H, O, H, H, ...

    Args:
      atomic_numbers: ``[n_atoms]`` int.
      pattern: atomic numbers of one molecule in storage order (default water O, H, H).

    Returns:
      ``[n_molecules, len(pattern)]`` int atom indices (host numpy).

    Raises:
      ValueError: if the atoms are not the pattern repeated (then build the index array from
        your topology instead).
    """
    z = np.asarray(atomic_numbers).reshape(-1)
    k = len(pattern)
    if z.size % k or not np.array_equal(z.reshape(-1, k), np.tile(pattern, (z.size // k, 1))):
        raise ValueError(
            f"atomic_numbers are not the molecule pattern {tuple(pattern)} repeated; pass an "
            "explicit [n_molecules, atoms_per_molecule] index array built from the topology"
        )
    return np.arange(z.size).reshape(-1, k)


def neighbourhoods_from_bonds(atomic_numbers, bonds) -> np.ndarray:
    """Molecules of a covalent bond graph as neighbourhoods, centre atom first, in any storage
    order (e.g. water stored H, O, H or all oxygens first).

    Within a molecule the centre is the atom with the most bonds (ties: the heavier, then the
    lower index); the other atoms follow by decreasing atomic number, then index. The
    neighbourhood's observable (:func:`neighbourhood_bond_lengths`) is then the distances from
    the centre to each other atom: the bond lengths of a molecule with one central atom (H2O,
    NH3, CH4, CO2), and for other molecules the centre's bonds plus fixed intramolecular
    distances.

    Args:
      atomic_numbers: ``[N]`` int.
      bonds: ``[B, 2]`` int atom pairs (e.g. ``stabie_jax.data.find_bonds(...).bonds``).

    Returns:
      ``[n_molecules, k]`` int atom indices (host numpy), molecules by their lowest atom index;
      for water stored O, H, H, ... the same array as :func:`molecule_neighbourhoods`.

    Raises:
      ValueError: if the molecules differ in size or composition (the observable's components
        must mean the same in every molecule), or have a single atom.
    """
    z = np.asarray(atomic_numbers).reshape(-1)
    bonds = np.asarray(bonds, np.int64).reshape(-1, 2)
    degree = np.bincount(bonds.reshape(-1), minlength=z.size)
    members = bond_graph.molecule_members(bond_graph.molecule_labels(z.size, bonds))
    rows, patterns = [], set()
    for atoms in members:
        atoms = atoms[atoms >= 0]
        centre = min(atoms, key=lambda a: (-degree[a], -z[a], a))
        others = sorted((a for a in atoms if a != centre), key=lambda a: (-z[a], a))
        row = [centre, *others]
        rows.append(row)
        patterns.add(tuple(int(z[a]) for a in row))
    if len(patterns) != 1 or len(rows[0]) < 2:
        found = sorted(patterns, key=len)[:4]
        raise ValueError(
            "a localized bond-length observable needs identical molecules of at least two atoms; "
            f"the bond graph gives {len(rows)} molecules with atomic-number patterns {found}"
            f"{' ...' if len(patterns) > 4 else ''} (use a global observable such as the RDF "
            "instead, e.g. --config.observable.kind=rdf)"
        )
    return np.asarray(rows, np.int64)


@functools.partial(jax.jit, static_argnames=("displacement_fn",))
def neighbourhood_max_deviation(
    frames, neighbourhoods, reference_length, displacement_fn: Callable | None = None
):
    """Max bond-length deviation of every neighbourhood of every frame (water: max |r_OH - r0|).

    Args:
      frames: ``[F, n_atoms, 3]`` Å; frames with non-finite entries (frozen replicas) give
        ``+inf``, which :func:`select_neighbourhoods` excludes.
      neighbourhoods: ``[n_neighbourhoods, k]`` int, centre atom first (e.g.
        :func:`molecule_neighbourhoods`).
      reference_length: equilibrium length(s) r0, Å: scalar or ``[k - 1]``.
      displacement_fn: JAX-MD displacement (minimum image under PBC); None = free space.

    Returns:
      ``[F, n_neighbourhoods]`` Å, ``max_b |r_b - r0_b|``.
    """
    frames = jnp.asarray(frames)
    finite = jnp.all(jnp.isfinite(frames.reshape(frames.shape[0], -1)), axis=1)
    safe = jnp.where(finite[:, None, None], frames, 0.0)
    lengths_fn = lambda x: neighbourhood_bond_lengths(x, neighbourhoods, displacement_fn)
    lengths = jax.vmap(lengths_fn)(safe)
    deviation = jnp.max(jnp.abs(lengths - jnp.asarray(reference_length)), axis=-1)
    return jnp.where(finite[:, None], deviation, jnp.inf)


class NeighbourhoodSelection(NamedTuple):
    """Fixed-size selection of (frame, neighbourhood) pairs; ``[n_bins * per_bin]`` each.

    Attributes:
      frame_index: int, frame of each slot.
      neighbourhood_index: int, neighbourhood (e.g. molecule) of each slot within its frame.
      mask: bool, False for empty slots (bins with fewer than ``per_bin`` candidates).
      bin_index: int, the deviation bin of each slot (slot ``s`` belongs to bin ``s // per_bin``).
    """

    frame_index: jax.Array
    neighbourhood_index: jax.Array
    mask: jax.Array
    bin_index: jax.Array


@functools.partial(jax.jit, static_argnames=("n_bins", "per_bin", "value_range"))
def select_neighbourhoods(
    key: jax.Array,
    deviations,
    *,
    n_bins: int = 100,
    per_bin: int = 5,
    valid=None,
    value_range: tuple[float, float] | None = None,
) -> NeighbourhoodSelection:
    """Balance neighbourhoods by their deviation: equal-width bins, up to ``per_bin`` per bin.

    docs/method.md, Localized estimator (water): each molecule's max O–H bond-length deviation
    goes into one of 100 equal-width bins and a fixed number is drawn from each bin (paper: 5;
    the authors' code 5·R = 40 with R replicas). Bins span ``[min, max]`` of the valid
    deviations unless ``value_range`` is given (values outside it go to the end bins). Within a
    bin the draw is uniform without replacement, seeded by ``key``; bins with fewer candidates
    give all of them and leave masked-out slots.

    Args:
      key: PRNG key.
      deviations: ``[F, n_neighbourhoods]`` Å (e.g. max |r_OH - r_eq| per molecule).
      n_bins: number of equal-width bins.
      per_bin: maximum samples per bin.
      valid: optional ``[F, n_neighbourhoods]`` bool; False (or a non-finite deviation, e.g.
        from a frozen replica) excludes a candidate.
      value_range: optional ``(low, high)`` Å bin range.

    Returns:
      :class:`NeighbourhoodSelection` of static size ``n_bins * per_bin``; pass its ``mask`` to
      the estimators.
    """
    deviations = jnp.asarray(deviations)
    if deviations.ndim != 2:
        raise ValueError(
            f"deviations must be [n_frames, n_neighbourhoods], got shape {deviations.shape}"
        )
    n_per_frame = deviations.shape[1]
    d = deviations.reshape(-1)
    ok = jnp.isfinite(d)
    if valid is not None:
        ok = ok & jnp.asarray(valid, dtype=bool).reshape(-1)
    d = jnp.where(ok, d, 0.0)
    any_ok = jnp.any(ok)
    if value_range is None:
        lo = jnp.where(any_ok, jnp.min(jnp.where(ok, d, jnp.inf)), 0.0)
        hi = jnp.where(any_ok, jnp.max(jnp.where(ok, d, -jnp.inf)), 0.0)
    else:
        lo, hi = (jnp.asarray(v, d.dtype) for v in value_range)
    width = (hi - lo) / n_bins
    width = jnp.where(width > 0, width, 1.0)
    bins = jnp.clip(jnp.floor((d - lo) / width).astype(jnp.int32), 0, n_bins - 1)
    bins = jnp.where(ok, bins, n_bins)

    priority = jax.random.uniform(key, d.shape)
    order = jnp.lexsort((priority, bins))
    sorted_bins = bins[order]
    rank = jnp.arange(d.size) - jnp.searchsorted(sorted_bins, sorted_bins, side="left")
    take = (rank < per_bin) & (sorted_bins < n_bins)
    n_slots = n_bins * per_bin
    slot = jnp.where(take, sorted_bins * per_bin + rank, n_slots)
    chosen = jnp.zeros((n_slots,), jnp.int32).at[slot].set(order.astype(jnp.int32), mode="drop")
    mask = jnp.zeros((n_slots,), bool).at[slot].set(True, mode="drop")
    return NeighbourhoodSelection(
        frame_index=chosen // n_per_frame,
        neighbourhood_index=chosen % n_per_frame,
        mask=mask,
        bin_index=jnp.arange(n_slots) // per_bin,
    )


def localized_expectation(
    per_atom_energy_fn: Callable,
    observable_fn: Callable,
    kT: float,
    *,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> Callable:
    """Memory-flat localized estimator that evaluates each frame once, not once per sample.

    Same value and gradient as :func:`stabie_jax.estimator.boltzmann_expectation` with
    ``energy_fn = local_energy_fn(per_atom_energy_fn)`` on
    ``gather_local_samples(frames, frame_index, atoms)``. Since
    ``Σ_i c_i Σ_{a∈γ_i} E_a(x_{f_i}) = Σ_f Σ_a W_fa E_a(x_f)`` with ``W_fa`` = the sum of the
    ``c_i`` of samples in frame f whose neighbourhood contains atom a, the backward pass is one
    vjp of per-atom energies over the F frames (water: 64 molecules per frame share one pass).

    Args:
      per_atom_energy_fn: ``(params, positions [n_atoms, 3]) -> [n_atoms]`` eV.
      observable_fn: ``(sample: LocalSample) -> [*obs_shape]``, e.g.
        ``lambda s: neighbourhood_bond_lengths(s.positions, s.atoms)``.
      kT: eV.
      batch_size: minibatch size over the M samples (as in
        :func:`stabie_jax.estimator.boltzmann_expectation`).
      chunk_size: if given, the backward pass scans over chunks of this many frames and the
        observables are evaluated in chunks of this many samples.
      mesh: if given (several devices), the backward pass's frames are split over its devices
        and the per-device gradients summed (the same sum; the simulator's mesh).

    Returns:
      A jitted ``(params, frames [F, n_atoms, 3], frame_index [M], atoms [M, k], mask=None,
      log_weights=None) -> ⟨g⟩``; ``log_weights`` ``[M]`` are per-sample importance log
      weights (:mod:`stabie_jax.estimator`, Weighted samples; for reweighting to new
      parameters, the log weight of the sample's frame). Frames referenced by no valid sample
      are never evaluated on their own values (they may hold NaN).
    """

    return _localized(per_atom_energy_fn, observable_fn, kT, batch_size, chunk_size, mesh, False)


def localized_batch_means(
    per_atom_energy_fn: Callable,
    observable_fn: Callable,
    kT: float,
    *,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> Callable:
    """Per-minibatch means of the localized estimator (the authors' form for water).

    :func:`stabie_jax.estimator.boltzmann_batch_means` for (frame, neighbourhood) samples,
    evaluated as :func:`localized_expectation` does (each frame's per-atom energies once;
    ``chunk_size`` and ``mesh`` as there).

    Returns:
      A jitted ``(params, frames [F, n_atoms, 3], frame_index [M], atoms [M, k], mask=None,
      log_weights=None) -> (means [n_batches, *obs_shape], weights [n_batches])``.
    """
    return _localized(per_atom_energy_fn, observable_fn, kT, batch_size, chunk_size, mesh, True)


def _localized(
    per_atom_energy_fn, observable_fn, kT, batch_size, chunk_size, mesh, per_batch: bool
):
    """Shared body of :func:`localized_expectation` and :func:`localized_batch_means`."""

    def weighted_frame_energy(params, frame_and_weights):
        frame, weights = frame_and_weights
        return jnp.sum(weights * per_atom_energy_fn(params, frame))

    def observables(frames, frame_index, atoms):
        sample_fn = lambda fa: observable_fn(LocalSample(frames[fa[0]], fa[1]))
        g = jnp.asarray(_map(sample_fn, (frame_index, atoms), chunk_size))
        return g.reshape(g.shape[0], -1), g.shape[1:]

    def value(g, mask, obs_shape, log_weights):
        w = _sample_weights(mask, log_weights, g.dtype)
        return _estimate_value(g, mask, obs_shape, batch_size, per_batch, w)

    @jax.custom_vjp
    def _value(params, frames, frame_index, atoms, mask, log_weights):
        g, obs_shape = observables(frames, frame_index, atoms)
        return value(g, mask, obs_shape, log_weights)

    def fwd(params, frames, frame_index, atoms, mask, log_weights):
        g, obs_shape = observables(frames, frame_index, atoms)
        out = value(g, mask, obs_shape, log_weights)
        return out, (params, frames, frame_index, atoms, mask, log_weights, g)

    def bwd(residuals, v):
        params, frames, frame_index, atoms, mask, log_weights, g = residuals
        coefficients = _batch_coefficients if per_batch else _sample_coefficients
        w = _sample_weights(mask, log_weights, g.dtype)
        c = coefficients(g, mask, kT, batch_size, v, w)
        n_frames, n_atoms = frames.shape[0], frames.shape[1]
        weights = jnp.zeros((n_frames, n_atoms), c.dtype)
        rows = jnp.broadcast_to(frame_index[:, None], atoms.shape)
        weights = weights.at[rows, atoms].add(jnp.broadcast_to(c[:, None], atoms.shape))
        grad = _weighted_energy_grad(
            weighted_frame_energy,
            params,
            (frames, weights),
            jnp.ones((n_frames,), c.dtype),
            chunk_size,
            mesh,
        )
        d_log_weights = None if log_weights is None else jnp.zeros_like(log_weights)
        return grad, None, None, None, None, d_log_weights

    _value.defvjp(fwd, bwd)

    def expectation(params, frames, frame_index, atoms, mask=None, log_weights=None):
        frames = jnp.asarray(frames)
        frame_index = jnp.asarray(frame_index)
        atoms = jnp.asarray(atoms)
        if frames.ndim != 3 or atoms.ndim != 2 or frame_index.shape != atoms.shape[:1]:
            raise ValueError(
                "expected frames [F, n_atoms, 3], frame_index [M], atoms [M, k]; got "
                f"{frames.shape}, {frame_index.shape}, {atoms.shape}"
            )
        mask = _resolve_mask(mask, atoms.shape[0])
        # Redirect excluded samples to a valid one, then keep only frames some valid sample uses.
        frame_index = _guard(frame_index, mask)
        atoms = _guard(atoms, mask)
        used = jnp.zeros((frames.shape[0],), bool).at[frame_index].max(mask)
        frames = _guard(frames, used)
        out = _value(params, frames, frame_index, atoms, mask, log_weights)
        if not per_batch:
            return out
        w = _sample_weights(mask, log_weights, jnp.result_type(float))
        return out, _batch_weights(mask, atoms.shape[0], batch_size, w)

    return jax.jit(expectation)
