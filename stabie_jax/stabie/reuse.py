"""Sample reuse: further optimizer steps on the same recorded frames, Boltzmann-reweighted to the
new parameters while Kish's effective sample size stays above a threshold."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stabie_jax import reweighting
from stabie_jax._estimator_core import _guard
from stabie_jax.md import Trajectory
from stabie_jax.stabie.state import StabieProblem, StabieSettings
from stabie_jax.trajectory_losses import trajectory_samples

__all__ = [
    "ReuseResult",
    "make_frame_energies",
    "reuse_samples",
]


def make_frame_energies(problem: StabieProblem, chunk_size: int = 64) -> Callable:
    """Jitted ``(params, trajectory) -> ([F·R] eV, [F·R] bool)``: ``U_θ`` of every recorded frame
    (frame-major, as :func:`stabie_jax.trajectory_losses.trajectory_samples`) and the frames'
    validity; ``lax.map`` over chunks of ``chunk_size`` frames."""
    if problem.energy_fn is None:
        raise ValueError(
            "sample reuse (StabieSettings.reuse_min_neff > 0) needs StabieProblem.energy_fn, "
            "the potential (params, positions [N, 3]) -> eV that the estimator differentiates"
        )

    def energies(params, trajectory):
        positions, mask = trajectory_samples(trajectory)
        safe = _guard(positions, mask)  # excluded frames never reach energy_fn
        e = jax.lax.map(lambda x: problem.energy_fn(params, x), safe, batch_size=chunk_size)
        return jnp.where(mask, e, jnp.nan), mask & jnp.isfinite(e)

    return jax.jit(energies)


class ReuseResult(NamedTuple):
    """Extra optimizer steps taken on one simulation's frames (:func:`reuse_samples`).

    Attributes:
      params, opt_state: after the last applied step.
      steps: number of applied extra steps.
      end: why reuse stopped: ``"n_eff"`` (``N_eff/N`` below the threshold),
        ``"max_reuse_steps"``, ``"optimizer-step budget"`` or ``"skipped: <reason>"``.
      n_eff_fraction: Kish ``N_eff/N`` at each check, ``[steps + 1]`` or ``[steps]`` (the
        last one is the failing check when ``end == "n_eff"``).
      obs_loss, qm_loss, update_norm: per applied step (reweighted ``L_obs``, exact ``L_QM``).
    """

    params: Any
    opt_state: Any
    steps: int
    end: str
    n_eff_fraction: list
    obs_loss: list
    qm_loss: list
    update_norm: list


def reuse_samples(
    learning_step: Callable,
    frame_energies: Callable,
    settings: StabieSettings,
    kT: float,
    sampled_params,
    params,
    opt_state,
    trajectory: Trajectory,
    key,
    learning_rate: float,
    max_steps: int,
) -> ReuseResult:
    """Take up to ``max_steps`` further steps on frames sampled at ``sampled_params``.

    Before each step the frames are reweighted to the current parameters θ′,
    ``ℓ_i = −(U_θ′(x_i) − U_θ(x_i))/kT`` (:func:`stabie_jax.reweighting.parameter_log_weights`,
    both energies from ``frame_energies``); the step is taken with those weights (the
    reweighted Boltzmann estimator) while Kish's ``N_eff/N_valid >= settings.reuse_min_neff``.
    """
    u0, valid = frame_energies(sampled_params, trajectory)
    n_valid = max(int(np.asarray(valid).sum()), 1)
    out = dict(n_eff_fraction=[], obs_loss=[], qm_loss=[], update_norm=[])
    end, steps = "max_reuse_steps", 0
    for j in range(max_steps):
        u, ok = frame_energies(params, trajectory)
        log_w = reweighting.parameter_log_weights(u, u0, kT, valid & ok)
        fraction = float(reweighting.kish_effective_sample_size(log_w)) / n_valid
        out["n_eff_fraction"].append(fraction)
        if fraction < settings.reuse_min_neff:
            end = "n_eff"
            break
        result = learning_step(
            params, opt_state, trajectory, jax.random.fold_in(key, j), learning_rate, log_w
        )
        if not result.applied:
            end = f"skipped: {result.skipped}"
            break
        params, opt_state = result.params, result.opt_state
        steps += 1
        out["obs_loss"].append(float(result.metrics["obs_loss"]))
        out["qm_loss"].append(float(result.metrics["qm_loss"]))
        out["update_norm"].append(float(result.metrics["update_norm"]))
    if steps == max_steps and max_steps < settings.max_reuse_steps:
        end = "optimizer-step budget"
    return ReuseResult(params, opt_state, steps, end, **out)
