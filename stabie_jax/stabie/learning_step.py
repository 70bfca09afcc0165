"""One optimizer step of StABlE: the gradient of ``L_obs + λ·L_QM`` (observable term from the
Boltzmann estimator over recorded frames), its diagnostics (norms, shares, cosine, the
split-half cosine of the estimator's noise) and the clipped update."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stabie_jax.stabie.state import StabieProblem, StabieSettings

__all__ = [
    "LearningStep",
    "make_gradient_fn",
    "make_learning_step",
    "make_optimizer",
    "make_split_cosine_fn",
    "random_half",
]


def make_optimizer(settings: StabieSettings) -> optax.GradientTransformation:
    """SGD (the authors' optimizer) after global-norm clipping, learning rate injectable.

    With ``settings.grad_clip_scope == "each_term"`` the optimizer does not clip: the two
    terms were clipped by :func:`make_gradient_fn` before they were added.
    """

    def build(learning_rate):
        parts = []
        if settings.grad_clip_norm is not None and settings.grad_clip_scope == "sum":
            parts.append(optax.clip_by_global_norm(settings.grad_clip_norm))
        parts.append(optax.sgd(learning_rate))
        return optax.chain(*parts)

    return optax.inject_hyperparams(build)(learning_rate=settings.learning_rate)


def _with_learning_rate(opt_state, learning_rate: float):
    hyper = dict(opt_state.hyperparams)
    hyper["learning_rate"] = jnp.asarray(learning_rate, jnp.asarray(hyper["learning_rate"]).dtype)
    return opt_state._replace(hyperparams=hyper)


def _clip_to(tree, max_norm: float):
    """``tree`` scaled to global norm ``max_norm`` when it is longer: the same
    ``optax.clip_by_global_norm`` that clips the sum with ``grad_clip_scope == "sum"``."""
    clip = optax.clip_by_global_norm(max_norm)
    return clip.update(tree, clip.init(tree))[0]


def make_gradient_fn(
    problem: StabieProblem,
    qm_weight: float,
    clip_each_term: float | None = None,
    qm_clip_fraction: float = 1.0,
    project_conflict: bool = False,
) -> Callable:
    """Jitted ``(params, trajectory, key, log_weights=None) -> (grads, metrics)`` of
    ``L_obs + λ·L_QM`` (``log_weights``: the frames' reweighting, passed to the observable loss).

    The two gradients are taken separately (``key`` split into the observable loss's key and the
    QM loss's) and added, so the metrics can say what each contributes: ``obs_grad_norm``,
    ``qm_grad_norm`` (of ``λ·∇L_QM``), ``grad_norm`` (of the sum), ``obs_share`` (the
    observable gradient's projection on the sum, ``⟨g_obs, g⟩/‖g‖²``; the QM share is
    ``1 − obs_share``) and ``grad_cosine`` (between the two terms; 0 when either vanishes).

    ``clip_each_term``: when given, ``∇L_obs`` and ``λ·∇L_QM`` are each clipped to this global
    norm before they are added (``StabieSettings.grad_clip_scope == "each_term"``; the QM term
    to ``qm_clip_fraction`` of it); the
    returned ``grads`` are then that sum, ``obs_grad_norm`` and ``qm_grad_norm`` stay the
    unclipped norms and ``grad_norm`` and ``obs_share`` are those of the clipped sum. Without
    it, a later global clip scales both terms alike, so the shares are also those of the
    applied update either way.

    ``project_conflict``: when the two terms conflict (``⟨g_obs, g_qm⟩ < 0``, with
    ``g_qm = λ·∇L_QM``), ``g_obs`` first loses its component along ``g_qm``,
    ``g_obs ← g_obs − ⟨g_obs, g_qm⟩/‖g_qm‖² · g_qm`` (gradient projection as in PCGrad,
    Yu et al. 2020), so that to first order the observable term no longer raises ``L_QM``;
    before any clip. Logged as ``obs_projected`` (1 when the projection acted) and
    ``obs_removed_fraction`` (``‖removed component‖/‖g_obs‖ = −cos``, 0 when it did not act).
    """
    use_qm = problem.qm_loss_fn is not None and bool(qm_weight)

    def gradient_fn(params, trajectory, key, log_weights=None):
        k_obs, k_qm = jax.random.split(key)
        extra = () if log_weights is None else (log_weights,)
        (obs_loss, aux), g_obs = jax.value_and_grad(problem.observable_loss_fn, has_aux=True)(
            params, trajectory, k_obs, *extra
        )
        if use_qm:
            qm, g_qm = jax.value_and_grad(problem.qm_loss_fn)(params, k_qm)
            g_qm = jax.tree.map(lambda g: qm_weight * g, g_qm)
        else:
            qm = jnp.zeros((), obs_loss.dtype)
            g_qm = jax.tree.map(jnp.zeros_like, g_obs)
        n_obs, n_qm = optax.tree.norm(g_obs), optax.tree.norm(g_qm)
        tiny = jnp.finfo(n_obs.dtype).tiny
        inner = optax.tree.vdot(g_obs, g_qm)
        cosine = jnp.where(  # of the unclipped terms (clipping only rescales them)
            (n_obs > 0) & (n_qm > 0), inner / jnp.maximum(n_obs * n_qm, tiny), 0.0
        )
        projection = {}
        if project_conflict and use_qm:
            acts = (inner < 0) & (n_qm > 0)
            scale = jnp.where(acts, inner / jnp.maximum(n_qm**2, tiny), 0.0)
            g_obs = jax.tree.map(lambda a, b: a - scale.astype(a.dtype) * b, g_obs, g_qm)
            projection = {
                "obs_projected": acts.astype(n_obs.dtype),
                "obs_removed_fraction": jnp.where(acts, -cosine, 0.0),
            }
        if clip_each_term is not None:
            g_obs = _clip_to(g_obs, clip_each_term)
            g_qm = _clip_to(g_qm, clip_each_term * qm_clip_fraction)
        grads = jax.tree.map(jnp.add, g_obs, g_qm)
        n_all = optax.tree.norm(grads)
        metrics = {
            **aux,
            "obs_loss": obs_loss,
            "qm_loss": qm,
            "loss": obs_loss + qm_weight * qm,
            "obs_grad_norm": n_obs,
            "qm_grad_norm": n_qm,
            "grad_norm": n_all,
            "obs_share": jnp.where(
                n_all > 0, optax.tree.vdot(g_obs, grads) / jnp.maximum(n_all**2, tiny), 0.0
            ),
            "grad_cosine": cosine,
            **projection,
        }
        return grads, metrics

    return jax.jit(gradient_fn)


def make_split_cosine_fn(problem: StabieProblem) -> Callable:
    """Jitted ``(params, trajectory, key, half [R] bool) -> dict``: the observable gradient on
    the replicas in ``half`` and on the others, and how well they agree.

    If the estimated gradient were exact the two halves would point the same way (cosine 1);
    when the estimator's noise dominates, their cosine is near 0. For a gradient ``G`` and
    independent noise of variance ``σ²/n`` per half, ``E[cos] ≈ ‖G‖²/(‖G‖² + σ²/n)``, so a
    cosine ``c`` says the full-sample gradient's noise is about ``(1 − c)/(2c)`` of its signal
    power. Returns ``obs_split_cosine``, ``obs_split_loss_a``, ``obs_split_loss_b`` and the two
    norms ``obs_split_norm_a``, ``obs_split_norm_b`` (in the units of the plain gradient).
    """

    def grad_on(params, trajectory, key, keep):
        masked = trajectory._replace(alive=trajectory.alive & keep[None, :])
        (loss, _), g = jax.value_and_grad(problem.observable_loss_fn, has_aux=True)(
            params, masked, key
        )
        return loss, g

    def split_cosine(params, trajectory, key, half):
        k_a, k_b = jax.random.split(key)
        loss_a, g_a = grad_on(params, trajectory, k_a, half)
        loss_b, g_b = grad_on(params, trajectory, k_b, ~half)
        n_a, n_b = optax.tree.norm(g_a), optax.tree.norm(g_b)
        tiny = jnp.finfo(n_a.dtype).tiny
        cosine = jnp.where(
            (n_a > 0) & (n_b > 0), optax.tree.vdot(g_a, g_b) / jnp.maximum(n_a * n_b, tiny), 0.0
        )
        return {
            "obs_split_cosine": cosine,
            "obs_split_loss_a": loss_a,
            "obs_split_loss_b": loss_b,
            "obs_split_norm_a": n_a,
            "obs_split_norm_b": n_b,
        }

    return jax.jit(split_cosine)


def random_half(key, n_replicas: int) -> jax.Array:
    """``[R]`` bool: a random half of the replicas (``R // 2`` of them) True."""
    return jax.random.permutation(key, n_replicas) < n_replicas // 2


class LearningStep(NamedTuple):
    """Result of :func:`make_learning_step`'s function.

    Attributes:
      params, opt_state: after the step (unchanged when it was not applied).
      metrics: host dict: the gradient metrics of :func:`make_gradient_fn` (norms multiplied by
        ``settings.gradient_scale``), ``update_norm`` (‖Δθ‖ of the applied step, 0 if skipped).
      applied: False when the step was skipped.
      skipped: why it was skipped (estimator overflow, fewer than 2 valid samples, non-finite
        loss or gradient), "" when applied.
    """

    params: Any
    opt_state: Any
    metrics: dict
    applied: bool
    skipped: str = ""


def make_learning_step(problem: StabieProblem, settings: StabieSettings) -> Callable:
    """``(params, opt_state, trajectory, key, learning_rate, log_weights=None) -> LearningStep``:
    ONE optimizer step on ``L_obs + λ·L_QM`` from a recorded trajectory (the observable term
    projected off a conflicting QM term when ``settings.project_conflict``; clip, of the sum or
    of each term as ``settings.grad_clip_scope`` says, then SGD at the given rate); with
    ``log_weights`` the frames are reweighted (sample reuse).

    This is the whole learning-phase update of the driver. A step is not applied when the
    estimator overflowed, had fewer than 2 valid samples (no covariance: the step would be pure
    QM or nothing), or the loss or gradient is non-finite.
    """
    optimizer = make_optimizer(settings)
    clip_each = settings.grad_clip_norm if settings.grad_clip_scope == "each_term" else None
    gradient_fn = make_gradient_fn(
        problem,
        settings.qm_weight,
        clip_each,
        settings.qm_clip_fraction,
        settings.project_conflict,
    )

    @jax.jit
    def apply(grads, opt_state, params, learning_rate):
        opt_state = _with_learning_rate(opt_state, learning_rate)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, optax.tree.norm(updates)

    def step(params, opt_state, trajectory, key, learning_rate, log_weights=None) -> LearningStep:
        grads, metrics = gradient_fn(params, trajectory, key, log_weights)
        metrics = {k: np.asarray(v) for k, v in jax.device_get(metrics).items()}
        skipped = ""
        if bool(metrics.get("overflow", False)):
            skipped = "neighbour-list overflow in the estimator"
        elif "n_samples" in metrics and int(metrics["n_samples"]) < 2:
            skipped = f"{int(metrics['n_samples'])} valid estimator samples (need >= 2)"
        elif not (
            bool(np.isfinite(metrics["loss"]))
            and all(bool(np.all(np.isfinite(g))) for g in jax.tree.leaves(grads))
        ):
            skipped = "non-finite loss or gradient"
        finite = not skipped
        update_norm = 0.0
        if finite:
            params, opt_state, norm = apply(grads, opt_state, params, learning_rate)
            update_norm = float(norm)
        for name in ("obs_grad_norm", "qm_grad_norm", "grad_norm"):
            metrics[name] = metrics[name] * settings.gradient_scale
        metrics["update_norm"] = np.asarray(update_norm)
        return LearningStep(params, opt_state, metrics, finite, skipped)

    return step
