"""Observable losses of recorded MD trajectories, differentiated with the Boltzmann estimators.

The learning phase of :mod:`stabie_jax.stabie` turns the frames it recorded into one loss whose
gradient with respect to the parameters is the estimator's (no differentiation through the
simulation):

* :func:`global_observable_loss` — ``L_obs = mean‖⟨g⟩ − g_ref‖²`` with the global estimator
  over whole-system frames (aspirin, Ac-Ala3-NHMe: h(r));
* :func:`local_observable_loss` — the localized estimator over per-molecule neighbourhoods
  (water: O–H bond lengths), with the deviation-balanced neighbourhood sampling of PAPER.md A.7;
* :func:`trajectory_samples` — frames and validity mask (frozen replicas, non-finite frames
  are masked out).

Each returns ``loss_fn(params, trajectory, key) -> (loss, aux)`` for
:class:`stabie_jax.stabie.StabieProblem`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from stabie_jax.estimator import (
    boltzmann_expectation,
    localized_expectation,
    neighbourhood_bond_lengths,
    neighbourhood_max_deviation,
    select_neighbourhoods,
)
from stabie_jax.losses import observable_loss
from stabie_jax.md import Trajectory

__all__ = ["global_observable_loss", "local_observable_loss", "trajectory_samples"]


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
) -> Callable:
    """``L_obs = mean‖⟨g⟩ − g_ref‖²`` over all recorded frames with the global estimator.

    Args:
      energy_fn: ``(params, positions [N,3]) -> eV``.
      observable_fn: ``(positions [N,3]) -> [n_obs]`` (e.g. h(r)).
      observable_ref: ``[n_obs]`` reference.
      kT: eV, the simulation's thermal energy.
      batch_size: minibatch size ``B`` of the estimator (paper: 40); samples are shuffled with
        the key before being cut into minibatches, as the authors do.

    Returns:
      ``(params, trajectory, key) -> (loss, {"observable": ⟨g⟩, "n_samples": ...})``.
    """
    expectation = boltzmann_expectation(energy_fn, observable_fn, kT, batch_size=batch_size)
    g_ref = jnp.asarray(observable_ref)

    def loss_fn(params, trajectory: Trajectory, key):
        positions, mask = trajectory_samples(trajectory)
        order = jax.random.permutation(key, positions.shape[0])
        mean = expectation(params, positions[order], mask[order])
        loss = observable_loss(mean, g_ref.astype(mean.dtype))
        return loss, {"observable": mean, "n_samples": jnp.sum(mask)}

    return loss_fn


def local_observable_loss(
    per_atom_energy_fn: Callable,
    neighbourhoods,
    observable_ref,
    kT: float,
    *,
    bond_equilibrium: float,
    displacement_fn: Callable | None = None,
    batch_size: int | None = None,
    n_bins: int = 100,
    per_bin: int = 5,
    overflow_fn: Callable | None = None,
) -> Callable:
    """Localized ``L_obs`` for water: per-molecule O–H bond lengths (PAPER.md A.7).

    Every molecule of every recorded frame is a candidate neighbourhood; candidates are binned
    by their max |r_OH − r_eq| into ``n_bins`` equal bins and up to ``per_bin`` are drawn per bin
    (seeded); the estimator's energy of a sample is the sum of its three atoms' energies.

    Args:
      per_atom_energy_fn: ``(params, positions [N,3]) -> [N]`` eV (close over a neighbour list
        for periodic systems).
      neighbourhoods: ``[M, 3]`` atom indices (O, H, H) of each molecule.
      observable_ref: ``[2]`` Å, reference mean O–H lengths.
      kT: eV.
      bond_equilibrium: Å, reference O–H length used for the deviation binning.
      displacement_fn: minimum-image displacement (periodic) or None.
      batch_size: estimator minibatch size (paper: 4).
      n_bins, per_bin: balancing (paper: 100 bins, 5 per bin; authors: 5·R).
      overflow_fn: optional ``frames [F, N, 3] -> bool``, True when the neighbour list that
        ``per_atom_energy_fn`` closes over overflowed on some frame; reported as
        ``aux["overflow"]`` and the driver then skips the step.

    Returns:
      ``(params, trajectory, key) -> (loss, aux)``.
    """
    atoms = jnp.asarray(np.asarray(neighbourhoods), jnp.int32)
    g_ref = jnp.asarray(observable_ref)

    def sample_observable(sample):
        return neighbourhood_bond_lengths(sample.positions, sample.atoms, displacement_fn)

    expectation = localized_expectation(
        per_atom_energy_fn, sample_observable, kT, batch_size=batch_size
    )

    def loss_fn(params, trajectory: Trajectory, key):
        frames, frame_ok = trajectory_samples(trajectory)
        safe = jnp.where(frame_ok[:, None, None], frames, frames[jnp.argmax(frame_ok)])
        deviation = neighbourhood_max_deviation(safe, atoms, bond_equilibrium, displacement_fn)
        valid = jnp.broadcast_to(frame_ok[:, None], deviation.shape)
        chosen = select_neighbourhoods(key, deviation, n_bins=n_bins, per_bin=per_bin, valid=valid)
        mean = expectation(
            params, frames, chosen.frame_index, atoms[chosen.neighbourhood_index], chosen.mask
        )
        loss = observable_loss(mean, g_ref.astype(mean.dtype))
        aux = {"observable": mean, "n_samples": jnp.sum(chosen.mask)}
        if overflow_fn is not None:
            aux["overflow"] = overflow_fn(jnp.where(frame_ok[:, None, None], frames, safe))
        return loss, aux

    return loss_fn
