"""Observable losses of recorded MD trajectories, differentiated with the Boltzmann estimators.

The learning phase of :mod:`stabie_jax.stabie` turns the frames it recorded into one loss whose
gradient with respect to the parameters is the estimator's (no differentiation through the
simulation):

* :func:`global_observable_loss` — ``L_obs = ‖⟨g⟩ − g_ref‖²`` (summed over the components of g)
  with the global estimator over whole-system frames (aspirin, Ac-Ala3-NHMe: h(r));
* :func:`local_observable_loss` — the localized estimator over per-molecule neighbourhoods
  (water: O–H bond lengths), with deviation-balanced neighbourhood sampling;
* :func:`trajectory_samples` — frames and validity mask (frozen replicas, non-finite frames
  are masked out); :func:`sample_order` — the shuffle that cuts samples into minibatches.

Both losses take two choices:

* ``reduction``: ``"sum"`` (default, ``‖⟨g⟩ − g_ref‖²``) or ``"mean"`` over components;
* ``vjp``: ``"global"`` (default) differentiates ``ℓ(⟨g⟩)`` of the mean over all samples, the
  vector ``2(⟨g⟩ − g_ref)`` being shared by every minibatch estimator; ``"per_batch"`` is the
  authors' form: the loss is ``Σ_b w_b ℓ(ḡ_b)`` over minibatch means (weights ∝ valid samples),
  so minibatch b's estimator is contracted with its own ``2(ḡ_b − g_ref)``. The reported
  ``aux["observable"]`` is the mean over all samples in both cases.

Minibatches: valid samples are shuffled with ``key`` (frames of one replica are time-ordered and
correlated) and packed first, as the authors drop invalid states before batching, so every
minibatch but the last is full.

Each returns ``loss_fn(params, trajectory, key) -> (loss, aux)`` for
:class:`stabie_jax.stabie.StabieProblem`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from stabie_jax.estimator import boltzmann_batch_means, boltzmann_expectation
from stabie_jax.localized_estimator import (
    localized_batch_means,
    localized_expectation,
    neighbourhood_bond_lengths,
    neighbourhood_max_deviation,
    select_neighbourhoods,
)
from stabie_jax.losses import OBSERVABLE_REDUCTIONS, observable_loss
from stabie_jax.md import Trajectory

__all__ = [
    "VJP_FORMS",
    "global_observable_loss",
    "local_observable_loss",
    "sample_order",
    "trajectory_samples",
]

VJP_FORMS = ("global", "per_batch")


def _check_choices(reduction: str, vjp: str) -> None:
    if reduction not in OBSERVABLE_REDUCTIONS:
        raise ValueError(f"reduction must be one of {OBSERVABLE_REDUCTIONS}, got {reduction!r}")
    if vjp not in VJP_FORMS:
        raise ValueError(f"vjp must be one of {VJP_FORMS}, got {vjp!r}")


def sample_order(key: jax.Array, mask: jax.Array) -> jax.Array:
    """``[N]`` int: a random permutation of the samples with the valid ones first.

    Args:
      key: PRNG key.
      mask: ``[N]`` bool, valid samples.
    """
    order = jax.random.permutation(key, mask.shape[0])
    return order[jnp.argsort(~mask[order], stable=True)]


def _reduce(value, g_ref, reduction: str, vjp: str):
    """``(loss, ⟨g⟩ over all samples)`` from the expectation's output."""
    if vjp == "global":
        return observable_loss(value, g_ref.astype(value.dtype), reduction=reduction), value
    means, weights = value
    per_batch = observable_loss(means, g_ref.astype(means.dtype), reduction=reduction)
    weights = weights.astype(means.dtype)
    return jnp.sum(weights * per_batch), jnp.tensordot(weights, means, axes=1)


def trajectory_samples(trajectory: Trajectory) -> tuple[jax.Array, jax.Array]:
    """Flatten a trajectory into estimator samples.

    Returns:
      ``(positions [F·R, N, 3], mask [F·R])``; the mask is False for frames of frozen replicas
      and for frames with non-finite positions or (when recorded) potential energy.
    """
    positions = trajectory.positions.reshape((-1,) + trajectory.positions.shape[2:])
    finite = jnp.all(jnp.isfinite(positions), axis=(-2, -1))
    if trajectory.potential_energy is not None:
        finite = finite & jnp.isfinite(trajectory.potential_energy.reshape(-1))
    return positions, trajectory.alive.reshape(-1) & finite


def global_observable_loss(
    energy_fn: Callable,
    observable_fn: Callable,
    observable_ref,
    kT: float,
    *,
    batch_size: int | None = None,
    reduction: str = "sum",
    vjp: str = "global",
    chunk_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> Callable:
    """``L_obs = ‖⟨g⟩ − g_ref‖²`` over all recorded frames with the global estimator.

    Args:
      energy_fn: ``(params, positions [N,3]) -> eV``.
      observable_fn: ``(positions [N,3]) -> [n_obs]`` (e.g. h(r)).
      observable_ref: ``[n_obs]`` reference.
      kT: eV, the simulation's thermal energy.
      batch_size: minibatch size ``B`` of the estimator (paper: 40); samples are shuffled with
        the key before being cut into minibatches (:func:`sample_order`), as the authors do.
      reduction: ``"sum"`` over components (default) or ``"mean"`` (module docstring).
      vjp: ``"global"`` (default) or ``"per_batch"`` (the authors'; module docstring).
      chunk_size, mesh: how the estimator's backward pass is laid out (frames per chunk; the
        devices it is split over), :func:`stabie_jax.estimator.boltzmann_expectation`. They
        change the result only by round-off.

    Returns:
      ``(params, trajectory, key, log_weights=None) -> (loss, {"observable": ⟨g⟩,
      "n_samples": ...})``; ``log_weights`` ``[F·R]`` (frame-major, as
      :func:`trajectory_samples`) reweight the frames (the reweighted estimator,
      :mod:`stabie_jax.estimator`).
    """
    _check_choices(reduction, vjp)
    build = boltzmann_expectation if vjp == "global" else boltzmann_batch_means
    expectation = build(
        energy_fn, observable_fn, kT, batch_size=batch_size, chunk_size=chunk_size, mesh=mesh
    )
    g_ref = jnp.asarray(observable_ref)

    def loss_fn(params, trajectory: Trajectory, key, log_weights=None):
        positions, mask = trajectory_samples(trajectory)
        order = sample_order(key, mask)
        lw = None if log_weights is None else jnp.asarray(log_weights)[order]
        value = expectation(params, positions[order], mask[order], lw)
        loss, mean = _reduce(value, g_ref, reduction, vjp)
        return loss, {"observable": mean, "n_samples": jnp.sum(mask)}

    return loss_fn


def local_observable_loss(
    per_atom_energy_fn: Callable,
    neighbourhoods,
    observable_ref,
    kT: float,
    *,
    bond_equilibrium,
    displacement_fn: Callable | None = None,
    batch_size: int | None = None,
    n_bins: int = 100,
    per_bin: int = 5,
    overflow_fn: Callable | None = None,
    reduction: str = "sum",
    vjp: str = "global",
    chunk_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> Callable:
    """Localized ``L_obs = ‖⟨g⟩ − g_ref‖²`` for water: per-molecule O–H bond lengths.

    Every molecule of every recorded frame is a candidate neighbourhood; candidates are binned
    by their max |r_OH − r_eq| into ``n_bins`` equal bins and up to ``per_bin`` are drawn per bin
    (seeded); the estimator's energy of a sample is the sum of its three atoms' energies. The
    selected samples are shuffled (:func:`sample_order`) before being cut into minibatches.

    Args:
      per_atom_energy_fn: ``(params, positions [N,3]) -> [N]`` eV (close over a neighbour list
        for periodic systems).
      neighbourhoods: ``[M, 3]`` atom indices (O, H, H) of each molecule.
      observable_ref: ``[2]`` Å, reference mean O–H lengths.
      kT: eV.
      bond_equilibrium: Å, reference length(s) used for the deviation binning: a scalar or one
        per component ``[k - 1]`` (water: the two mean O–H lengths).
      displacement_fn: minimum-image displacement (periodic) or None.
      batch_size: estimator minibatch size (paper: 4).
      n_bins, per_bin: balancing (paper: 100 bins, 5 per bin; authors: 5·R).
      overflow_fn: optional ``frames [F, N, 3] -> bool``, True when the neighbour list that
        ``per_atom_energy_fn`` closes over overflowed on some frame; reported as
        ``aux["overflow"]`` and the driver then skips the step.
      reduction: ``"sum"`` over the components (default) or ``"mean"``.
      vjp: ``"global"`` (default) or ``"per_batch"`` (the authors').
      chunk_size, mesh: layout of the estimator's backward pass over the frames (chunks of
        this many frames; split over the mesh's devices), as
        :func:`stabie_jax.localized_estimator.localized_expectation`; the value is the same.

    Returns:
      ``(params, trajectory, key, log_weights=None) -> (loss, aux)``; ``log_weights``
      ``[F·R]`` per frame (as :func:`trajectory_samples`), given to each neighbourhood of the
      frame.
    """
    atoms = jnp.asarray(np.asarray(neighbourhoods), jnp.int32)
    g_ref = jnp.asarray(observable_ref)

    def sample_observable(sample):
        return neighbourhood_bond_lengths(sample.positions, sample.atoms, displacement_fn)

    _check_choices(reduction, vjp)
    build = localized_expectation if vjp == "global" else localized_batch_means
    expectation = build(
        per_atom_energy_fn,
        sample_observable,
        kT,
        batch_size=batch_size,
        chunk_size=chunk_size,
        mesh=mesh,
    )

    def loss_fn(params, trajectory: Trajectory, key, log_weights=None):
        frames, frame_ok = trajectory_samples(trajectory)
        safe = jnp.where(frame_ok[:, None, None], frames, frames[jnp.argmax(frame_ok)])
        deviation = neighbourhood_max_deviation(safe, atoms, bond_equilibrium, displacement_fn)
        valid = jnp.broadcast_to(frame_ok[:, None], deviation.shape)
        k_select, k_order = jax.random.split(key)
        chosen = select_neighbourhoods(
            k_select, deviation, n_bins=n_bins, per_bin=per_bin, valid=valid
        )
        order = sample_order(k_order, chosen.mask)
        frame_index = chosen.frame_index[order]
        lw = None if log_weights is None else jnp.asarray(log_weights)[frame_index]
        value = expectation(
            params,
            frames,
            frame_index,
            atoms[chosen.neighbourhood_index[order]],
            chosen.mask[order],
            lw,
        )
        loss, mean = _reduce(value, g_ref, reduction, vjp)
        aux = {"observable": mean, "n_samples": jnp.sum(chosen.mask)}
        if overflow_fn is not None:
            aux["overflow"] = overflow_fn(jnp.where(frame_ok[:, None, None], frames, safe))
        return loss, aux

    return loss_fn
