"""The one place that reads an experiment config into library arguments.

Every pipeline (``molecule.py``, ``periodic.py``) asks here for the reader options of
``config.data``, the pretraining settings, the simulator's integrator arguments, the StABlE
settings (and the authors' α, λ, clip converted to the exact estimator), the stages to run and
the config recorded with a trained model. Units are converted where the value is read.
"""

from __future__ import annotations

import json
import math

from stabie_jax import hyperparameters, observables, units
from stabie_jax import pretrain as pretrain_lib

__all__ = [
    "training_observable",
    "STAGES",
    "chain_tau_factor",
    "exact_hyperparameters",
    "integrator_kwargs",
    "md_integrator",
    "overwrite_stages",
    "parse_stages",
    "pretrain_settings_from_config",
    "reader_options",
    "reference_temperature",
    "replica_batch_size",
    "stabie_run_config",
    "stabie_settings_kwargs",
]


STAGES = ("pretrain", "stabie", "evaluate")


def parse_stages(text: str, key: str = "stages", allow_empty: bool = False) -> tuple[str, ...]:
    """``"pretrain,stabie"`` → ``("pretrain", "stabie")``, validated (``key`` names the config
    field in errors; an empty list is an error unless ``allow_empty``)."""
    stages = tuple(s.strip() for s in str(text).split(",") if s.strip())
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown} in config.{key}; choose from {STAGES}")
    if not stages and not allow_empty:
        raise ValueError(
            f"config.{key} is empty: nothing to run; name some of {STAGES}, "
            f"e.g. --config.{key}={','.join(STAGES)}"
        )
    return stages


def overwrite_stages(config) -> frozenset[str]:
    """The stages named in ``config.overwrite_stages`` (validated; evaluate has its own store)."""
    named = parse_stages(config.get("overwrite_stages", ""), "overwrite_stages", allow_empty=True)
    if "evaluate" in named:
        raise ValueError(
            "config.overwrite_stages: 'evaluate' needs no overwrite (finished evaluations are "
            "keyed by their protocol and recomputed when it changes); name pretrain or stabie"
        )
    return frozenset(named)


def stabie_run_config(config) -> dict:
    """The config recorded with a StABlE run and its model: all but the evaluation and the run
    mechanics, so a rerun that only adds models to evaluate leaves the model's record alone."""
    recorded = json.loads(config.to_json_best_effort())
    for key in ("evaluate", "stages", "overwrite_stages", "progress", "tensorboard"):
        recorded.pop(key, None)
    return recorded


def reader_options(data_config) -> dict:
    """Reader keyword arguments set in ``config.data`` (the same for every stage)."""
    keys = ("labels", "energy_unit", "energy_key", "forces_key")
    return {k: data_config[k] for k in keys if k in data_config and data_config[k]}


def pretrain_settings_from_config(config) -> pretrain_lib.PretrainSettings:
    """The configured recipe with its overrides, seed and progress bar."""
    return pretrain_lib.recipe(
        config.pretrain.recipe,
        seed=int(config.seed),
        progress_bar=bool(config.progress),
        tensorboard=bool(config.get("tensorboard", False)),
        **dict(config.pretrain.overrides),
    )


def exact_hyperparameters(
    convention: str,
    learning_rate: float,
    qm_weight: float,
    clip: float | None,
    kT: float,
    B: int,
    *,
    reduction: str = "sum",
    n_observable: int | None = None,
) -> hyperparameters.ExactHyperparameters:
    """The config's (α, λ, clip) for the exact estimator: converted from the authors'
    convention (:func:`stabie_jax.hyperparameters.authors_hyperparameters_to_exact`, the update then
    equals theirs) or used as given (``"exact"``, gradient scale 1)."""
    if convention == "exact":
        return hyperparameters.ExactHyperparameters(learning_rate, qm_weight, clip, 1.0)
    if convention != "authors":
        raise ValueError(
            "config key stabie.hyperparameter_convention must be 'authors' or 'exact', got "
            f"{convention!r}"
        )
    return hyperparameters.authors_hyperparameters_to_exact(
        learning_rate, qm_weight, clip, kT, B, reduction=reduction, n_observable=n_observable
    )


def replica_batch_size(config) -> int | None:
    """``config.md.replica_batch_size`` for ``make_simulator``: 0 (or absent, as in configs saved
    before it existed) means None, i.e. ``vmap`` over all of a device's replicas."""
    return int(config.md.get("replica_batch_size", 0)) or None


def md_integrator(config, section: str = "md") -> str:
    """Integrator of ``config.<section>`` (``"md"`` for training, ``"evaluate"`` for the
    evaluation). Configs saved before the choice existed ran JAX-MD's chain; an evaluation
    without its own choice uses the training one."""
    default = str(config.md.get("integrator", "nose_hoover_chain"))
    if section == "md":
        return default
    return str(config[section].get("integrator", default))


def chain_tau_factor(config) -> float:
    """``tau / (ttime·dt)`` of JAX-MD's chain when a config chooses it: √2, the authors'
    thermostat time scale (:func:`stabie_jax.md.chain_tau_from_ttime`). Configs saved before
    ``md.integrator`` existed ran the chain at ``tau = ttime·dt`` and are read as they ran."""
    return math.sqrt(2.0) if "integrator" in config.md else 1.0


def integrator_kwargs(config, section: str = "md") -> dict:
    """``make_simulator`` keyword arguments choosing the integrator from the config (see
    :func:`md_integrator`), with the chain's ``tau`` (:func:`chain_tau_factor`)."""
    dt = units.fs_to_internal(float(config.md.timestep_fs))
    ttime = int(config.md.thermostat_ttime_steps)
    return dict(
        integrator=md_integrator(config, section),
        tau=chain_tau_factor(config) * ttime * dt,
        ttime_steps=int(config.md.thermostat_ttime_steps),
        langevin_gamma=units.per_ps_to_internal(float(config.md.get("langevin_gamma_per_ps", 0.1))),
    )


def stabie_settings_kwargs(config) -> dict:
    """The :class:`stabie_jax.stabie.StabieSettings` fields read from ``config.stabie`` as they
    are (phases, schedule, budget, checkpoints, reuse); the learning rate, λ, clip and gradient
    scale come from :func:`exact_hyperparameters`."""
    s = config.stabie
    return dict(
        steps_per_epoch=int(s.steps_per_epoch),
        sample_every=int(s.sample_every),
        f_max=float(s.f_max),
        f_min=float(s.f_min),
        plateau_factor=float(s.plateau_factor),
        plateau_patience=int(s.plateau_patience),
        min_lr_fraction=float(s.min_lr_fraction),
        reset_probability=float(s.reset_probability),
        max_learning_epochs=int(s.max_learning_epochs),
        max_epochs=int(s.max_epochs),
        max_wall_seconds=float(s.max_wall_hours) * 3600.0 if s.max_wall_hours else None,
        checkpoint_every=int(s.checkpoint_every),
        reuse_min_neff=float(s.get("reuse_min_neff", 0.0)),
        max_reuse_steps=int(s.get("max_reuse_steps", 10)),
        split_cosine_every=int(s.get("split_cosine_every", 0)),
        learning_samples=str(s.get("learning_samples", "all")),
    )


def reference_temperature(config) -> float | None:
    """Temperature (K) at which the reference frames were sampled, or None if unknown."""
    value = config.data.get("reference_temperature_kelvin", 0.0)
    return float(value) if value else None


def training_observable(config, system: observables.ObservableSystem):
    """``config.observable.kind`` (a registered trainable observable) built for ``system`` with
    the config's ``observable`` section as its options; a ``ValueError`` names the key."""
    o = config.observable
    observable = observables.get(str(o.get("kind", "h_of_r")), trainable=True)
    return observable.build(system, o.to_dict())
