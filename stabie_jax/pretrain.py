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

import dataclasses
import functools
import json
import logging
import math
import pathlib
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stabie_jax import units
from stabie_jax.checkpoint import ModelMetadata
from stabie_jax.losses import LabelledFrames, check_loss_names, make_qm_loss_fn
from stabie_jax.models.potential import Potential
from stabie_jax.models.registry import model_hparams
from stabie_jax.models.scale_shift import (
    affine_potential,
    fit_energy_shift,
    force_rms,
    shift_table,
)
from stabie_jax.plateau import PlateauState, plateau_init, plateau_update
from stabie_jax.run_loop import ResumableLoop

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

REPORT_FILE = "report.json"


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


def _as_frames(data, name: str, energy_offset: float = 0.0) -> LabelledFrames:
    """Validated device arrays; ``energy_offset`` (eV) is subtracted in float64 first."""
    try:
        positions, energies, forces = data.positions, data.energies, data.forces
    except AttributeError as err:
        raise ValueError(
            f"{name} must have .positions [F,N,3], .energies [F], .forces [F,N,3]: {err}"
        ) from err
    if energies is None or forces is None:
        raise ValueError(f"{name} has no energy/force labels; pretraining needs labelled frames")
    energies = np.asarray(energies, dtype=np.float64) - energy_offset
    frames = LabelledFrames(jnp.asarray(positions), jnp.asarray(energies), jnp.asarray(forces))
    f, n = frames.positions.shape[:2]
    if frames.energies.shape != (f,) or frames.forces.shape != (f, n, 3) or f == 0:
        raise ValueError(
            f"{name}: inconsistent shapes positions {frames.positions.shape}, energies "
            f"{frames.energies.shape}, forces {frames.forces.shape}"
        )
    return frames


def _batches(n_frames: int, batch_size: int, order: np.ndarray | None = None):
    """``[n_batches, batch_size]`` indices and weights (padding repeats frame 0, weight 0)."""
    order = np.arange(n_frames) if order is None else np.asarray(order)
    n_batches = -(-n_frames // batch_size)
    pad = n_batches * batch_size - n_frames
    idx = np.concatenate([order, np.zeros(pad, dtype=order.dtype)]).reshape(n_batches, -1)
    w = np.concatenate([np.ones(n_frames), np.zeros(pad)]).reshape(n_batches, -1)
    return jnp.asarray(idx, jnp.int32), jnp.asarray(w, jnp.float32)


def _gather(frames: LabelledFrames, idx) -> LabelledFrames:
    return LabelledFrames(*(None if x is None else jnp.take(x, idx, axis=0) for x in frames))


def precompute_neighbor_indices(neighbor_fn, positions, **neighbor_kwargs) -> jax.Array:
    """Sparse neighbour indices of every frame, with one capacity that fits all of them.

    Args:
      neighbor_fn: JAX-MD ``partition.neighbor_list(..., format=partition.Sparse)`` functions
        of the space the potential uses.
      positions: ``[F, N, 3]`` Å.
      **neighbor_kwargs: forwarded to ``allocate``/``update`` (e.g. ``box=``).

    Returns:
      ``[F, 2, capacity]`` int32 (padding ``N``), for ``LabelledFrames.neighbor_idx``.
    """
    positions = jnp.asarray(positions)
    update = jax.jit(
        jax.vmap(lambda r, nbrs: neighbor_fn.update(r, nbrs, **neighbor_kwargs), (0, None))
    )
    extra = 0
    while True:
        template = neighbor_fn.allocate(positions[0], extra_capacity=extra, **neighbor_kwargs)
        nbrs = update(positions, template)
        if not bool(jnp.any(nbrs.did_buffer_overflow)):
            return nbrs.idx
        extra = 2 * extra + max(8, template.idx.shape[-1] // 4)


def _static_settings(settings: PretrainSettings) -> PretrainSettings:
    """Settings with the fields that do not affect the compiled steps normalised (jit cache key)."""
    return dataclasses.replace(
        settings,
        max_epochs=0,
        progress_bar=False,
        tensorboard=False,
        checkpoint_every_epochs=1,
        max_checkpoints_to_keep=0,
        eval_batch_size=None,
        max_wall_seconds=None,
        seed=0,
    )


def _loss_fn(potential: Potential, settings: PretrainSettings, energy_scale, per_atom_shift):
    return make_qm_loss_fn(
        affine_potential(potential, energy_scale, per_atom_shift),
        energy_weight=settings.energy_weight,
        force_weight=settings.force_weight,
        per_atom_energy=settings.per_atom_energy,
        energy_loss=settings.energy_loss,
        force_loss=settings.force_loss,
    )


@functools.partial(jax.jit, static_argnames=("potential", "settings"))
def _eval_batch(potential, settings, params, energy_scale, per_atom_shift, frames, idx, w):
    loss_fn = _loss_fn(potential, settings, energy_scale, per_atom_shift)
    loss, errors = loss_fn(params, _gather(frames, idx), w)
    w_sum = jnp.sum(w)
    return jnp.stack(
        [
            loss * w_sum,
            jnp.sum(w * jnp.abs(errors.energy)),
            jnp.sum(w * jnp.mean(jnp.abs(errors.forces), axis=(-1, -2))),
            w_sum,
        ]
    )


def make_evaluate_fn(
    potential: Potential,
    settings: PretrainSettings,
    energy_scale: float,
    per_atom_shift,
):
    """``evaluate(params, frames) -> dict`` of the loss and MAEs (eV, eV/Å) of the physical
    potential ``energy_scale · potential + per_atom_shift``, in jitted batches."""
    batch_size = settings.eval_batch_size or settings.batch_size
    static = _static_settings(settings)
    scale = jnp.float32(energy_scale)
    shift = jnp.asarray(per_atom_shift, jnp.float32)

    def evaluate(params, frames: LabelledFrames) -> dict:
        n_frames, n_atoms = frames.positions.shape[:2]
        idx, w = _batches(n_frames, min(batch_size, n_frames))
        total = np.zeros(4)
        for b in range(idx.shape[0]):
            sums = _eval_batch(
                potential=potential,
                settings=static,
                params=params,
                energy_scale=scale,
                per_atom_shift=shift,
                frames=frames,
                idx=idx[b],
                w=w[b],
            )
            total += np.asarray(sums, dtype=np.float64)
        loss, e_abs, f_abs, count = total
        return _mae_dict(loss / count, e_abs / count, f_abs / count, n_atoms)

    return evaluate


def _mae_dict(loss, energy_mae, force_mae, n_atoms) -> dict:
    return {
        "loss": float(loss),
        "energy_mae_ev": float(energy_mae),
        "energy_mae_kcal_per_mol": float(units.ev_to_kcal_per_mol(energy_mae)),
        "energy_mae_per_atom_ev": float(energy_mae / n_atoms),
        "force_mae_ev_per_angstrom": float(force_mae),
        "force_mae_kcal_per_mol_per_angstrom": float(units.ev_to_kcal_per_mol(force_mae)),
    }


@functools.partial(jax.jit, static_argnames=("potential", "settings"))
def _train_epoch(
    potential,
    settings,
    params,
    opt_state,
    ema,
    step,
    plateau_lr,
    total_steps,
    energy_scale,
    per_atom_shift,
    frames,
    idx,
    w,
):
    """One epoch: ``lax.scan`` of optimizer steps over ``[n_batches, batch]`` indices.

    ``total_steps`` (optimizer steps of the whole run) sets the cosine schedule's length."""
    loss_fn = _loss_fn(potential, settings, energy_scale, per_atom_shift)
    optimizer = make_optimizer(settings)
    ema_decay = settings.ema_decay

    def step_fn(carry, batch):
        params, opt_state, ema, step = carry
        idx, w = batch
        (loss, errors), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, _gather(frames, idx), w
        )
        lr = plateau_lr * warmup_multiplier(step, settings.warmup_steps, settings.warmup_factor)
        if settings.schedule == "cosine":
            lr = lr * cosine_multiplier(step, total_steps, settings.cosine_final_factor)
        direction, opt_state = optimizer.update(grads, opt_state, params)
        params = jax.tree.map(lambda p, d: p - lr * d, params, direction)
        if ema_decay is None:
            ema = params
        else:
            ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params)
        w_sum = jnp.sum(w)
        metrics = jnp.stack(
            [
                loss * w_sum,
                jnp.sum(w * jnp.abs(errors.energy)),
                jnp.sum(w * jnp.mean(jnp.abs(errors.forces), axis=(-1, -2))),
                w_sum,
                lr,
            ]
        )
        return (params, opt_state, ema, step + 1), metrics

    return jax.lax.scan(step_fn, (params, opt_state, ema, step), (idx, w))


def _settings_json(settings: PretrainSettings) -> dict:
    return dataclasses.asdict(settings)


def _check_resume_compatible(saved: dict, settings: PretrainSettings, workdir) -> None:
    current = _settings_json(settings)
    # The cosine schedule's length is max_epochs: changing it would change the past schedule.
    fixed = {"max_epochs"} if settings.schedule == "cosine" else set()
    saved = {"schedule": "plateau", "cosine_final_factor": 0.01, "max_wall_seconds": None, **saved}
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r} vs now {v!r}"
        for k, v in current.items()
        if (k not in _RESUMABLE_CHANGES or k in fixed) and saved.get(k) != v
    ]
    if diffs:
        raise ValueError(
            f"cannot resume the pretraining run in {workdir} with different settings "
            f"({'; '.join(diffs)}); use a new workdir or the original settings"
        )


class PretrainData(NamedTuple):
    """Frames ready for training, with the normalisation fitted on the training set.

    Attributes:
      train, val: :class:`~stabie_jax.losses.LabelledFrames` with the per-species reference
        energy taken off the labels (float64 subtraction, eV); with ``neighbor_idx`` when the
        potential uses a neighbour list.
      test: the same for held-out frames, or None.
      energy_shift: ``{Z: eV}`` per-species energy (empty when not fitted).
      energy_scale: RMS of the training forces, eV/Å (1.0 when not fitted).
    """

    train: LabelledFrames
    val: LabelledFrames
    test: LabelledFrames | None
    energy_shift: dict
    energy_scale: float


def prepare_data(
    train, val, test, atomic_numbers, settings: PretrainSettings, neighbor_fn=None
) -> PretrainData:
    """Validate the frames, fit the energy shift/scale on ``train`` and apply them.

    The per-species reference energy (order 1e4 eV for molecules) is taken off the labels in
    float64 here, so float32 training resolves energy errors far below the float32 spacing of
    the absolute energies (2 meV at 1.7e4 eV); the model never adds it back.
    """
    train_frames = _as_frames(train, "train")
    z = np.asarray(atomic_numbers)
    if z.shape != (train_frames.positions.shape[1],):
        raise ValueError(
            f"atomic_numbers has shape {z.shape} but frames have "
            f"{train_frames.positions.shape[1]} atoms"
        )
    energy_shift = (
        fit_energy_shift(np.asarray(train.energies, dtype=np.float64), z)
        if settings.fit_energy_shift
        else {}
    )
    energy_scale = force_rms(train_frames.forces) if settings.fit_energy_scale else 1.0
    if not energy_scale > 0.0:
        raise ValueError("training forces are all zero: set fit_energy_scale=False")
    energy_offset = float(np.sum(shift_table(energy_shift)[z]))
    frames = [_as_frames(train, "train", energy_offset), _as_frames(val, "val", energy_offset)]
    frames.append(None if test is None else _as_frames(test, "test", energy_offset))
    if neighbor_fn is not None:
        frames = [
            None
            if f is None
            else f._replace(neighbor_idx=precompute_neighbor_indices(neighbor_fn, f.positions))
            for f in frames
        ]
    return PretrainData(*frames, energy_shift, energy_scale)


def initial_state(params, settings: PretrainSettings) -> PretrainState:
    """The state before the first epoch (also the template checkpoints are restored onto)."""
    return PretrainState(
        params=params,
        opt_state=make_optimizer(settings).init(params),
        ema_params=params,
        best_params=params,
        step=jnp.zeros((), jnp.int32),
        key=jax.random.PRNGKey(settings.seed),
        epoch=0,
        plateau=plateau_init(settings.learning_rate),
        best_val_force_mae=math.inf,
        best_epoch=0,
        epochs_without_improvement=0,
    )


def make_epoch_fn(potential: Potential, settings: PretrainSettings, data: PretrainData, evaluate):
    """``epoch(state) -> (state, record)``: one pass over the shuffled training frames.

    One jitted scan over the epoch's batches, then the EMA parameters are evaluated on the
    validation frames (``evaluate`` from :func:`make_evaluate_fn`), the plateau schedule
    advances (plateau schedule only) and the best parameters are kept. ``record`` holds the
    epoch's training and validation metrics. Raises ``FloatingPointError`` on a non-finite
    training loss.
    """
    static = _static_settings(settings)
    n_train = int(data.train.positions.shape[0])
    per_atom_shift = jnp.zeros(data.train.positions.shape[1], jnp.float32)  # off the labels

    def epoch_fn(state: PretrainState) -> tuple[PretrainState, dict]:
        order = np.asarray(
            jax.random.permutation(jax.random.fold_in(state.key, state.epoch), n_train)
        )
        idx, w = _batches(n_train, min(settings.batch_size, n_train), order)
        (params, opt_state, ema, step), batch_metrics = _train_epoch(
            potential=potential,
            settings=static,
            params=state.params,
            opt_state=state.opt_state,
            ema=state.ema_params,
            step=state.step,
            plateau_lr=jnp.float32(state.plateau.learning_rate),
            total_steps=jnp.int32(settings.max_epochs * idx.shape[0]),
            energy_scale=jnp.float32(data.energy_scale),
            per_atom_shift=per_atom_shift,
            frames=data.train,
            idx=idx,
            w=w,
        )
        sums = np.asarray(batch_metrics, dtype=np.float64)
        count = sums[:, 3].sum()
        train_loss = sums[:, 0].sum() / count
        if not np.isfinite(train_loss):
            raise FloatingPointError(
                f"non-finite training loss at epoch {state.epoch + 1}; lower the learning rate"
            )
        val_metrics = evaluate(ema, data.val)
        plateau = (
            state.plateau
            if settings.schedule == "cosine"
            else plateau_update(
                state.plateau,
                val_metrics["loss"],
                factor=settings.plateau_factor,
                patience=settings.plateau_patience,
                min_lr=settings.min_learning_rate,
                threshold=settings.plateau_threshold,
            )
        )
        val_force_mae = val_metrics["force_mae_ev_per_angstrom"]
        improved = val_force_mae < state.best_val_force_mae
        epoch = state.epoch + 1
        state = PretrainState(
            params=params,
            opt_state=opt_state,
            ema_params=ema,
            best_params=ema if improved else state.best_params,
            step=step,
            key=state.key,
            epoch=epoch,
            plateau=plateau,
            best_val_force_mae=val_force_mae if improved else state.best_val_force_mae,
            best_epoch=epoch if improved else state.best_epoch,
            epochs_without_improvement=0 if improved else state.epochs_without_improvement + 1,
        )
        record = {
            "epoch": epoch,
            "step": int(step),
            "lr": float(sums[-1, 4]),
            "plateau_lr": plateau.learning_rate,
            "train_loss": float(train_loss),
            "train_energy_mae_ev": float(sums[:, 1].sum() / count),
            "train_force_mae_ev_per_angstrom": float(sums[:, 2].sum() / count),
            **{f"val_{k}": v for k, v in val_metrics.items()},
        }
        return state, record

    return epoch_fn


def _stop_reason(state: PretrainState, settings: PretrainSettings, elapsed: float) -> str | None:
    if settings.max_wall_seconds is not None and elapsed >= settings.max_wall_seconds:
        return "wall_clock"
    if (
        settings.early_stopping_patience is not None
        and state.epochs_without_improvement >= settings.early_stopping_patience
    ):
        return "early_stopping"
    if settings.stop_at_min_learning_rate and (
        state.plateau.learning_rate <= settings.min_learning_rate
    ):
        return "min_learning_rate"
    return None


def _check_same_training_set(metadata: dict, data: PretrainData, workdir) -> None:
    saved_shift = {int(k): v for k, v in metadata["energy_shift"].items()}
    if metadata["energy_scale"] != data.energy_scale or saved_shift != data.energy_shift:
        raise ValueError(
            f"the training set differs from the one of the checkpoints in {workdir} "
            "(energy shift/scale changed); use a new workdir"
        )


def pretrain(
    potential: Potential,
    params,
    train,
    val,
    *,
    atomic_numbers,
    settings: PretrainSettings,
    workdir,
    test=None,
    neighbor_fn=None,
    fault_check=None,
) -> tuple[Any, dict]:
    """Train ``params`` of a bare potential on energies and forces; resume if ``workdir`` has
    checkpoints.

    Args:
      potential: :class:`Potential` of the bare model (dense edges; ``neighbor=None``). Its
        outputs are treated as normalised energies; the fitted shift/scale turn them into eV.
      params: initial parameters.
      train, val: reference frames with ``.positions [F,N,3]`` Å, ``.energies [F]`` eV,
        ``.forces [F,N,3]`` eV/Å (e.g. :class:`~stabie_jax.losses.LabelledFrames`).
      atomic_numbers: ``[N]`` ints, as ``potential`` was built.
      settings: :class:`PretrainSettings`.
      workdir: output directory (checkpoints/, metrics.jsonl, report.json).
      test: optional held-out frames for the final report.
      neighbor_fn: for a potential built with ``use_neighbor_list=True`` (bulk systems): the
        JAX-MD sparse ``neighbor_list`` of its space. Per-frame neighbour indices are then
        precomputed once (:func:`precompute_neighbor_indices`) and batched with the frames.
      fault_check: ``check(positions [F, N, 3]) -> None`` run on the training and validation
        frames before any compute, raising for frames the model cannot evaluate (a GemNet-T
        table overflow: :func:`stabie_jax.models.registry.frames_fault_check`).

    Returns:
      ``(params, report)``: the parameters with the best validation force MAE (bare model),
      and the report dict also written to ``workdir/report.json``, including
      ``energy_scale`` and ``energy_shift`` (``{Z: eV}``) to store with the model.
    """
    workdir = pathlib.Path(workdir).expanduser().resolve()
    if fault_check is not None:
        fault_check(np.concatenate([np.asarray(train.positions), np.asarray(val.positions)]))
    data = prepare_data(train, val, test, atomic_numbers, settings, neighbor_fn)
    check_loss_names(settings.energy_loss, settings.force_loss)
    if settings.schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {settings.schedule!r}")
    per_atom_shift = np.zeros(np.shape(atomic_numbers), np.float32)  # already off the labels
    evaluate = make_evaluate_fn(potential, settings, data.energy_scale, per_atom_shift)
    epoch_fn = make_epoch_fn(potential, settings, data, evaluate)
    checkpoint_metadata = {
        "settings": _settings_json(settings),
        "energy_scale": data.energy_scale,
        "energy_shift": data.energy_shift,
    }
    with ResumableLoop(
        workdir,
        counter="epoch",
        total=settings.max_epochs,
        desc="pretrain",
        progress=settings.progress_bar,
        max_to_keep=settings.max_checkpoints_to_keep,
        tensorboard=settings.tensorboard,
    ) as loop:
        state, metadata, _ = loop.resume(initial_state(params, settings))
        if metadata is None:
            elapsed, stop_reason = 0.0, None
            initial = evaluate(state.params, data.val)
            record = {"epoch": 0, "step": 0, **{f"val_{k}": v for k, v in initial.items()}}
            loop.log(record, advance=False)
        else:
            _check_resume_compatible(metadata["settings"], settings, workdir)
            _check_same_training_set(metadata, data, workdir)
            stop_reason = metadata.get("stop_reason")
            elapsed = float(metadata.get("metrics", {}).get("wall_seconds", 0.0))
            logging.info("resumed pretraining from epoch %d in %s", state.epoch, workdir)
        while stop_reason is None and state.epoch < settings.max_epochs:
            t0 = time.perf_counter()
            state, record = epoch_fn(state)
            elapsed += time.perf_counter() - t0
            stop_reason = _stop_reason(state, settings, elapsed)
            record.update(epoch_seconds=time.perf_counter() - t0, wall_seconds=elapsed)
            # Log first: lines past the checkpoint a resumed run starts from are dropped.
            loop.log(
                record,
                lr=f"{record['lr']:.2e}",
                loss=f"{record['train_loss']:.3g}",
                val_f_mae=f"{record['val_force_mae_ev_per_angstrom']:.4f}",
            )
            if (
                state.epoch % settings.checkpoint_every_epochs == 0
                or stop_reason is not None
                or state.epoch >= settings.max_epochs
            ):
                blob = {**checkpoint_metadata, "metrics": record, "stop_reason": stop_reason}
                loop.save(state.epoch, state, blob)

    report = {
        "epochs": state.epoch,
        "steps": int(state.step),
        "best_epoch": state.best_epoch,
        "stop_reason": stop_reason or "max_epochs",
        "final_learning_rate": state.plateau.learning_rate,
        "energy_scale": data.energy_scale,
        "energy_shift": {str(k): v for k, v in data.energy_shift.items()},
        "n_train": int(data.train.positions.shape[0]),
        "n_val": int(data.val.positions.shape[0]),
        "val": evaluate(state.best_params, data.val),
        "settings": _settings_json(settings),
    }
    if data.test is not None:
        report["n_test"] = int(data.test.positions.shape[0])
        report["test"] = evaluate(state.best_params, data.test)
    (workdir / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return state.best_params, report


def pretrained_model_metadata(
    kind: str, module, atomic_numbers, cutoff_angstrom: float, report: dict, **extra
) -> ModelMetadata:
    """:class:`~stabie_jax.checkpoint.ModelMetadata` for the result of :func:`pretrain`.

    Carries the fitted energy scale and per-species shift, so that
    ``save_model_checkpoint(dir, params, pretrained_model_metadata(...))`` gives a checkpoint
    whose :func:`~stabie_jax.checkpoint.make_model_potential` reproduces the trained potential.

    Args:
      kind: registry name of ``module`` (e.g. ``"schnet"``).
      module: the Flax module that was trained.
      atomic_numbers: ``[N]`` ints.
      cutoff_angstrom: the model's cutoff, Å.
      report: the report returned by :func:`pretrain`.
      **extra: more JSON-able entries for ``metadata.extra`` (e.g. dataset name).
    """
    return ModelMetadata(
        kind=kind,
        hparams=model_hparams(module),
        atomic_numbers=tuple(int(z) for z in np.asarray(atomic_numbers)),
        cutoff_angstrom=float(cutoff_angstrom),
        energy_scale=float(report["energy_scale"]),
        energy_shift={int(k): float(v) for k, v in report["energy_shift"].items()},
        extra={"pretrain_report": report, **extra},
    )
