"""The StABlE training driver: simulation and learning phases over immutable replica states.

The paper's Algorithm 1, with the authors' actual loop where the paper is vague (docs/method.md,
Training loop (simulation and learning phases)). The driver is plain Python; every numerical step
is a jitted pure function, and the whole run state is one pytree (:class:`StabieState`) so that
a checkpoint taken after any epoch resumes bit-identically on the same machine.

One *epoch* advances all replicas ``t = steps_per_epoch`` MD steps.

**Simulation phase** (learning rate 0). Each epoch simulates the alive replicas and checks the
stability criterion on the frames recorded every ``S`` steps. A replica found unstable is put
back to its state at the start of the epoch (the "near-unstable" state: ``t`` steps from it
lead to instability, i.e. the paper's rewind by ``t``) and frozen. The phase ends when the
unstable fraction reaches ``f_max``. In the first epoch of a simulation phase,
``ceil(reset_probability · #stable)`` random stable replicas are reset to a random earlier saved
state of their own trajectory (authors' ``reset_probability``).

**Learning phase**. All replicas restart from the same *anchor* states (stable replicas where
they are, unstable ones at their near-unstable states) every epoch: simulate ``t`` steps
recording every ``S``-th frame, measure the unstable fraction, and take ONE optimizer step on
``L_obs + λ·L_QM``, where ``∇L_obs`` comes from the Boltzmann estimator over the recorded frames
(see :mod:`stabie_jax.estimator`; frames of frozen or non-finite replicas are masked out). The
learning rate starts at ``α`` and is reduced on plateaus of the unstable fraction
(ReduceLROnPlateau, factor 0.2, patience 10); the phase ends when the unstable fraction is
``<= f_min``, when the rate falls below ``min_lr = α·min_lr_fraction`` (strictly, as in the
authors' code: in float arithmetic this takes a third reduction), or after
``max_learning_epochs`` epochs (logged). The next simulation phase starts from the end states of
the last learning epoch; replicas unstable in it go back to their anchors, frozen.

**Sample reuse** (``reuse_min_neff > 0``; off by default, which is the authors' rule). After a
learning epoch's step ``θ → θ₁`` the same recorded frames, drawn at ``θ``, still estimate the
ensemble of ``θ_j`` after reweighting, ``w_i ∝ exp(−(U_θj(x_i) − U_θ(x_i))/kT)``: further steps
are taken with the reweighted estimator (weighted means and covariances,
:mod:`stabie_jax.estimator`) while Kish's ``N_eff/N = (Σw)²/(N Σw²) >= reuse_min_neff``, at
most ``max_reuse_steps`` per simulation. Measured (never reweighted): the unstable fraction,
which alone drives the plateau schedule, ``f_min`` and the phase changes, once per simulation,
and the ``obs_loss``/``qm_loss`` of the epoch's first step; the QM loss of every step is exact.
Reweighted: ``reuse_obs_loss`` of the extra steps. Logged per learning epoch: ``reuse_steps``,
``reuse_end`` (``n_eff``, ``max_reuse_steps``, ``optimizer-step budget`` or a skipped step),
``reuse_n_eff_fraction`` (each check), ``reuse_obs_loss``, ``reuse_qm_loss``,
``reuse_update_norm``; ``optimizer_steps`` counts every applied step.

Estimator diagnostics, logged in learning epochs: ``sample_energy_above_median_kT`` and
``sample_energy_below_median_kT`` (the spread of ``U_θ`` over the valid frames, in kT: a large
value means a few frames dominate the covariance) and, every ``split_cosine_every`` epochs,
``obs_split_cosine`` (:func:`make_split_cosine_fn`).

Deliberate differences from the authors' code (each documented in the README/RESULTS too):

* the estimator is the exact one (``1/kT`` and ``N/(N−1)`` included): convert their learning
  rate, QM weight and clip together with
  :func:`stabie_jax.hyperparameters.authors_hyperparameters_to_exact` (the update is then theirs);
* the optimizer step happens in every learning epoch, including the one whose unstable fraction
  reaches ``f_min`` (the paper's Algorithm 1, lines 22–29; docs/method.md, Training loop);
* a learning epoch whose gradient is non-finite, whose estimator overflowed or had fewer than 2
  valid samples is skipped and logged, never applied.

Outputs in ``workdir``: ``metrics.jsonl`` (one line per epoch: phase, unstable fraction,
simulated time, losses, learning rate; in learning epochs also the norms of the observable
gradient, of the λ-weighted QM gradient and of their sum, in the units of
``settings.gradient_scale``, the observable share of the step, the cosine between the two terms
and ‖Δθ‖ of the applied update), ``checkpoints/`` (orbax, every
``checkpoint_every`` epochs and at phase boundaries).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stabie_jax import reweighting, run_loop, units
from stabie_jax._estimator_core import _guard
from stabie_jax.md import ReplicaState, Simulator, Trajectory
from stabie_jax.plateau import PlateauState, plateau_update
from stabie_jax.trajectory_losses import trajectory_samples

__all__ = [
    "CHECKPOINT_DIR",
    "LEARNING",
    "LearningStep",
    "LoopCounters",
    "METRICS_FILE",
    "PHASE_NAMES",
    "ReuseResult",
    "SIMULATION",
    "StabieProblem",
    "StabieSettings",
    "StabieState",
    "TrainState",
    "init_state",
    "make_frame_energies",
    "make_gradient_fn",
    "make_learning_epoch",
    "make_learning_step",
    "make_optimizer",
    "make_simulation_epoch",
    "make_split_cosine_fn",
    "random_half",
    "reuse_samples",
    "run_stabie",
    "shard_replicas",
]

SIMULATION = 0
LEARNING = 1
PHASE_NAMES = {SIMULATION: "simulation", LEARNING: "learning"}
METRICS_FILE = run_loop.METRICS_FILE
CHECKPOINT_DIR = run_loop.CHECKPOINT_DIR


@dataclasses.dataclass(frozen=True)
class StabieSettings:
    """Settings of the StABlE loop (paper Table 2 / authors' ``train.yml``).

    Attributes:
      steps_per_epoch: ``t``, MD steps per epoch (aspirin 2000, water 1000).
      sample_every: ``S``, steps between recorded frames (authors' ``n_dump``: 100; their saved
        aspirin run used 50).
      learning_rate: ``α`` for the *exact* estimator (convert the authors' value with
        ``hyperparameters.authors_hyperparameters_to_exact``).
      qm_weight: ``λ``, weight of the energy/force loss gradient (aspirin 10, water 0).
      f_max: unstable fraction that ends a simulation phase (0.75).
      f_min: unstable fraction that ends a learning phase (0.0).
      grad_clip_norm: global-norm clipping of the combined gradient (1.0; None = off).
      plateau_factor, plateau_patience: ReduceLROnPlateau on the unstable fraction (0.2, 10).
      min_lr_fraction: learning ends when lr < α·min_lr_fraction (1/25).
      reset_probability: fraction of stable replicas reset at a simulation phase's start (0.05).
      max_learning_epochs: cap on epochs of one learning phase (logged when hit).
      max_epochs: budget in epochs, simulation and learning together (authors' n_epochs).
      max_optimizer_steps: optional budget in optimizer steps.
      max_simulated_ps: optional budget in simulated time per replica summed over all epochs.
      max_wall_seconds: optional wall-clock budget of this process.
      checkpoint_every: epochs between checkpoints (also at every phase boundary).
      gradient_scale: factor that converts this run's gradients into the units of the
        hyperparameter convention they were given in (the authors': ``kT·(B−1)/B``, from
        ``hyperparameters.authors_hyperparameters_to_exact``); only the logged gradient norms
        use it.
      reuse_min_neff: sample reuse by reweighting (0 = off, the authors' one step per
        simulation): after a learning epoch's step, further steps are taken on the same
        frames, reweighted to the current parameters, while Kish's ``N_eff/N`` stays
        ``>= reuse_min_neff`` (module docstring, Sample reuse). Needs
        ``StabieProblem.energy_fn``.
      max_reuse_steps: at most this many extra steps per simulation when reuse is on.
      split_cosine_every: every this many learning epochs (0 = never), also log
        ``obs_split_cosine``, the cosine between the observable gradients of two disjoint
        random halves of the replicas (:func:`make_split_cosine_fn`): a direct measurement of
        the estimator's signal-to-noise at the current parameters. Costs two more observable
        gradients in those epochs; changes nothing else.
    """

    steps_per_epoch: int
    sample_every: int
    learning_rate: float
    qm_weight: float = 0.0
    f_max: float = 0.75
    f_min: float = 0.0
    grad_clip_norm: float | None = 1.0
    plateau_factor: float = 0.2
    plateau_patience: int = 10
    min_lr_fraction: float = 1.0 / 25.0
    reset_probability: float = 0.0
    max_learning_epochs: int = 100
    max_epochs: int = 500
    max_optimizer_steps: int | None = None
    max_simulated_ps: float | None = None
    max_wall_seconds: float | None = None
    checkpoint_every: int = 1
    gradient_scale: float = 1.0
    reuse_min_neff: float = 0.0
    max_reuse_steps: int = 10
    split_cosine_every: int = 0

    def __post_init__(self):
        if self.steps_per_epoch < 1 or self.sample_every < 1:
            raise ValueError("steps_per_epoch and sample_every must be >= 1")
        if self.steps_per_epoch % self.sample_every:
            raise ValueError(
                f"sample_every={self.sample_every} must divide steps_per_epoch="
                f"{self.steps_per_epoch}"
            )
        if not 0.0 <= self.f_min < self.f_max <= 1.0:
            raise ValueError(f"need 0 <= f_min < f_max <= 1, got {self.f_min}, {self.f_max}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0.0 <= self.reuse_min_neff <= 1.0:
            raise ValueError(
                f"reuse_min_neff is a fraction of the samples in [0, 1] (0 = no reuse), got "
                f"{self.reuse_min_neff}"
            )
        if self.max_reuse_steps < 0:
            raise ValueError(f"max_reuse_steps must be >= 0, got {self.max_reuse_steps}")
        if self.split_cosine_every < 0:
            raise ValueError(
                f"split_cosine_every must be >= 0 (0 = off), got {self.split_cosine_every}"
            )


class StabieProblem(NamedTuple):
    """The system-specific pure functions the driver needs.

    Attributes:
      simulator: :class:`stabie_jax.md.Simulator` of the system (its ``history_every`` should be
        ``steps_per_epoch`` so resets land on epoch boundaries).
      stable_fn: ``(trajectory: Trajectory) -> [R] bool``, the training stability criterion
        over the frames of one epoch (False when any frame is unstable or non-finite).
      observable_loss_fn: ``(params, trajectory, key, log_weights=None) -> (L_obs, aux dict)``,
        differentiable in ``params`` through a Boltzmann estimator
        (:mod:`stabie_jax.trajectory_losses`); ``log_weights`` ``[F·R]`` reweight the frames
        (only passed when sample reuse is on).
      qm_loss_fn: ``(params, key) -> L_QM`` on the training set, or None (λ = 0).
      energy_fn: ``(params, positions [N, 3]) -> eV``, the potential the estimator
        differentiates; needed only for sample reuse (``StabieSettings.reuse_min_neff``).
    """

    simulator: Simulator
    stable_fn: Callable
    observable_loss_fn: Callable
    qm_loss_fn: Callable | None = None
    energy_fn: Callable | None = None


class LoopCounters(NamedTuple):
    """Host loop state stored as 0-d numpy arrays (checkpointable, exact on restore)."""

    epoch: np.ndarray
    optimizer_steps: np.ndarray
    cycle: np.ndarray
    phase: np.ndarray
    phase_epoch: np.ndarray
    learning_rate: np.ndarray
    plateau_best: np.ndarray
    plateau_num_bad: np.ndarray
    plateau_num_reductions: np.ndarray
    simulated_steps: np.ndarray

    @classmethod
    def initial(cls) -> LoopCounters:
        i = lambda v: np.asarray(v, np.int64)
        f = lambda v: np.asarray(v, np.float64)
        return cls(i(0), i(0), i(0), i(SIMULATION), i(0), f(0.0), f(math.inf), i(0), i(0), i(0))

    def plateau(self) -> PlateauState:
        return PlateauState(
            float(self.learning_rate),
            float(self.plateau_best),
            int(self.plateau_num_bad),
            int(self.plateau_num_reductions),
        )

    def with_plateau(self, p: PlateauState) -> LoopCounters:
        return self._replace(
            learning_rate=np.asarray(p.learning_rate, np.float64),
            plateau_best=np.asarray(p.best, np.float64),
            plateau_num_bad=np.asarray(p.num_bad, np.int64),
            plateau_num_reductions=np.asarray(p.num_reductions, np.int64),
        )

    def bump(self, **deltas) -> LoopCounters:
        return self._replace(
            **{k: np.asarray(getattr(self, k) + v, np.int64) for k, v in deltas.items()}
        )


class TrainState(NamedTuple):
    """Parameters, optimizer state, PRNG key and loop counters."""

    params: Any
    opt_state: Any
    key: jax.Array
    counters: LoopCounters


class StabieState(NamedTuple):
    """Everything a run needs to continue: training state, replicas, learning anchors.

    ``anchors`` are the states every learning epoch restarts from (outside a learning phase they
    mirror ``replicas`` so the pytree keeps one structure).
    """

    train: TrainState
    replicas: ReplicaState
    anchors: ReplicaState


# ---------------------------------------------------------------------------------------------
# Optimizer and one learning step.


def make_optimizer(settings: StabieSettings) -> optax.GradientTransformation:
    """SGD (the authors' optimizer) after global-norm clipping, learning rate injectable."""

    def build(learning_rate):
        parts = []
        if settings.grad_clip_norm is not None:
            parts.append(optax.clip_by_global_norm(settings.grad_clip_norm))
        parts.append(optax.sgd(learning_rate))
        return optax.chain(*parts)

    return optax.inject_hyperparams(build)(learning_rate=settings.learning_rate)


def _with_learning_rate(opt_state, learning_rate: float):
    hyper = dict(opt_state.hyperparams)
    hyper["learning_rate"] = jnp.asarray(learning_rate, jnp.asarray(hyper["learning_rate"]).dtype)
    return opt_state._replace(hyperparams=hyper)


def make_gradient_fn(problem: StabieProblem, qm_weight: float) -> Callable:
    """Jitted ``(params, trajectory, key, log_weights=None) -> (grads, metrics)`` of
    ``L_obs + λ·L_QM`` (``log_weights``: the frames' reweighting, passed to the observable loss).

    The two gradients are taken separately (``key`` split into the observable loss's key and the
    QM loss's) and added, so the metrics can say what each contributes: ``obs_grad_norm``,
    ``qm_grad_norm`` (of ``λ·∇L_QM``), ``grad_norm`` (of the sum), ``obs_share`` (the
    observable gradient's projection on the sum, ``⟨g_obs, g⟩/‖g‖²``; the QM share is
    ``1 − obs_share``) and ``grad_cosine`` (between the two terms; 0 when either vanishes).
    Clipping scales both terms alike, so the shares are also those of the applied update.
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
        grads = jax.tree.map(jnp.add, g_obs, g_qm)
        n_obs, n_qm, n_all = (optax.tree.norm(g) for g in (g_obs, g_qm, grads))
        tiny = jnp.finfo(n_all.dtype).tiny
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
            "grad_cosine": jnp.where(
                (n_obs > 0) & (n_qm > 0),
                optax.tree.vdot(g_obs, g_qm) / jnp.maximum(n_obs * n_qm, tiny),
                0.0,
            ),
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
    ONE optimizer step on ``L_obs + λ·L_QM`` from a recorded trajectory (clip, then SGD at the
    given rate); with ``log_weights`` the frames are reweighted (sample reuse).

    This is the whole learning-phase update of the driver. A step is not applied when the
    estimator overflowed, had fewer than 2 valid samples (no covariance: the step would be pure
    QM or nothing), or the loss or gradient is non-finite.
    """
    optimizer = make_optimizer(settings)
    gradient_fn = make_gradient_fn(problem, settings.qm_weight)

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


# ---------------------------------------------------------------------------------------------
# Sample reuse by reweighting.


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


# ---------------------------------------------------------------------------------------------
# Driver.


def _freeze(state: ReplicaState) -> ReplicaState:
    return state._replace(alive=jnp.zeros_like(state.alive))


def _revive(state: ReplicaState) -> ReplicaState:
    return state._replace(alive=jnp.ones_like(state.alive), nonfinite=jnp.zeros_like(state.alive))


def init_state(
    problem: StabieProblem,
    settings: StabieSettings,
    params,
    initial_positions,
    key: jax.Array,
    *,
    rescale_velocities: bool = True,
) -> StabieState:
    """Start replicas from ``initial_positions [R, N, 3]`` (e.g. R training frames)."""
    k_init, k_run = jax.random.split(key)
    replicas = problem.simulator.init(
        params, k_init, initial_positions, rescale_velocities=rescale_velocities
    )
    opt_state = make_optimizer(settings).init(params)
    train = TrainState(params, opt_state, k_run, LoopCounters.initial())
    return StabieState(train, replicas, replicas)


def _epoch_stability(problem: StabieProblem, replicas: ReplicaState, traj: Trajectory):
    """``[R]`` bool: criterion passed, state finite, and every recorded energy finite."""
    stable = np.asarray(problem.stable_fn(traj)) & ~np.asarray(replicas.nonfinite)
    if traj.potential_energy is not None:
        stable &= np.all(np.isfinite(np.asarray(traj.potential_energy)), axis=0)
    return stable


def _budget_left(settings: StabieSettings, counters: LoopCounters, dt, started: float) -> bool:
    if int(counters.epoch) >= settings.max_epochs:
        return False
    if (
        settings.max_optimizer_steps is not None
        and int(counters.optimizer_steps) >= settings.max_optimizer_steps
    ):
        return False
    if settings.max_simulated_ps is not None:
        ps = units.internal_to_fs(int(counters.simulated_steps) * dt) / 1000.0
        if ps >= settings.max_simulated_ps:
            return False
    if settings.max_wall_seconds is not None and time.time() - started >= settings.max_wall_seconds:
        return False
    return True


def _reset_some_stable(sim: Simulator, replicas: ReplicaState, key, probability: float):
    """Authors' reset: ceil(p·#stable) stable replicas go back to a random saved state."""
    alive = np.asarray(replicas.alive)
    n_reset = math.ceil(probability * int(alive.sum()))
    if n_reset == 0:
        return replicas, 0
    k_pick, k_back = jax.random.split(key)
    candidates = np.flatnonzero(alive)
    picked = np.asarray(jax.random.choice(k_pick, candidates, (n_reset,), replace=False))
    mask = np.zeros(alive.shape, bool)
    mask[picked] = True
    available = np.minimum(np.asarray(replicas.history.count), sim.history_length)
    back = np.floor(np.asarray(jax.random.uniform(k_back, alive.shape)) * available).astype(int)
    replicas, ok = sim.rewind(replicas, jnp.asarray(mask), jnp.asarray(back, jnp.int32))
    return replicas, int(np.asarray(ok).sum())


def make_simulation_epoch(problem: StabieProblem, settings: StabieSettings) -> Callable:
    """``(state, key) -> (state, record)``: one simulation-phase epoch (learning rate 0).

    Alive replicas run ``t`` steps; a replica failing the criterion goes back to its state at
    the start of the epoch, frozen. When the unstable fraction reaches ``f_max`` every replica
    is revived at its anchor and the counters enter the learning phase. ``key`` draws the
    authors' reset of some stable replicas in the first epoch of a phase.
    """
    sim = problem.simulator
    t, every = settings.steps_per_epoch, settings.sample_every

    def epoch(state: StabieState, key) -> tuple[StabieState, dict]:
        train, replicas, _ = state
        counters = train.counters
        record: dict[str, Any] = {}
        if int(counters.phase_epoch) == 0 and settings.reset_probability > 0:
            replicas, record["n_reset"] = _reset_some_stable(
                sim, replicas, key, settings.reset_probability
            )
        start = replicas
        replicas, traj = sim.simulate(train.params, replicas, t, every, record_energy=True)
        stable = _epoch_stability(problem, replicas, traj)
        newly_unstable = np.asarray(start.alive) & ~stable
        replicas = sim.select(jnp.asarray(newly_unstable), _freeze(start), replicas)
        f_unst = 1.0 - float(np.mean(np.asarray(replicas.alive)))
        counters = counters.bump(epoch=1, phase_epoch=1, simulated_steps=t).with_plateau(
            counters.plateau()._replace(learning_rate=0.0)
        )
        record.update(
            unstable_fraction=f_unst,
            newly_unstable=int(newly_unstable.sum()),
            alive_at_start=int(np.asarray(start.alive).sum()),
            learning_rate=0.0,
        )
        anchors = replicas
        if f_unst >= settings.f_max:
            # Enter learning: every replica restarts from its anchor (near-unstable) state.
            anchors = _revive(replicas)
            counters = counters._replace(
                phase=np.asarray(LEARNING, np.int64), phase_epoch=np.asarray(0, np.int64)
            ).with_plateau(PlateauState(settings.learning_rate, math.inf, 0, 0))
        return StabieState(train._replace(counters=counters), replicas, anchors), record

    return epoch


def _energy_spread(traj: Trajectory, kT: float) -> dict:
    """Spread of the recorded frames' ``U_θ`` around their median, in kT (valid frames only)."""
    if traj.potential_energy is None:
        return {}
    _, mask = trajectory_samples(traj)
    u = np.asarray(traj.potential_energy).reshape(-1)[np.asarray(mask)]
    if u.size == 0:
        return {}
    median = float(np.median(u))
    return {
        "sample_energy_above_median_kT": (float(u.max()) - median) / kT,
        "sample_energy_below_median_kT": (median - float(u.min())) / kT,
    }


_STEP_METRICS = ("grad_norm", "obs_grad_norm", "qm_grad_norm", "obs_share", "grad_cosine")


def make_learning_epoch(problem: StabieProblem, settings: StabieSettings) -> Callable:
    """``(state, key) -> (state, record)``: one learning-phase epoch.

    All replicas restart from the anchors, run ``t`` steps recording every ``S``-th frame, and
    ONE optimizer step is taken on those frames (plus the reweighted reuse steps when
    ``settings.reuse_min_neff > 0``); the unstable fraction drives the plateau schedule and the
    end of the phase (``f_min``, ``min_lr``, ``max_learning_epochs``), after which replicas
    unstable in this epoch go back to their anchors, frozen, and the simulation phase resumes.
    ``key`` is the estimator's minibatch key.
    """
    sim = problem.simulator
    t, every = settings.steps_per_epoch, settings.sample_every
    learning_step = make_learning_step(problem, settings)
    reuse = settings.reuse_min_neff > 0 and settings.max_reuse_steps > 0
    frame_energies = make_frame_energies(problem) if reuse else None
    split_cosine = make_split_cosine_fn(problem) if settings.split_cosine_every else None
    min_lr = settings.learning_rate * settings.min_lr_fraction

    def epoch(state: StabieState, key) -> tuple[StabieState, dict]:
        train, _, anchors = state
        counters = train.counters
        replicas, traj = sim.simulate(train.params, anchors, t, every, record_energy=True)
        stable = _epoch_stability(problem, replicas, traj)
        f_unst = 1.0 - float(np.mean(stable))
        lr = counters.plateau().learning_rate
        params, opt_state, metrics, finite, skipped = learning_step(
            train.params, train.opt_state, traj, key, lr
        )
        record: dict[str, Any] = dict(
            unstable_fraction=f_unst,
            phase_epoch=int(counters.phase_epoch),  # 0 in the first epoch of the phase
            learning_rate=lr,
            step_applied=finite,
            obs_loss=float(metrics["obs_loss"]),
            qm_loss=float(metrics["qm_loss"]),
            loss=float(metrics["loss"]),
            n_samples=int(metrics["n_samples"]),
            **{k: float(metrics[k]) for k in _STEP_METRICS + ("update_norm",)},
        )
        if skipped:
            record["skipped"] = skipped
        record.update(_energy_spread(traj, sim.kT))
        if (
            split_cosine is not None
            and int(counters.phase_epoch) % settings.split_cosine_every == 0
        ):
            # measured at the parameters the step was computed at, on the same frames
            k_half, k_est = jax.random.split(jax.random.fold_in(key, 2))
            half = random_half(k_half, traj.alive.shape[1])
            split = jax.device_get(split_cosine(train.params, traj, k_est, half))
            record.update({k: float(v) for k, v in split.items()})
            for name in ("obs_split_norm_a", "obs_split_norm_b"):
                record[name] *= settings.gradient_scale
        if finite:
            counters = counters.bump(optimizer_steps=1)
        if reuse and finite:
            budget = settings.max_reuse_steps
            if settings.max_optimizer_steps is not None:
                budget = min(budget, settings.max_optimizer_steps - int(counters.optimizer_steps))
            reused = reuse_samples(
                learning_step,
                frame_energies,
                settings,
                sim.kT,
                train.params,
                params,
                opt_state,
                traj,
                jax.random.fold_in(key, 1),
                lr,
                max(budget, 0),
            )
            params, opt_state = reused.params, reused.opt_state
            counters = counters.bump(optimizer_steps=reused.steps)
            record.update(
                reuse_steps=reused.steps,
                reuse_end=reused.end,
                reuse_n_eff_fraction=reused.n_eff_fraction,
                reuse_obs_loss=reused.obs_loss,
                reuse_qm_loss=reused.qm_loss,
                reuse_update_norm=reused.update_norm,
            )
        plateau = plateau_update(
            counters.plateau(),
            f_unst,
            factor=settings.plateau_factor,
            patience=settings.plateau_patience,
        )
        counters = counters.bump(epoch=1, phase_epoch=1).with_plateau(plateau)
        train = train._replace(params=params, opt_state=opt_state)
        end_reason = None
        if f_unst <= settings.f_min:
            end_reason = "unstable fraction <= f_min"
        elif plateau.learning_rate < min_lr:
            end_reason = "learning rate < min_lr"
        elif int(counters.phase_epoch) >= settings.max_learning_epochs:
            end_reason = "max_learning_epochs reached"
        if end_reason is None:
            replicas = anchors
        else:
            record["learning_end"] = end_reason
            replicas = sim.select(jnp.asarray(~stable), _freeze(anchors), replicas)
            anchors = replicas
            counters = (
                counters._replace(
                    phase=np.asarray(SIMULATION, np.int64), phase_epoch=np.asarray(0, np.int64)
                )
                .bump(cycle=1)
                .with_plateau(PlateauState(0.0, math.inf, 0, 0))
            )
        return StabieState(train._replace(counters=counters), replicas, anchors), record

    return epoch


def run_stabie(
    problem: StabieProblem,
    settings: StabieSettings,
    state: StabieState,
    workdir,
    *,
    metadata: dict | None = None,
    resume: bool = True,
    progress: bool = True,
    shard_fn: Callable | None = None,
    tensorboard: bool = False,
) -> tuple[StabieState, list[dict]]:
    """Run StABlE training until the budget is spent; resume from ``workdir`` if possible.

    Args:
      problem: :class:`StabieProblem`.
      settings: :class:`StabieSettings`.
      state: initial :class:`StabieState` (:func:`init_state`); also the restore template.
      workdir: output directory (``metrics.jsonl``, ``checkpoints/``).
      metadata: JSON-able dict saved with every checkpoint (e.g. the config).
      resume: continue from the newest readable checkpoint in ``workdir`` if there is one.
      progress: show a tqdm progress bar.
      shard_fn: optional ``ReplicaState -> ReplicaState`` placing replicas on devices
        (:func:`shard_replicas`); applied after init and restore.
      tensorboard: also write each epoch's record as TensorBoard scalars
        (``workdir/tensorboard``).

    Returns:
      ``(final_state, records)``: the metrics records of this call's epochs.
    """
    phases = {
        SIMULATION: make_simulation_epoch(problem, settings),
        LEARNING: make_learning_epoch(problem, settings),
    }
    dt = problem.simulator.dt
    started = time.time()
    records: list[dict] = []
    with run_loop.ResumableLoop(
        workdir,
        counter="epoch",
        total=settings.max_epochs,
        desc="StABlE",
        progress=progress,
        tensorboard=tensorboard,
    ) as loop:

        def save(st: StabieState):
            blob = {"metadata": metadata or {}, "counters": st.train.counters._asdict()}
            loop.save(int(st.train.counters.epoch), st, blob)

        state = loop.resume(state, restore=resume).state
        if shard_fn is not None:
            replicas = shard_fn(state.replicas)
            state = StabieState(
                _replicated_like(state.train, replicas), replicas, shard_fn(state.anchors)
            )
        while _budget_left(settings, state.train.counters, dt, started):
            counters = state.train.counters
            phase = int(counters.phase)
            key, k_phase = jax.random.split(state.train.key)
            if phase == LEARNING:  # the learning step's key comes from a second split
                k_phase, key = jax.random.split(key)
            record = {
                "epoch": int(counters.epoch) + 1,
                "cycle": int(counters.cycle),
                "phase": PHASE_NAMES[phase],
            }
            state, phase_record = phases[phase](state, k_phase)
            counters = state.train.counters
            state = state._replace(train=state.train._replace(key=key))
            record.update(
                phase_record,
                simulated_ps=units.internal_to_fs(int(counters.simulated_steps) * dt) / 1000.0,
                optimizer_steps=int(counters.optimizer_steps),
                wall_seconds=time.time() - started,
            )
            records.append(record)
            loop.log(record, phase=record["phase"][:5], f_unst=f"{record['unstable_fraction']:.2f}")
            boundary = int(counters.phase) != phase
            if boundary or int(counters.epoch) % settings.checkpoint_every == 0:
                save(state)
        if loop.latest_step != int(state.train.counters.epoch):
            save(state)
    return state, records


def _replicated_like(train: TrainState, replicas: ReplicaState) -> TrainState:
    """``train``'s arrays replicated on every device the sharded ``replicas`` use.

    Parameters loaded from a model checkpoint live on one device; a jitted gradient over a
    trajectory sharded over several devices refuses such mixed placements.
    """
    sharding = replicas.alive.sharding
    if not isinstance(sharding, jax.sharding.NamedSharding):
        return train
    everywhere = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())

    def place(x):
        return jax.device_put(x, everywhere) if isinstance(x, jax.Array) else x

    return train._replace(
        params=jax.tree.map(place, train.params),
        opt_state=jax.tree.map(place, train.opt_state),
        key=place(train.key),
    )


def shard_replicas(replicas: ReplicaState, mesh: jax.sharding.Mesh | None = None) -> ReplicaState:
    """Place the replica axis of every leaf across devices (1-D mesh ``"replica"``).

    Parameters stay replicated (they are closed over or passed unsharded); jit then runs the
    vmapped MD on each device's slice of replicas. The number of replicas must be a multiple of
    the number of devices.
    """
    if mesh is None:
        mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("replica",))
    n_devices = mesh.devices.size
    n_replicas = int(replicas.alive.shape[0])
    if n_replicas % n_devices:
        raise ValueError(
            f"{n_replicas} replicas cannot be split evenly over {n_devices} devices; choose "
            "n_replicas as a multiple of the device count"
        )
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("replica"))

    def place(x):
        if isinstance(x, jax.Array | np.ndarray) and x.ndim >= 1 and x.shape[0] == n_replicas:
            return jax.device_put(x, spec)
        return x

    return jax.tree.map(place, replicas)
