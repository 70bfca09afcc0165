"""The one place that reads an experiment config into library arguments.

Every pipeline (``molecule.py``, ``periodic.py``) asks here for the reader options of
``config.data``, the pretraining settings, the simulator's integrator arguments, the StABlE
settings (and the authors' α, λ, clip converted to the exact estimator), the stages to run and
the config recorded with a trained model. Units are converted where the value is read.
"""

from __future__ import annotations

import json
import logging
import math

import jax

from stabie_jax import checkpoint, data, md, observables, units, workflows
from stabie_jax import pretrain as pretrain_lib
from stabie_jax.evaluation import store as evaluation_store

__all__ = [
    "DEFAULT_OBSERVABLE",
    "STAGES",
    "chain_tau_factor",
    "data_split_kwargs",
    "evaluation_fingerprint",
    "evaluation_run",
    "integrator_kwargs",
    "learning_inputs",
    "md_integrator",
    "molecule_data_spec",
    "molecule_evaluation",
    "molecule_observable_system",
    "molecule_stabie_inputs",
    "observable_kind",
    "overwrite_stages",
    "parse_stages",
    "periodic_evaluation",
    "periodic_md",
    "periodic_stabie_inputs",
    "pretrain_settings_from_config",
    "reader_options",
    "reference_temperature",
    "replica_batch_size",
    "stabie_run_config",
    "stabie_settings_kwargs",
    "training_observable",
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


def replica_batch_size(config, n_replicas: int) -> int | None:
    """``replica_batch_size`` of ``make_simulator`` for ``n_replicas`` replicas.

    ``config.md.replica_batch_size`` when it is > 0; otherwise ``config.md.layout`` decides:
    ``"auto"`` (the default, also for configs saved before it existed) is
    :func:`stabie_jax.md.auto_replica_batch_size` (chunks of 2 on a CPU whose devices split the
    replicas, ``vmap`` elsewhere), ``"vmap"`` is None (``vmap`` over each device's replicas).
    """
    explicit = int(config.md.get("replica_batch_size", 0))
    if explicit > 0:
        return explicit
    if str(config.md.get("layout", "auto")) == "vmap":
        return None
    devices = jax.devices()
    if len(devices) > 1 and not md.splits_replicas(int(n_replicas), devices):
        logging.warning(
            "%d replicas do not split evenly over the %d devices: they run on one device. "
            "Choose a multiple of %d replicas (or --host_devices) for the fast layout.",
            int(n_replicas),
            len(devices),
            len(devices),
        )
    return md.auto_replica_batch_size(int(n_replicas), devices)


def estimator_chunk_size(config, n_replicas: int) -> int | None:
    """Frames per chunk of the estimator's backward pass: ``config.stabie.estimator_chunk_size``
    when it is > 0; otherwise ``config.md.layout`` decides: ``"auto"`` is
    :func:`stabie_jax.md.auto_frame_chunk_size` (chunks of 4 on a CPU whose devices split the
    replicas, one pass elsewhere), ``"vmap"`` one pass."""
    explicit = int(config.stabie.get("estimator_chunk_size", 0))
    if explicit > 0:
        return explicit
    if str(config.md.get("layout", "auto")) == "vmap":
        return None
    return md.auto_frame_chunk_size(int(n_replicas))


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
    scale come from :func:`stabie_jax.hyperparameters.exact_hyperparameters`."""
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
        grad_clip_scope=str(s.get("grad_clip_scope", "sum")),
        qm_clip_fraction=float(s.get("qm_clip_fraction", 1.0)),
        project_conflict=bool(s.get("project_conflict", False)),
    )


def reference_temperature(config) -> float | None:
    """Temperature (K) at which the reference frames were sampled, or None if unknown."""
    value = config.data.get("reference_temperature_kelvin", 0.0)
    return float(value) if value else None


DEFAULT_OBSERVABLE = "h_of_r"
"""``config.observable.kind`` when a config does not set it."""


def observable_kind(config) -> str:
    """The registered name of the training observable, ``config.observable.kind``."""
    return str(config.observable.get("kind", DEFAULT_OBSERVABLE))


def molecule_observable_system(
    config, molecule: data.MoleculeData, temperature_kelvin: float
) -> observables.ObservableSystem:
    """What a molecule's observables are built from: its reference frames (never the test
    split) with their energies, sampled at ``config.data.reference_temperature_kelvin``, for
    a simulation at ``temperature_kelvin``, in free space."""
    return observables.ObservableSystem(
        atomic_numbers=molecule.atomic_numbers,
        reference_positions=molecule.reference.positions,
        temperature_kelvin=temperature_kelvin,
        reference_energies=molecule.reference.energies,
        reference_temperature_kelvin=reference_temperature(config),
    )


def training_observable(
    config, system: observables.ObservableSystem, estimators: tuple[str, ...] | None = None
) -> observables.BuiltObservable:
    """``config.observable.kind`` (a registered trainable observable) built for ``system`` with
    the config's ``observable`` section as its options; a ``ValueError`` names the key, also
    when the observable needs an estimator outside ``estimators`` (None = any)."""
    kind = observable_kind(config)
    built = observables.get(kind, trainable=True).build(system, config.observable.to_dict())
    if estimators is not None and built.estimator not in estimators:
        others = [n for n in observables.names(trainable=True) if n != kind]
        raise ValueError(
            f"config.observable.kind = {kind!r} uses the {built.estimator} estimator, which this "
            f"pipeline does not run (it runs {list(estimators)}); choose another of {others}"
        )
    return built


def learning_inputs(config) -> workflows.LearningInputs:
    """``config.stabie``'s learning-step settings (:class:`stabie_jax.workflows.LearningInputs`)."""
    s = config.stabie
    return workflows.LearningInputs(
        minibatch_size=int(s.minibatch_size),
        hyperparameter_convention=str(s.hyperparameter_convention),
        observable_reduction=str(s.get("observable_reduction", "sum")),
        observable_vjp=str(s.get("observable_vjp", "global")),
        learning_rate=float(s.learning_rate),
        qm_weight=float(s.qm_weight),
        grad_clip_norm=float(s.grad_clip_norm) if s.grad_clip_norm else None,
        settings_kwargs=stabie_settings_kwargs(config),
    )


def molecule_stabie_inputs(config) -> workflows.MoleculeStabieInputs:
    """``config.md`` and ``config.stabie`` as :class:`stabie_jax.workflows.MoleculeStabieInputs`."""
    s, m = config.stabie, config.md
    recipe = pretrain_lib.recipe(config.pretrain.recipe)
    return workflows.MoleculeStabieInputs(
        temperature_kelvin=float(m.temperature_kelvin),
        timestep_fs=float(m.timestep_fs),
        thermostat_ttime_steps=int(m.thermostat_ttime_steps),
        rescale_velocities=bool(m.rescale_velocities),
        replica_batch_size=replica_batch_size(config, int(s.n_replicas)),
        n_replicas=int(s.n_replicas),
        history_length=int(s.history_length),
        learning=learning_inputs(config),
        qm_batch_size=int(s.qm_batch_size),
        qm_batches_per_step=int(s.qm_batches_per_step),
        qm_energy_weight=float(recipe.energy_weight),
        qm_force_weight=float(recipe.force_weight),
        bond_deviation_angstrom=float(s.bond_deviation_angstrom),
        integrator=md_integrator(config),
        chain_tau_factor=chain_tau_factor(config),
        langevin_gamma_per_ps=float(m.get("langevin_gamma_per_ps", 0.1)),
        reanchor_energy=bool(s.get("reanchor_energy", False)),
        estimator_chunk_size=estimator_chunk_size(config, int(s.n_replicas)),
        qm_chunk_size=int(s.get("qm_chunk_size", 0)) or None,
    )


def data_split_kwargs(d) -> dict:
    """The loading and split arguments of ``config.data`` (``d``) shared by
    :func:`stabie_jax.data.load_molecule_data` and
    :func:`stabie_jax.workflows.load_periodic_data`."""
    return dict(
        reader_options=reader_options(d),
        download=bool(d.download),
        n_train=int(d.n_train),
        n_val=int(d.n_val),
        n_test=int(d.n_test),
        split_seed=int(d.split_seed),
        contiguous=bool(d.contiguous),
        max_reference_frames=int(d.max_reference_frames),
    )


def periodic_md(config, section: str = "md") -> workflows.PeriodicMD:
    """The MD settings of a periodic simulator: ``config.md`` with the integrator of
    ``config.<section>`` (``"evaluate"`` for the evaluation's, :func:`md_integrator`)."""
    return workflows.PeriodicMD(
        timestep_fs=float(config.md.timestep_fs),
        history_length=int(config.stabie.history_length),
        neighbor_skin_angstrom=float(config.model.neighbor_skin_angstrom),
        integrator_kwargs=integrator_kwargs(config, section),
        replica_batch_size=replica_batch_size(
            config, config.stabie.n_replicas if section == "md" else config.evaluate.n_replicas
        ),
    )


def periodic_stabie_inputs(config) -> workflows.PeriodicStabieInputs:
    """``config.md`` and ``config.stabie`` as :class:`stabie_jax.workflows.PeriodicStabieInputs`."""
    s = config.stabie
    criterion = str(s.criterion)
    return workflows.PeriodicStabieInputs(
        temperature_kelvin=float(config.md.temperature_kelvin),
        md=periodic_md(config),
        n_replicas=int(s.n_replicas),
        learning=learning_inputs(config),
        criterion=criterion,
        threshold_angstrom=float(
            s.min_intermolecular_angstrom
            if criterion == "min_intermolecular"
            else s.bond_deviation_angstrom
        ),
        n_bins=int(s.n_bins),
        per_bin=int(s.per_bin),
        rescale_velocities=bool(config.md.rescale_velocities),
    )


# Keys that do not change a model's evaluation: the other models, how often progress is saved,
# and md.layout (a choice of chunking that "auto" makes per machine, like the device count,
# which is not recorded either; an explicit md.replica_batch_size still is, as before).
_NOT_IN_FINGERPRINT = ("extra_models", "checkpoint_every_seconds", "layout")


def evaluation_fingerprint(config, name: str, params, data_spec) -> str:
    """What determines one model's evaluation: protocol, data, seed and the parameters.

    Args:
      config: the experiment config (its ``evaluate``, ``md`` and, if present, ``observable``
        sections enter; ``evaluate.extra_models``, ``evaluate.checkpoint_every_seconds`` and
        ``md.layout`` do not: the other models evaluated alongside, how often progress is saved
        and the automatic layout do not change this one's result beyond float round-off).
      name: the model's name in the comparison.
      params: its parameters (checksummed).
      data_spec: JSON-able description of the data the evaluation uses.
    """
    spec = {"name": name, "params": checkpoint.state_checksum(params)}
    for section in ("evaluate", "md", "observable"):
        if section in config:
            values = config[section].to_dict()
            spec[section] = {k: v for k, v in values.items() if k not in _NOT_IN_FINGERPRINT}
    spec["seed"] = int(config.seed)
    spec["data"] = data_spec
    return evaluation_store.fingerprint(spec)


def evaluation_run(config) -> workflows.EvaluationRun:
    """``config.evaluate`` and ``config.md`` as the run every evaluated model shares; the
    momenta key is drawn from ``config.seed + 1000`` (apart from the training's keys)."""
    e = config.evaluate
    return workflows.EvaluationRun(
        temperature_kelvin=float(config.md.temperature_kelvin),
        timestep_fs=float(config.md.timestep_fs),
        length_ps=float(e.length_ps),
        check_every_steps=int(e.check_every_steps),
        sample_every=int(e.sample_every),
        n_replicas=int(e.n_replicas),
        momenta_seed=int(config.seed) + 1000,
        stop_fraction=float(e.stop_fraction),
        checkpoint_every_seconds=float(e.checkpoint_every_seconds),
        save_trajectories=bool(e.get("save_trajectories", False)),
        progress=bool(config.progress),
        tensorboard=bool(config.get("tensorboard", False)),
    )


def molecule_evaluation(config, molecule: data.MoleculeData) -> workflows.MoleculeEvaluation:
    """The molecule evaluation protocol of the config (:class:`stabie_jax.workflows.
    MoleculeEvaluation`), with the training observable at the evaluation temperature when it
    is not h(r) and the dataset's reference VACF when the VACF is evaluated."""
    e = config.evaluate
    T = float(config.md.temperature_kelvin)
    training = None
    if observable_kind(config) != "h_of_r":
        training = training_observable(config, molecule_observable_system(config, molecule, T))
    vacf_window = int(e.vacf_window_steps)
    reference_vacf = None
    if vacf_window:
        full = data.load_dataset(
            config.data.source, download=bool(config.data.download), **reader_options(config.data)
        )
        dt_fs = float(config.md.timestep_fs)
        reference_vacf = workflows.reference_vacf_of(full, dt_fs, vacf_window)
    return workflows.MoleculeEvaluation(
        run=evaluation_run(config),
        bond_deviation_angstrom=float(e.bond_deviation_angstrom),
        integrator_kwargs=integrator_kwargs(config, "evaluate"),
        replica_batch_size=replica_batch_size(config, int(e.n_replicas)),
        reference_temperature_kelvin=reference_temperature(config) or T,
        h_of_r_r_max_angstrom=float(config.observable.r_max_angstrom),
        h_of_r_n_bins=int(config.observable.n_bins),
        h_of_r_sigma_angstrom=float(config.observable.sigma_angstrom),
        vacf_window_steps=vacf_window,
        transfer_temperatures_kelvin=tuple(float(t) for t in e.transfer_temperatures_kelvin),
        transfer_length_ps=float(e.transfer_length_ps),
        training=training,
        reference_vacf=reference_vacf,
    )


def molecule_data_spec(config) -> list:
    """The ``config.data`` keys a molecule model's evaluation result depends on (its
    fingerprint's data part)."""
    d = config.data
    keys = ("source", "test_source", "labels", "n_test", "n_val", "n_train", "split_seed")
    return [d[k] for k in keys] + [d.contiguous, d.max_reference_frames]


def periodic_evaluation(config) -> workflows.PeriodicEvaluation:
    """``config.evaluate`` of a periodic system (:class:`~stabie_jax.workflows.
    PeriodicEvaluation`)."""
    e = config.evaluate
    criterion = str(e.criterion)
    threshold = {
        "rdf_mae": e.rdf_mae_threshold,
        "min_intermolecular": e.min_intermolecular_angstrom,
        "bond_deviation": e.bond_deviation_angstrom,
    }[criterion]
    return workflows.PeriodicEvaluation(
        run=evaluation_run(config),
        md=periodic_md(config, "evaluate"),
        criterion=criterion,
        threshold=float(threshold),
        rdf_r_max_angstrom=float(e.rdf_r_max_angstrom),
    )
