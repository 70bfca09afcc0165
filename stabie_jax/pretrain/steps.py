"""The jitted pieces of pretraining: the loss, the evaluation over a frame set, one epoch as a
``lax.scan`` over its batches (:func:`make_epoch_fn`) and the initial :class:`PretrainState`."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from stabie_jax import units
from stabie_jax.losses import LabelledFrames, make_qm_loss_fn
from stabie_jax.models.potential import Potential
from stabie_jax.models.scale_shift import (
    affine_potential,
)
from stabie_jax.plateau import plateau_init, plateau_update
from stabie_jax.pretrain.frames import PretrainData, _batches, _gather
from stabie_jax.pretrain.settings import (
    PretrainSettings,
    PretrainState,
    cosine_multiplier,
    make_optimizer,
    warmup_multiplier,
)

__all__ = [
    "initial_state",
    "make_epoch_fn",
    "make_evaluate_fn",
]


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
