"""ml_collections configs of the experiments; ``get_config(variant)`` in each module."""

from __future__ import annotations

from collections.abc import Callable

import ml_collections


def build_variant(
    system: str,
    base_config: Callable[[], ml_collections.ConfigDict],
    variants: dict[str, Callable],
    variant: str | None,
) -> ml_collections.ConfigDict:
    """``variants[variant](base_config())`` with ``config.variant`` set (default ``paper``)."""
    variant = variant or "paper"
    if variant not in variants:
        raise ValueError(
            f"unknown {system} config variant {variant!r}; choose from {list(variants)}"
        )
    config = variants[variant](base_config())
    config.variant = variant
    return config


def run_fields(system: str) -> ml_collections.ConfigDict:
    """A config with the run-level fields every experiment has."""
    c = ml_collections.ConfigDict()
    c.system = system
    c.seed = 0
    c.stages = "pretrain,stabie,evaluate"
    # Stages whose outputs may be replaced when their settings differ from the ones recorded in
    # workdir/stages.json ("pretrain", "stabie"); old outputs move to workdir/replaced/.
    c.overwrite_stages = ""
    # A stabie_jax model checkpoint directory to start from instead of pretraining (e.g. one
    # written by `python -m stabie_jax.interop import-schnet ...`).
    c.init_checkpoint = ""
    c.float64 = False
    c.progress = True
    return c


def schedule_fields(stabie: ml_collections.ConfigDict, *, reset_probability: float) -> None:
    """The authors' phase/learning-rate schedule, shared by all systems.

    See docs/method.md, Learning-rate schedule, and docs/paper_settings.md, Common to all systems.

    f_max 0.75, f_min 0, ReduceLROnPlateau on the unstable fraction (factor 0.2, patience 10),
    min_lr = α/25, 500 epochs, global gradient-norm clip 1 (authors' convention), checkpoints
    every epoch, 4 saved epoch states per replica (rewinds and resets), no wall-clock budget.
    """
    stabie.f_max = 0.75
    stabie.f_min = 0.0
    stabie.reset_probability = reset_probability
    stabie.max_epochs = 500
    stabie.max_learning_epochs = 100
    stabie.grad_clip_norm = 1.0
    stabie.plateau_factor = 0.2
    stabie.plateau_patience = 10
    stabie.min_lr_fraction = 1.0 / 25.0
    stabie.checkpoint_every = 1
    stabie.history_length = 4
    stabie.max_wall_hours = 0.0  # 0 = no wall-clock budget
