"""Your own system: any molecule or periodic system from a file of labelled frames.

``stabie train --config=custom --config.data.source=frames.extxyz --config.md.temperature_kelvin=T``

The data decides the pipeline: frames without a cell (or not periodic in all three directions)
run the molecule pipeline (``experiments/molecule.py``: free space, h(r), bond deviation),
frames with a cell the periodic one (``experiments/periodic.py``: any species and cell,
neighbour lists). Fields set to ``"auto"`` are resolved from the data (``experiments/custom.py``)
and the resolved values are what ``WORKDIR/config.json`` records.

Variants: ``default`` (SchNet of the paper's size, a few hours of CPU for a small system) and
``smoke`` (a tiny model, a few epochs of everything: minutes, to check a file before a long run).
Every field can be overridden; ``stabie config custom`` lists them with their comments.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import build_variant, run_fields, schedule_fields


def base_config() -> ml_collections.ConfigDict:
    c = run_fields("custom")

    # --- data (reader options as in configs/aspirin.py) ------------------------------------------
    c.data = ml_collections.ConfigDict()
    # Your frames (required): an extxyz or any ASE-readable file, an npz (sGDML/MDsim keys), a
    # glob of files, a registry name or builtin:<name>. Energies and forces are read in eV and
    # eV/Å unless energy_unit says otherwise.
    c.data.source = ""
    c.data.test_source = ""  # held-out frames from another file ("" = split from source)
    c.data.labels = ""
    c.data.energy_unit = ""  # for formats without units, e.g. "kcal/mol"
    # Per-frame energy info key and per-atom forces array of ASE-readable files, e.g. MACE's
    # "REF_energy" / "REF_forces" ("" = the calculator's results, else energy/forces).
    c.data.energy_key = ""
    c.data.forces_key = ""
    c.data.download = False
    c.data.n_train = 1000
    c.data.n_val = 50
    c.data.n_test = 100
    c.data.split_seed = 0
    c.data.contiguous = False
    c.data.max_reference_frames = 10_000
    # Temperature (K) at which the frames were sampled; 0 = md.temperature_kelvin. Molecules at
    # another md.temperature_kelvin get a Boltzmann-reweighted h(r) reference (check N_eff in
    # the report); periodic systems must be simulated at the data's temperature.
    c.data.reference_temperature_kelvin = 0.0

    # --- model -----------------------------------------------------------------------------------
    c.model = ml_collections.ConfigDict()
    c.model.kind = "schnet"  # "schnet", "nequip" or "gemnet_t" (hparams as in their configs)
    c.model.hparams = ml_collections.ConfigDict(
        dict(
            hidden=64,
            num_filters=64,
            num_interactions=6,
            num_gaussians=25,
            cutoff=5.0,
            undirected_edges=True,
        )
    )
    c.model.neighbor_skin_angstrom = 0.5  # periodic systems: neighbour-list skin

    c.pretrain = ml_collections.ConfigDict()
    c.pretrain.recipe = "schnet"  # the authors' recipe of the model kind, with overrides
    c.pretrain.overrides = ml_collections.ConfigDict(
        dict(max_epochs=1000, warmup_steps=500, early_stopping_patience=None)
    )

    # --- molecular dynamics ----------------------------------------------------------------------
    c.md = ml_collections.ConfigDict()
    c.md.temperature_kelvin = 300.0  # set to your system's temperature
    c.md.timestep_fs = 0.5
    c.md.thermostat_ttime_steps = 20
    c.md.integrator = "authors_nose_hoover"  # or "nose_hoover_chain", "langevin"
    c.md.langevin_gamma_per_ps = 0.1
    c.md.rescale_velocities = True
    c.md.layout = "auto"  # see configs/aspirin.py
    c.md.replica_batch_size = 0

    # --- training observable ---------------------------------------------------------------------
    # "auto": h(r) for a molecule; for a periodic system "bond_lengths" when its molecules are
    # identical (each molecule's distances from its centre atom, localized estimator, as for
    # water), else "rdf" (element-pair RDFs, global estimator). Molecules: "h_of_r" or another
    # registered trainable observable with the global estimator (stabie_jax.observables).
    c.observable = ml_collections.ConfigDict()
    c.observable.kind = "auto"
    c.observable.r_max_angstrom = 10.0  # h(r) range (molecules)
    c.observable.n_bins = 500  # h(r) bins
    c.observable.sigma_angstrom = 0.01  # h(r) smearing
    c.observable.rdf_r_max_angstrom = 6.0  # periodic "rdf": range, at most half the cell height
    c.observable.rdf_n_bins = 100

    # --- StABlE training -------------------------------------------------------------------------
    c.stabie = ml_collections.ConfigDict()
    c.stabie.n_replicas = 32
    c.stabie.steps_per_epoch = 1000
    c.stabie.sample_every = 50
    c.stabie.minibatch_size = 20
    c.stabie.learning_rate = 1e-3
    c.stabie.hyperparameter_convention = "authors"  # see configs/aspirin.py
    c.stabie.observable_reduction = "sum"
    c.stabie.observable_vjp = "per_batch"
    # QM term weight lambda (molecules; periodic systems train without one: 0).
    c.stabie.qm_weight = 0.0
    c.stabie.qm_batch_size = 20
    c.stabie.qm_batches_per_step = 5
    # Training stability criterion: "auto" = "bond_deviation" for a molecule and for a periodic
    # system of one molecule, else "min_intermolecular" (atoms of different molecules, found by
    # bonds, closer than min_intermolecular_angstrom; an atomic system: any two atoms).
    c.stabie.criterion = "auto"
    c.stabie.bond_deviation_angstrom = 0.25
    c.stabie.min_intermolecular_angstrom = 1.2
    c.stabie.n_bins = 100  # localized "bond_lengths": deviation bins ...
    c.stabie.per_bin = 5  # ... and molecules drawn per bin
    c.stabie.reanchor_energy = False
    # Layout of the learning step's per-frame work (same sums up to round-off, not part of the
    # stage records): frames per chunk of the estimator's backward pass (0 = with md.layout
    # "auto", 4 on a CPU whose devices split the replicas, else one pass) and training frames per
    # chunk of the QM term (0 = qm_batch_size). Both are split over the replicas' devices.
    c.stabie.estimator_chunk_size = 0
    c.stabie.qm_chunk_size = 0
    schedule_fields(c.stabie, reset_probability=0.05)
    c.stabie.max_epochs = 100
    c.stabie.max_learning_epochs = 50

    # --- evaluation ------------------------------------------------------------------------------
    c.evaluate = ml_collections.ConfigDict()
    c.evaluate.n_replicas = 32  # held-out test frames as initial structures (<= data.n_test)
    c.evaluate.length_ps = 20.0
    c.evaluate.check_every_steps = 200
    c.evaluate.sample_every = 50
    # Evaluation criterion: "auto" = "bond_deviation" for a molecule, "rdf_mae" for a periodic
    # system (element-pair RDFs over each check_every_steps window, r_max·mean|g - g_ref| above
    # rdf_mae_threshold); also "min_intermolecular".
    c.evaluate.criterion = "auto"
    c.evaluate.bond_deviation_angstrom = 0.5
    c.evaluate.min_intermolecular_angstrom = 1.2
    c.evaluate.rdf_r_max_angstrom = 6.0
    c.evaluate.rdf_mae_threshold = 3.0
    c.evaluate.vacf_window_steps = 100  # molecules, when the data has velocities and times
    c.evaluate.stop_fraction = 0.99
    c.evaluate.checkpoint_every_seconds = 0.0
    c.evaluate.save_trajectories = True
    c.evaluate.transfer_temperatures_kelvin = ()  # molecules: also evaluate at these (K)
    c.evaluate.transfer_length_ps = 10.0
    c.evaluate.integrator = "langevin"
    c.evaluate.extra_models = ""
    return c


def smoke_variant(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A tiny model and a few epochs of every stage: minutes on a CPU."""
    c.data.n_train = 60
    c.data.n_val = 10
    c.data.n_test = 10
    c.model.hparams = ml_collections.ConfigDict(
        dict(
            hidden=16,
            num_filters=16,
            num_interactions=1,
            num_gaussians=16,
            cutoff=4.0,
            undirected_edges=True,
        )
    )
    c.pretrain.overrides = ml_collections.ConfigDict(
        dict(max_epochs=5, batch_size=10, warmup_steps=10, early_stopping_patience=None)
    )
    c.observable.n_bins = 100
    c.observable.rdf_n_bins = 20
    c.stabie.n_replicas = 4
    c.stabie.steps_per_epoch = 40
    c.stabie.sample_every = 10
    c.stabie.minibatch_size = 4
    c.stabie.qm_batch_size = 10
    c.stabie.qm_batches_per_step = 1
    c.stabie.n_bins = 10
    c.stabie.per_bin = 2
    c.stabie.max_epochs = 3
    c.stabie.max_learning_epochs = 2
    c.stabie.f_max = 0.5
    c.evaluate.n_replicas = 4
    c.evaluate.length_ps = 0.04
    c.evaluate.check_every_steps = 20
    c.evaluate.sample_every = 10
    c.evaluate.vacf_window_steps = 20
    c.evaluate.transfer_length_ps = 0.02
    return c


VARIANTS = {"default": lambda c: c, "smoke": smoke_variant}


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    return build_variant("custom", base_config, VARIANTS, variant or "default")
