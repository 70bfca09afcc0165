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
    # TensorBoard event files beside each stage's metrics.jsonl (tensorboard --logdir WORKDIR).
    c.tensorboard = False
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
    # What the clip clips: "sum" (the authors': the combined gradient) or "each_term" (the
    # observable and the lambda-weighted QM gradients separately, then added).
    stabie.grad_clip_scope = "sum"
    # With "each_term": the QM term's clip as a fraction of grad_clip_norm.
    stabie.qm_clip_fraction = 1.0
    # When the observable and the lambda-weighted QM gradients conflict (negative inner
    # product), drop the observable gradient's component along the QM one before clipping
    # (docs/learning_step.md, Projecting a conflicting observable term). False: the authors'.
    stabie.project_conflict = False
    stabie.plateau_factor = 0.2
    stabie.plateau_patience = 10
    stabie.min_lr_fraction = 1.0 / 25.0
    stabie.checkpoint_every = 1
    stabie.history_length = 4
    stabie.max_wall_hours = 0.0  # 0 = no wall-clock budget
    # Sample reuse by reweighting (0 = off: the authors' one optimizer step per simulation):
    # further steps on the same frames while Kish N_eff/N >= reuse_min_neff, at most
    # max_reuse_steps per simulation (docs/method.md, Sample reuse).
    stabie.reuse_min_neff = 0.0
    stabie.max_reuse_steps = 10
    # Every this many learning epochs (0 = never) also log obs_split_cosine: the cosine between
    # the observable gradients of two random halves of the replicas (the estimator's
    # signal-to-noise; costs two more observable gradients in those epochs).
    stabie.split_cosine_every = 0
    # Frames that feed a learning step: "all" (the authors') or "within_criterion" (each
    # replica's frames before its first failure of the training stability criterion).
    stabie.learning_samples = "all"


MD_LAYOUTS = ("auto", "vmap")
"""Choices of ``config.md.layout`` (:func:`experiments.config_reader.replica_batch_size`)."""

# --- validation at setup, before any compute ---------------------------------------------------
_POSITIVE = (
    "md.temperature_kelvin",
    "md.timestep_fs",
    "md.thermostat_ttime_steps",
    "md.langevin_gamma_per_ps",
    "data.n_train",
    "data.n_val",
    "data.n_test",
    "observable.r_max_angstrom",
    "observable.n_bins",
    "observable.sigma_angstrom",
    "observable.rdf_r_max_angstrom",
    "observable.rdf_n_bins",
    "stabie.n_replicas",
    "stabie.steps_per_epoch",
    "stabie.sample_every",
    "stabie.learning_rate",
    "stabie.qm_clip_fraction",
    "stabie.max_epochs",
    "stabie.history_length",
    "stabie.bond_deviation_angstrom",
    "stabie.min_intermolecular_angstrom",
    "stabie.qm_batch_size",
    "evaluate.n_replicas",
    "evaluate.length_ps",
    "evaluate.check_every_steps",
    "evaluate.sample_every",
    "evaluate.bond_deviation_angstrom",
    "evaluate.rdf_mae_threshold",
    "evaluate.rdf_r_max_angstrom",
    "evaluate.min_intermolecular_angstrom",
)
_NON_NEGATIVE = (
    "data.reference_temperature_kelvin",  # 0 = the simulation temperature
    "stabie.qm_weight",
    "stabie.qm_batches_per_step",
    "stabie.grad_clip_norm",
    "stabie.max_wall_hours",
    "stabie.max_learning_epochs",
    "stabie.max_reuse_steps",
    "stabie.split_cosine_every",
    "evaluate.transfer_length_ps",
    "evaluate.vacf_window_steps",
    "evaluate.checkpoint_every_seconds",
    "md.replica_batch_size",
    "stabie.estimator_chunk_size",
    "stabie.qm_chunk_size",
)
_FRACTIONS = (
    "stabie.f_max",
    "stabie.f_min",
    "stabie.reset_probability",
    "stabie.reuse_min_neff",
    "evaluate.stop_fraction",
)
MAX_TIMESTEP_FS_WITH_HYDROGEN = 2.0
_MISSING = object()


def _lookup(config, path: str):
    node = config
    for part in path.split("."):
        if not hasattr(node, "keys") or part not in node:
            return _MISSING
        node = node[part]
    return node


def check_config(config) -> list[str]:
    """Refuse physically or logically invalid settings before any compute.

    Raises:
      ValueError: naming every offending ``config.<key>``, its value and the rule.

    Returns:
      Warnings (also worth logging), e.g. a timestep above 2 fs for systems with hydrogen.
    """
    problems = []

    def number(path):
        value = _lookup(config, path)
        if value is _MISSING or value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"config.{path} = {value!r} must be a number")
            return None
        return value

    for path in _POSITIVE:
        value = number(path)
        if value is not None and not value > 0:
            problems.append(f"config.{path} = {value!r} must be > 0")
    for path in _NON_NEGATIVE:
        value = number(path)
        if value is not None and not value >= 0:
            problems.append(f"config.{path} = {value!r} must be >= 0")
    for path in _FRACTIONS:
        value = number(path)
        if value is not None and not 0.0 <= value <= 1.0:
            problems.append(f"config.{path} = {value!r} must lie in [0, 1]")
    f_min, f_max = number("stabie.f_min"), number("stabie.f_max")
    if f_min is not None and f_max is not None and f_min >= f_max:
        problems.append(
            f"config.stabie.f_min = {f_min} must be below config.stabie.f_max = {f_max} (the "
            "learning phase ends at f_min, the simulation phase at f_max)"
        )
    batch = number("stabie.minibatch_size")
    if batch is not None and batch < 2:
        problems.append(
            f"config.stabie.minibatch_size = {batch!r} must be >= 2 "
            "(a covariance needs two samples)"
        )
    vacf, check = number("evaluate.vacf_window_steps"), number("evaluate.check_every_steps")
    if vacf and check and vacf > check:
        problems.append(
            f"config.evaluate.vacf_window_steps = {vacf} exceeds config.evaluate.check_every_steps"
            f" = {check} (the VACF is computed within each checked chunk); lower it or set 0 (off)"
        )
    transfer = _lookup(config, "evaluate.transfer_temperatures_kelvin")
    if transfer is not _MISSING and any(not float(t) > 0 for t in transfer or ()):
        problems.append(
            f"config.evaluate.transfer_temperatures_kelvin = {tuple(transfer)!r}: each must be > 0"
        )
    n_eval, n_test = number("evaluate.n_replicas"), number("data.n_test")
    stages = str(_lookup(config, "stages")) if _lookup(config, "stages") is not _MISSING else ""
    if n_eval is not None and n_test is not None and "evaluate" in stages and n_eval > n_test:
        problems.append(
            f"config.evaluate.n_replicas = {n_eval} exceeds config.data.n_test = {n_test}: "
            "the evaluation starts one replica from each held-out test frame; lower "
            "evaluate.n_replicas or raise data.n_test"
        )
    # configs stay importable without jax
    from stabie_jax.stabie import GRAD_CLIP_SCOPES, LEARNING_SAMPLES

    for path, choices in {
        "stabie.learning_samples": LEARNING_SAMPLES,
        "stabie.grad_clip_scope": GRAD_CLIP_SCOPES,
        "md.layout": MD_LAYOUTS,
    }.items():
        value = _lookup(config, path)
        if value is not _MISSING and value not in choices:
            problems.append(f"config.{path} = {value!r} must be one of {choices}")
    if problems:
        raise ValueError("invalid settings: " + "; ".join(problems))
    warnings = []
    dt = number("md.timestep_fs")
    if dt is not None and dt > MAX_TIMESTEP_FS_WITH_HYDROGEN:
        warnings.append(
            f"config.md.timestep_fs = {dt} fs is above {MAX_TIMESTEP_FS_WITH_HYDROGEN} fs: "
            "too long for bonds to hydrogen (all built-in systems have them); replicas may "
            "fail from integration error, not from the model"
        )
    return warnings
