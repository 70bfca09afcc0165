"""The driver's settings, problem and state: :class:`StabieSettings` (the authors' knobs),
:class:`StabieProblem` (what is simulated and learned), :class:`StabieState` (the whole run as
one pytree: replicas, anchors, parameters, optimizer, plateau and counters)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from stabie_jax import run_loop
from stabie_jax.md import ReplicaState, Simulator
from stabie_jax.plateau import PlateauState

__all__ = [
    "CHECKPOINT_DIR",
    "LEARNING",
    "LEARNING_SAMPLES",
    "LoopCounters",
    "METRICS_FILE",
    "PHASE_NAMES",
    "SIMULATION",
    "StabieProblem",
    "StabieSettings",
    "StabieState",
    "TrainState",
]


SIMULATION = 0


LEARNING = 1


PHASE_NAMES = {SIMULATION: "simulation", LEARNING: "learning"}


METRICS_FILE = run_loop.METRICS_FILE

LEARNING_SAMPLES = ("all", "within_criterion")
"""Choices of :attr:`StabieSettings.learning_samples`."""

GRAD_CLIP_SCOPES = ("sum", "each_term")
"""Choices of :attr:`StabieSettings.grad_clip_scope`."""


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
      grad_clip_norm: global-norm clipping of the gradient (1.0; None = off); what it clips is
        ``grad_clip_scope``.
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
      learning_samples: which recorded frames of a learning epoch feed the step: ``"all"``
        (the authors': every frame of every alive replica with finite positions and energy)
        or ``"within_criterion"`` (each replica's frames up to, not including, the first one
        at which the training stability criterion fails, :func:`frames_within_criterion`).
        The unstable fraction is measured on all frames either way.
      grad_clip_scope: what ``grad_clip_norm`` clips: ``"sum"`` (the authors'): the combined
        gradient ``∇L_obs + λ·∇L_QM``, so when one term is orders of magnitude larger the
        update follows it alone; or ``"each_term"``: ``∇L_obs`` and ``λ·∇L_QM`` are each
        clipped to ``grad_clip_norm`` and then added, so both act on every step (the update's
        norm is then at most ``2·grad_clip_norm``).
      qm_clip_fraction: with ``"each_term"``, the QM term is clipped to
        ``qm_clip_fraction·grad_clip_norm`` (1.0: the same norm as the observable term; smaller
        values let it pull back less than a full step).
      project_conflict: when ``∇L_obs`` and ``λ·∇L_QM`` point against each other (negative
        inner product), remove from ``∇L_obs`` its component along ``λ·∇L_QM`` before the
        terms are clipped and added, so that the observable term does not raise ``L_QM`` to
        first order (the update direction changes; its length is still set by the clip).
        False (the authors'): the terms are added as they are.
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
    learning_samples: str = "all"
    grad_clip_scope: str = "sum"
    qm_clip_fraction: float = 1.0
    project_conflict: bool = False

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
        if self.learning_samples not in LEARNING_SAMPLES:
            raise ValueError(
                f"learning_samples must be one of {LEARNING_SAMPLES}, got {self.learning_samples!r}"
            )
        if self.grad_clip_scope not in GRAD_CLIP_SCOPES:
            raise ValueError(
                f"grad_clip_scope must be one of {GRAD_CLIP_SCOPES}, got {self.grad_clip_scope!r}"
            )
        if not self.qm_clip_fraction > 0:
            raise ValueError(f"qm_clip_fraction must be > 0, got {self.qm_clip_fraction}")


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
