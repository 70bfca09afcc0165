"""Pretraining settings and schedules: :class:`PretrainSettings`, the authors' :data:`RECIPES`
(SchNet, NequIP, GemNet-T), the optimizer (Adam/AdamW, clipping) and the warm-up and cosine
learning-rate multipliers."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from stabie_jax.plateau import PlateauState

__all__ = [
    "PretrainSettings",
    "PretrainState",
    "RECIPES",
    "SCHEDULES",
    "cosine_multiplier",
    "make_optimizer",
    "recipe",
    "warmup_multiplier",
]


@dataclasses.dataclass(frozen=True)
class PretrainSettings:
    """Static settings of :func:`pretrain` (defaults: the SchNet recipe).

    Attributes:
      learning_rate: initial (peak) learning rate.
      batch_size: frames per optimizer step.
      max_epochs: stop after this many epochs.
      energy_weight: ``λ_U``.
      force_weight: ``λ_F``.
      per_atom_energy: energy term on ``ΔU/N`` (NequIP).
      energy_loss: ``"mse"`` or ``"mae"``.
      force_loss: ``"mse"`` or ``"l2mae"``.
      optimizer: ``"adam"`` or ``"adamw"`` (decoupled weight decay).
      adam_eps: Adam epsilon.
      amsgrad: use AMSGrad.
      weight_decay: decoupled weight decay (``"adamw"`` only).
      gradient_clip_norm: global-norm clipping threshold, or None.
      warmup_steps: optimizer steps of linear warm-up (0: none).
      warmup_factor: warm-up starts at ``warmup_factor · lr``.
      schedule: ``"plateau"`` (the authors': multiply by ``plateau_factor`` when the validation
        loss stalls) or ``"cosine"`` (after the warm-up, a cosine decay from ``learning_rate``
        to ``cosine_final_factor · learning_rate`` at epoch ``max_epochs``; no plateau steps).
      cosine_final_factor: final/initial learning rate of the cosine schedule.
      plateau_factor: learning-rate factor on a validation-loss plateau.
      plateau_patience: epochs without improvement tolerated before reducing.
      plateau_threshold: relative improvement that counts.
      min_learning_rate: learning-rate floor.
      stop_at_min_learning_rate: stop once the plateau rate has reached the floor.
      max_wall_seconds: stop after this many seconds of training, summed over resumptions
        (None: no limit).
      early_stopping_patience: stop after this many epochs without a better validation
        force MAE (None: never).
      ema_decay: EMA decay of the evaluated parameters, or None.
      fit_energy_shift: fit per-species energy shifts on the training set (else 0).
      fit_energy_scale: scale by the training force RMS (else 1).
      eval_batch_size: frames per evaluation batch (default ``batch_size``).
      seed: seed of the shuffling key.
      checkpoint_every_epochs: save a checkpoint every this many epochs (and at the end).
      max_checkpoints_to_keep: orbax ``max_to_keep``.
      progress_bar: show a tqdm bar over epochs.
      tensorboard: also write each epoch's metrics as TensorBoard scalars
        (``workdir/tensorboard``).
    """

    learning_rate: float = 1e-3
    batch_size: int = 100
    max_epochs: int = 10_000
    energy_weight: float = 0.05
    force_weight: float = 0.95
    per_atom_energy: bool = False
    energy_loss: str = "mse"
    force_loss: str = "mse"
    optimizer: str = "adam"
    adam_eps: float = 1e-8
    amsgrad: bool = False
    weight_decay: float = 0.0
    gradient_clip_norm: float | None = None
    warmup_steps: int = 5000
    warmup_factor: float = 0.2
    schedule: str = "plateau"
    cosine_final_factor: float = 0.01
    plateau_factor: float = 0.8
    plateau_patience: int = 5
    plateau_threshold: float = 1e-4
    min_learning_rate: float = 1e-6
    stop_at_min_learning_rate: bool = False
    max_wall_seconds: float | None = None
    early_stopping_patience: int | None = 50
    ema_decay: float | None = None
    fit_energy_shift: bool = True
    fit_energy_scale: bool = True
    eval_batch_size: int | None = None
    seed: int = 0
    checkpoint_every_epochs: int = 1
    max_checkpoints_to_keep: int = 3
    progress_bar: bool = True
    tensorboard: bool = False


# Settings that may change between a run and its resumption without breaking exactness.
_RESUMABLE_CHANGES = (
    "max_epochs",
    "progress_bar",
    "tensorboard",
    "max_checkpoints_to_keep",
    "checkpoint_every_epochs",
    "eval_batch_size",
    "max_wall_seconds",
)


SCHEDULES = ("plateau", "cosine")


RECIPES: dict[str, PretrainSettings] = {
    # MDsim configs/md17/schnet.yml: Adam 1e-3, batch 100, warm-up 5000 steps x0.2,
    # plateau 0.8/5, min lr 1e-6, <= 10 000 epochs, 0.05 E + 0.95 F.
    "schnet": PretrainSettings(),
    # StABlE-Training Ac-Ala3 NequIP: Adam 5e-3, batch 5, plateau 0.8/5, EMA 0.99,
    # 1000 F + 1 per-atom E MSE, early stopping patience 50.
    "nequip": PretrainSettings(
        learning_rate=5e-3,
        batch_size=5,
        energy_weight=1.0,
        force_weight=1000.0,
        per_atom_energy=True,
        warmup_steps=0,
        ema_decay=0.99,
        early_stopping_patience=50,
    ),
    # MDsim configs/water/gemnet-T.yml: AdamW (AMSGrad, eps 1e-7, wd 2e-6) 1e-3, batch 1,
    # plateau 0.8/5, EMA 0.999, clip 10, l2mae 0.999 F + 0.001 E, <= 2000 epochs.
    "gemnet_t": PretrainSettings(
        learning_rate=1e-3,
        batch_size=1,
        max_epochs=2000,
        energy_weight=0.001,
        force_weight=0.999,
        energy_loss="mae",
        force_loss="l2mae",
        optimizer="adamw",
        adam_eps=1e-7,
        amsgrad=True,
        weight_decay=2e-6,
        gradient_clip_norm=10.0,
        warmup_steps=0,
        ema_decay=0.999,
    ),
}


def recipe(kind: str, **overrides) -> PretrainSettings:
    """The authors' settings for model ``kind`` (``"schnet"``, ``"nequip"``, ``"gemnet_t"``)."""
    if kind not in RECIPES:
        raise ValueError(f"no pretraining recipe for {kind!r}; known: {sorted(RECIPES)}")
    return dataclasses.replace(RECIPES[kind], **overrides)


class PretrainState(NamedTuple):
    """Everything the loop needs to continue exactly (checkpointed each epoch).

    Attributes:
      params: current parameters (bare model, normalised energy units).
      opt_state: optax state.
      ema_params: EMA of ``params`` (equal to ``params`` when EMA is off).
      best_params: evaluated parameters with the best validation force MAE so far.
      step: ``[]`` int32 optimizer steps taken.
      key: PRNG key of the shuffling (raw ``uint32[2]``).
      epoch: completed epochs.
      plateau: :class:`~stabie_jax.plateau.PlateauState` of the learning rate.
      best_val_force_mae: eV/Å.
      best_epoch: epoch of ``best_params``.
      epochs_without_improvement: for early stopping.
    """

    params: Any
    opt_state: Any
    ema_params: Any
    best_params: Any
    step: jax.Array
    key: jax.Array
    epoch: int
    plateau: PlateauState
    best_val_force_mae: float
    best_epoch: int
    epochs_without_improvement: int


def make_optimizer(settings: PretrainSettings) -> optax.GradientTransformation:
    """Unit-learning-rate optimizer direction (the loop multiplies by ``-lr(step)``)."""
    parts = []
    if settings.gradient_clip_norm is not None:
        parts.append(optax.clip_by_global_norm(settings.gradient_clip_norm))
    if settings.amsgrad:
        parts.append(optax.scale_by_amsgrad(eps=settings.adam_eps))
    else:
        parts.append(optax.scale_by_adam(eps=settings.adam_eps))
    if settings.optimizer == "adamw":
        parts.append(optax.add_decayed_weights(settings.weight_decay))
    elif settings.optimizer != "adam":
        raise ValueError(f"optimizer must be 'adam' or 'adamw', got {settings.optimizer!r}")
    return optax.chain(*parts)


def warmup_multiplier(step, warmup_steps: int, warmup_factor: float):
    """Linear warm-up factor ``w(step)`` from ``warmup_factor`` to 1 (jit-friendly)."""
    if warmup_steps <= 0:
        return jnp.ones((), jnp.float32)
    frac = jnp.minimum(step.astype(jnp.float32) / warmup_steps, 1.0)
    return warmup_factor + (1.0 - warmup_factor) * frac


def cosine_multiplier(step, total_steps, final_factor: float):
    """Cosine factor from 1 at step 0 to ``final_factor`` at ``total_steps`` (then constant)."""
    frac = jnp.clip(step.astype(jnp.float32) / jnp.maximum(total_steps, 1), 0.0, 1.0)
    return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
