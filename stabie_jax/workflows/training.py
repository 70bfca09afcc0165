"""What every StABlE stage shares: the learning-step settings (:class:`LearningInputs`, turned
into :class:`~stabie_jax.stabie.StabieSettings` by :func:`stabie_settings`) and
:func:`train_and_save` (replicas from training frames, the run, the trained model saved)."""

from __future__ import annotations

import pathlib
from typing import NamedTuple

import jax

from stabie_jax import checkpoint, hyperparameters
from stabie_jax import stabie as stabie_lib

__all__ = ["LearningInputs", "stabie_settings", "train_and_save"]


class LearningInputs(NamedTuple):
    """How the learning steps are taken (what ``config.stabie`` holds besides the system).

    Attributes:
      minibatch_size: the estimator's ``B``.
      hyperparameter_convention: ``"authors"`` or ``"exact"``: the units of ``learning_rate``,
        ``qm_weight`` and ``grad_clip_norm`` (:func:`stabie_jax.hyperparameters.
        exact_hyperparameters`).
      observable_reduction, observable_vjp: of the observable loss
        (:func:`stabie_jax.trajectory_losses.global_observable_loss`).
      learning_rate, qm_weight, grad_clip_norm: α, λ and the clip in that convention.
      settings_kwargs: the other :class:`~stabie_jax.stabie.StabieSettings` fields (``t``,
        ``S``, phases, schedule, budget, checkpoints, reuse, which frames feed a step).
    """

    minibatch_size: int
    hyperparameter_convention: str
    observable_reduction: str
    observable_vjp: str
    learning_rate: float
    qm_weight: float
    grad_clip_norm: float | None
    settings_kwargs: dict


def stabie_settings(
    learning: LearningInputs, kT: float, n_observable: int
) -> tuple[stabie_lib.StabieSettings, dict]:
    """The loop settings for the exact estimator at ``kT`` (eV) with an observable of
    ``n_observable`` components, and the converted values to record with the run."""
    hp = hyperparameters.exact_hyperparameters(
        learning.hyperparameter_convention,
        learning.learning_rate,
        learning.qm_weight,
        learning.grad_clip_norm,
        kT,
        learning.minibatch_size,
        reduction=learning.observable_reduction,
        n_observable=n_observable,
    )
    settings = stabie_lib.StabieSettings(
        learning_rate=hp.learning_rate,
        qm_weight=hp.qm_weight,
        grad_clip_norm=hp.grad_clip_norm,
        gradient_scale=hp.gradient_scale,
        **learning.settings_kwargs,
    )
    recorded = {
        "exact_learning_rate": hp.learning_rate,
        "exact_qm_weight": hp.qm_weight,
        "exact_grad_clip_norm": hp.grad_clip_norm,
        "gradient_scale": hp.gradient_scale,
    }
    return settings, recorded


def train_and_save(
    problem: stabie_lib.StabieProblem,
    settings: stabie_lib.StabieSettings,
    loaded: checkpoint.LoadedModel,
    train_positions,
    *,
    n_replicas: int,
    seed: int,
    run_dir: pathlib.Path,
    model_dir: pathlib.Path,
    metadata: dict,
    progress: bool,
    rescale_velocities: bool,
    shard: bool,
    tensorboard: bool = False,
) -> pathlib.Path:
    """Start ``n_replicas`` replicas from random training frames (:func:`stabie_jax.stabie.
    init_from_frames`), run StABlE in ``run_dir`` (resumable: checkpoints, metrics.jsonl) and
    save the trained parameters with ``loaded``'s model metadata to ``model_dir``.

    Args:
      problem, settings: the StABlE problem and loop settings.
      loaded: the starting model (its parameters and metadata).
      train_positions: ``[F, N, 3]`` Å, the frames the replicas start from.
      n_replicas: R.
      seed: seeds the choice of frames and the initial momenta (``PRNGKey(seed)``).
      run_dir, model_dir: where the run and the trained model are written.
      metadata: stored with the run and in the model's ``extra.stabie`` (with the frames used).
      progress, tensorboard: a progress bar; TensorBoard event files beside the metrics.
      rescale_velocities: initial momenta rescaled to exactly ``dof·kT/2`` (the authors').
      shard: split the replicas over the devices (:func:`stabie_jax.stabie.shard_replicas`).

    Returns:
      ``model_dir``.
    """
    state, ic = stabie_lib.init_from_frames(
        problem,
        settings,
        loaded.params,
        train_positions,
        n_replicas=n_replicas,
        key=jax.random.PRNGKey(seed),
        rescale_velocities=rescale_velocities,
    )
    run_metadata = {**metadata, "initial_frames": ic.tolist()}
    final, _ = stabie_lib.run_stabie(
        problem,
        settings,
        state,
        run_dir,
        metadata=run_metadata,
        progress=progress,
        shard_fn=stabie_lib.shard_replicas if shard else None,
        tensorboard=tensorboard,
    )
    extra = {**loaded.metadata.extra, "stabie": run_metadata}
    checkpoint.save_model_checkpoint(
        model_dir, final.train.params, loaded.metadata._replace(extra=extra), overwrite=True
    )
    return pathlib.Path(model_dir)
