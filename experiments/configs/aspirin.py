"""Aspirin + SchNet: the paper's settings (Tables 2, 4, 5) and the authors' code's values.

Variants (``--config=experiments/configs/aspirin.py:VARIANT``):

* ``paper`` (default): MD17 aspirin, 1,000 training frames, SchNet 0.12M, 128 replicas,
  t = 2000 steps of 0.5 fs at 500 K, evaluation 256 replicas × 300 ps. Accelerator scale.
* ``cpu``: real rMD17 aspirin data (staged or from the registry cache), the paper's model and
  estimator, fewer replicas and shorter runs so it fits a few CPU hours.
* ``smoke``: the built-in offline xTB aspirin set, a tiny SchNet, a few epochs: minutes on CPU.

Every field can be overridden, e.g. ``--config.stabie.n_replicas=64``.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import build_variant, run_fields, schedule_fields


def base_config() -> ml_collections.ConfigDict:
    """The paper's aspirin settings; units are in the key names."""
    c = run_fields("aspirin")

    # --- data ----------------------------------------------------------------------------------
    c.data = ml_collections.ConfigDict()
    c.data.source = "md17_aspirin"  # registry name, path, glob or builtin:<name>
    c.data.test_source = ""  # held-out frames from another source (e.g. rMD17 test files)
    # Reader options: rMD17 files hold two label sets; the authors (and MD17) use "md17", the
    # recomputed ones are "rmd17". energy_unit is needed only for formats without units.
    c.data.labels = ""  # "" = the reader's default
    c.data.energy_unit = ""
    # ASE-readable files (extxyz, ...): per-frame energy info key and per-atom forces array to
    # read, e.g. MACE's "REF_energy" / "REF_forces" ("" = the calculator's, else energy/forces).
    c.data.energy_key = ""
    c.data.forces_key = ""
    c.data.download = False  # allow downloading registry datasets into the cache
    c.data.n_train = 1000  # the paper trains on 1,000 frames
    c.data.n_val = 50
    c.data.n_test = 1000
    c.data.split_seed = 0
    c.data.contiguous = False
    c.data.max_reference_frames = 10_000  # frames (non-test) for h_ref and equilibrium bonds
    # Temperature of the reference frames (MD17/MD22 AIMD and the built-in xTB sets: 500 K).
    # At another md.temperature_kelvin the h(r) reference is Boltzmann-reweighted from it.
    c.data.reference_temperature_kelvin = 500.0

    # --- model (paper Table 1; authors' configs/md17/schnet.yml) --------------------------------
    c.model = ml_collections.ConfigDict()
    c.model.kind = "schnet"
    c.model.hparams = ml_collections.ConfigDict(
        dict(
            hidden=64,
            num_filters=64,
            num_interactions=6,
            num_gaussians=25,
            cutoff=5.0,
            # each pair once, messages both ways: same model, half the filter-network work
            undirected_edges=True,
        )
    )

    # --- pretraining (authors' recipe; docs/method.md, Pretraining recipes) ---------------------
    c.pretrain = ml_collections.ConfigDict()
    c.pretrain.recipe = "schnet"
    c.pretrain.overrides = ml_collections.ConfigDict(dict(max_epochs=10_000))

    # --- molecular dynamics (paper Table 4) ------------------------------------------------------
    c.md = ml_collections.ConfigDict()
    c.md.temperature_kelvin = 500.0
    c.md.timestep_fs = 0.5
    c.md.thermostat_ttime_steps = 20  # authors: Q = 3N kT (ttime dt)^2
    # "authors_nose_hoover": the authors' single thermostat (MDsim mdsim/md/integrator.py);
    # "nose_hoover_chain": JAX-MD's chain at tau = sqrt(2) * ttime * dt (the authors' period);
    # "langevin": JAX-MD's BAOAB with friction langevin_gamma_per_ps.
    c.md.integrator = "authors_nose_hoover"
    c.md.langevin_gamma_per_ps = 0.1  # authors' Langevin friction, 1/ps
    c.md.rescale_velocities = True  # authors rescale initial KE to exactly 3N kT / 2
    # Replica layout (same dynamics up to round-off, not part of the stage records). "auto": on a
    # CPU the entry points fake one device per core and each device steps chunks of 2 replicas
    # (1.8x the MD throughput of one vmapped device at R = 128 on 2 cores, benchmarks/
    # RESULTS.md); on a GPU/TPU every device vmaps its replicas. "vmap": no chunks anywhere.
    # replica_batch_size > 0: chunks of that many replicas, whatever the layout.
    c.md.layout = "auto"
    c.md.replica_batch_size = 0

    # --- training observable: h(r) (docs/method.md, Observables and reference data) -------------
    # kind: a registered trainable observable (stabie_jax.observables.names(trainable=True)) that
    # the global estimator trains on; the other keys are h(r)'s options.
    c.observable = ml_collections.ConfigDict()
    c.observable.kind = "h_of_r"
    c.observable.r_max_angstrom = 10.0
    c.observable.n_bins = 500
    c.observable.sigma_angstrom = 0.01

    # --- StABlE training (paper Table 2; authors' train.yml; docs/paper_settings.md, Aspirin) ----
    c.stabie = ml_collections.ConfigDict()
    c.stabie.n_replicas = 128
    c.stabie.steps_per_epoch = 2000
    c.stabie.sample_every = 100  # authors' n_dump (their saved aspirin run: 50)
    c.stabie.minibatch_size = 40  # B
    c.stabie.learning_rate = 1e-3  # alpha, in the convention below
    # "authors": alpha, qm_weight and grad_clip_norm are the authors' values for their estimator
    # (no 1/kT, no B/(B-1)) and are converted to this exact estimator; "exact": used as given.
    c.stabie.hyperparameter_convention = "authors"
    # Observable loss ||<g> - g_ref||^2: "sum" over the components (the loss the authors' update
    # follows; "mean" divides by the number of components and is converted accordingly).
    c.stabie.observable_reduction = "sum"
    # "per_batch": each minibatch estimator contracted with its own 2(g_b - g_ref), averaged over
    # minibatches (the authors' update, O(1/B) biased); "global": one vector 2(<g> - g_ref) from
    # all samples (unbiased). The paper configs reproduce the authors' update.
    c.stabie.observable_vjp = "per_batch"
    c.stabie.qm_weight = 10.0  # lambda
    c.stabie.qm_batch_size = 40
    c.stabie.qm_batches_per_step = 0  # 0 = all training frames every step (authors)
    c.stabie.bond_deviation_angstrom = 0.25
    # After StABlE, re-fit the zero of U on the training frames (a constant shift: forces and
    # dynamics unchanged). The observable gradient cannot see a constant energy, so training moves
    # it as a side effect; the authors do not re-fit it.
    c.stabie.reanchor_energy = False
    # Layout of the learning step's per-frame work (same sums up to round-off, not part of the
    # stage records): frames per chunk of the estimator's backward pass (0 = with md.layout
    # "auto", 4 on a CPU whose devices split the replicas, else one pass) and training frames per
    # chunk of the QM term (0 = qm_batch_size). Both are split over the replicas' devices.
    c.stabie.estimator_chunk_size = 0
    c.stabie.qm_chunk_size = 0
    schedule_fields(c.stabie, reset_probability=0.05)

    # --- evaluation (paper Table 5, A.8) ---------------------------------------------------------
    c.evaluate = ml_collections.ConfigDict()
    c.evaluate.n_replicas = 256
    c.evaluate.length_ps = 300.0
    c.evaluate.check_every_steps = 200  # stability check interval (100 fs)
    c.evaluate.sample_every = 100
    c.evaluate.vacf_window_steps = 100  # VACF over 100 consecutive steps (0 = off)
    c.evaluate.bond_deviation_angstrom = 0.5
    c.evaluate.stop_fraction = 0.99
    # An unfinished model evaluation is checkpointed after every chunk (0) or at most this often
    # (s), and a rerun resumes there.
    c.evaluate.checkpoint_every_seconds = 0.0
    # extxyz of the first replica to fail and the median one (their last two chunks before and
    # at the failure) under evaluate/models/NAME/trajectories, linked from the report.
    c.evaluate.save_trajectories = True
    c.evaluate.transfer_temperatures_kelvin = (350.0, 700.0)
    c.evaluate.transfer_length_ps = 300.0
    c.evaluate.integrator = "langevin"  # the authors evaluated aspirin with Langevin
    # More models to evaluate under the same protocol, "name=DIR,name=DIR" (stabie_jax model
    # checkpoints, e.g. the authors' published model imported with `python -m stabie_jax.interop`).
    # Finished models are stored under workdir/evaluate/models/ and reused by later runs.
    c.evaluate.extra_models = ""
    return c


def cpu_variant(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Real rMD17 aspirin, the paper's model and estimator, the whole pipeline in ~2 CPU hours.

    Pretraining: the authors' optimizer and batch with warm-up over 500 steps, cosine decay to
    1e-5 over 1,000 epochs and an EMA of the weights (56 min on 2 cores shared with other work;
    force MAE 1.70 kcal/mol/Å on the 5,000 held-out frames; 1,600 epochs reach a lower force MAE
    in ~80 min: ``--config.pretrain.overrides.max_epochs=1600``).
    ``--config.pretrain.overrides.schedule=plateau`` gives the authors' plateau schedule.

    StABlE at 700 K instead of 500 K: a model pretrained to the authors' accuracy keeps 75 % of
    its replicas within the 0.25-A bond criterion for ~80 ps at 500 K, more simulation than
    this machine does in the budget; at 700 K the simulation phase ends within a few ps. The
    h(r) reference is Boltzmann-reweighted from the 500 K frames to 700 K. Evaluation: 64
    held-out test structures, same momenta for both models, at 700 K and at 500 K.

    After StABlE the zero of the energy is re-fitted on the training frames
    (``stabie.reanchor_energy``): measured on this protocol, most of the energy-MAE increase
    was a constant offset of U, which the observable gradient cannot see and which changes
    neither forces nor dynamics.
    """
    c.data.source = "rmd17_aspirin_train"
    c.data.test_source = "rmd17_aspirin_test"
    c.data.labels = "md17"
    c.data.n_test = 500
    c.pretrain.overrides = ml_collections.ConfigDict(
        dict(
            max_epochs=1000,
            warmup_steps=500,
            schedule="cosine",
            cosine_final_factor=0.01,
            ema_decay=0.999,
            early_stopping_patience=None,
            max_wall_seconds=4800.0,
            checkpoint_every_epochs=10,
        )
    )
    c.md.temperature_kelvin = 700.0
    c.stabie.n_replicas = 32
    c.stabie.sample_every = 100
    c.stabie.max_epochs = 60
    c.stabie.max_learning_epochs = 30
    c.stabie.qm_batches_per_step = 5
    c.stabie.max_wall_hours = 0.75
    c.stabie.reanchor_energy = True
    c.evaluate.n_replicas = 64
    c.evaluate.length_ps = 10.0
    c.evaluate.transfer_temperatures_kelvin = (500.0,)
    c.evaluate.transfer_length_ps = 5.0
    return c


def smoke_variant(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Built-in offline data, a tiny model, a few epochs of everything: minutes on a CPU."""
    c.data.source = "builtin:aspirin_xtb_500K"
    c.data.n_train = 200
    c.data.n_val = 20
    c.data.n_test = 50
    c.model.hparams = ml_collections.ConfigDict(
        dict(
            hidden=32,
            num_filters=32,
            num_interactions=2,
            num_gaussians=25,
            cutoff=5.0,
            undirected_edges=True,
        )
    )
    c.pretrain.overrides = ml_collections.ConfigDict(
        dict(max_epochs=20, batch_size=20, warmup_steps=50, early_stopping_patience=None)
    )
    c.stabie.n_replicas = 8
    c.stabie.steps_per_epoch = 200
    c.stabie.sample_every = 20
    c.stabie.minibatch_size = 20
    c.stabie.max_epochs = 6
    c.stabie.max_learning_epochs = 3
    c.stabie.qm_batch_size = 20
    c.stabie.qm_batches_per_step = 2
    c.evaluate.n_replicas = 8
    c.evaluate.length_ps = 1.0
    c.evaluate.check_every_steps = 100
    c.evaluate.sample_every = 20
    c.evaluate.transfer_temperatures_kelvin = (700.0,)
    c.evaluate.transfer_length_ps = 0.5
    return c


VARIANTS = {"paper": lambda c: c, "cpu": cpu_variant, "smoke": smoke_variant}


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    return build_variant("aspirin", base_config, VARIANTS, variant)
