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

Timings (wall seconds) in every epoch's record: ``md_seconds`` (the simulation and its
stability check) and, in learning epochs, ``step_seconds`` (the learning step: both gradients,
the update and the host checks); ``wall_seconds`` is the run's total so far.

**Which frames feed the step** (``learning_samples``). ``"all"`` (the authors'): every recorded
frame of an alive replica with finite positions and energy, including the frames after a
replica has left the physical region. ``"within_criterion"``: each replica's frames before the
first one that fails the training stability criterion (:func:`frames_within_criterion`).
Measured on the CPU protocol: the frames after a failure can hold fused atoms thousands of kT
below the median energy, and those few frames then set the direction of the covariance
estimate. Logged per learning epoch: ``n_samples`` (frames used) and
``within_criterion_fraction`` (frames within the criterion over the valid frames).

**What the clip clips** (``grad_clip_scope``). ``"sum"`` (the authors'): the global norm of
``∇L_obs + λ·∇L_QM``. ``"each_term"``: each of the two is clipped to ``grad_clip_norm``
before they are added. Measured on the CPU aspirin protocol (α = 4e-3, λ = 10): the observable
gradient is 60–10⁵× the λ-weighted QM gradient, so with ``"sum"`` the clipped update is the
observable direction alone and the QM term never acts; ``"each_term"`` gives it an equal say.

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

The package: ``state`` (settings, problem, state NamedTuples), ``learning_step`` (gradient,
diagnostics, update), ``reuse`` (reweighted extra steps), ``epochs`` (the two epoch functions)
and ``driver`` (:func:`run_stabie`, sharding); every public name is available here.
"""

from __future__ import annotations

from stabie_jax.stabie.driver import (
    init_from_frames,
    run_stabie,
    shard_replicas,
    shard_state,
)
from stabie_jax.stabie.epochs import (
    frames_within_criterion,
    init_state,
    make_learning_epoch,
    make_simulation_epoch,
)
from stabie_jax.stabie.learning_step import (
    LearningStep,
    make_gradient_fn,
    make_learning_step,
    make_optimizer,
    make_split_cosine_fn,
    random_half,
)
from stabie_jax.stabie.reuse import (
    ReuseResult,
    make_frame_energies,
    reuse_samples,
)
from stabie_jax.stabie.state import (
    CHECKPOINT_DIR,
    GRAD_CLIP_SCOPES,
    LEARNING,
    LEARNING_SAMPLES,
    METRICS_FILE,
    PHASE_NAMES,
    SIMULATION,
    LoopCounters,
    StabieProblem,
    StabieSettings,
    StabieState,
    TrainState,
)

__all__ = [
    "CHECKPOINT_DIR",
    "GRAD_CLIP_SCOPES",
    "LEARNING",
    "LEARNING_SAMPLES",
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
    "frames_within_criterion",
    "init_from_frames",
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
    "shard_state",
]
