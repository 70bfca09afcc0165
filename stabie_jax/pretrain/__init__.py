"""Energy/force pretraining of a potential (minimising L_QM, paper eq. 3) with optax.

The loop follows the authors' recipes (docs/method.md, Pretraining recipes; per system in
docs/paper_settings.md), available as :data:`RECIPES` and used as configurable defaults:

* minibatches of ``batch_size`` frames, reshuffled every epoch with
  ``fold_in(PRNGKey(seed), epoch)`` (so the batch order of epoch ``k`` does not depend on how the
  run got there); the last batch is padded with zero-weight frames, so every frame is used once
  per epoch and every step has the same shape. One epoch is a single jitted ``lax.scan`` over
  its batches; each step ``vmap``s energies and forces over the batch;
* Adam (optionally AMSGrad, decoupled weight decay, global-norm clipping) with learning rate
  ``lr(step) = lr_plateau · w(step)``, where ``w`` rises linearly from ``warmup_factor`` to 1
  over ``warmup_steps`` optimizer steps and ``lr_plateau`` is reduced on plateaus of the
  validation loss (:mod:`stabie_jax.plateau`; factor 0.8, patience 5, floor ``min_learning_rate``);
* optional exponential moving average (EMA) of the parameters, used for evaluation;
* early stopping on the validation force MAE (``early_stopping_patience`` epochs); the
  parameters with the best validation force MAE are returned;
* the model predicts normalised energies: a per-species energy shift (least squares of the
  training energies on element counts) and a scale (RMS of the training forces) are fitted
  first and applied around the potential (:mod:`stabie_jax.models.scale_shift`);
* an orbax checkpoint of the whole :class:`PretrainState` after every epoch; calling
  :func:`pretrain` again with the same ``workdir`` resumes from the latest readable checkpoint
  and continues bit-for-bit as the uninterrupted run would (same RNG, batches, schedule);
* ``workdir/metrics.jsonl`` (one JSON line per epoch: epoch, step, lr, train loss, train and
  validation E/F MAE, wall time) and ``workdir/report.json`` (final validation and test energy
  and force MAE in eV and kcal/mol).

Library code reads no config object: everything comes from :class:`PretrainSettings`.

Examples:
  >>> pot = make_potential(module, z, space.free()[0])                        # doctest: +SKIP
  >>> settings = recipe("schnet", max_epochs=100)                              # doctest: +SKIP
  >>> params, report = pretrain(pot, params, train, val, atomic_numbers=z,
  ...                           settings=settings, workdir="/tmp/pre", test=test)  # doctest: +SKIP
"""

from __future__ import annotations

from stabie_jax.pretrain.frames import (
    PretrainData,
    precompute_neighbor_indices,
    prepare_data,
)
from stabie_jax.pretrain.loop import (
    REPORT_FILE,
    pretrain,
    pretrained_model_metadata,
)
from stabie_jax.pretrain.settings import (
    RECIPES,
    SCHEDULES,
    PretrainSettings,
    PretrainState,
    cosine_multiplier,
    make_optimizer,
    recipe,
    warmup_multiplier,
)
from stabie_jax.pretrain.steps import (
    initial_state,
    make_epoch_fn,
    make_evaluate_fn,
)

__all__ = [
    "PretrainData",
    "PretrainSettings",
    "PretrainState",
    "RECIPES",
    "REPORT_FILE",
    "SCHEDULES",
    "cosine_multiplier",
    "initial_state",
    "make_epoch_fn",
    "make_evaluate_fn",
    "make_optimizer",
    "precompute_neighbor_indices",
    "prepare_data",
    "pretrain",
    "pretrained_model_metadata",
    "recipe",
    "warmup_multiplier",
]
