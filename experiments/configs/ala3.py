"""Ac-Ala3-NHMe (MD22) + NequIP at 500 K: the paper's settings on top of the aspirin layout.

Variants: ``paper`` (default; MD22 from the registry, 128 replicas, 48 × 300 ps evaluation),
``cpu`` (the same data, reduced replicas and lengths) and ``smoke`` (the built-in xTB
Ac-Ala3-NHMe set, a tiny NequIP, minutes on a CPU).
"""

from __future__ import annotations

import ml_collections

from experiments.configs import aspirin, build_variant


def base_config() -> ml_collections.ConfigDict:
    c = aspirin.base_config()
    c.system = "ala3"
    c.data.source = "md22_ac_ala3_nhme"
    c.data.n_val = 50
    c.data.n_test = 1000
    # Authors' Ac-Ala3 NequIP (docs/paper_settings.md, Ac-Ala3-NHMe): 3 layers, l_max 1,
    # 32 channels per irrep.
    c.model.kind = "nequip"
    c.model.hparams = ml_collections.ConfigDict(
        dict(
            num_layers=3,
            hidden_irreps="32x0e+32x1e+32x0o+32x1o",
            sh_lmax=1,
            num_bessel=8,
            cutoff=5.0,
            cutoff_p=6,
            radial_features=(64, 64),
            avg_num_neighbors=21.352514266967773,
        )
    )
    c.pretrain.recipe = "nequip"
    c.pretrain.overrides = ml_collections.ConfigDict(dict(max_epochs=10_000))
    c.observable.r_max_angstrom = 15.0  # MD22: 15 Å, 750 bins (docs/paper_settings.md)
    c.observable.n_bins = 750
    c.stabie.max_epochs = 600
    c.evaluate.n_replicas = 48
    c.evaluate.length_ps = 300.0
    c.evaluate.transfer_temperatures_kelvin = ()
    c.evaluate.vacf_window_steps = 0
    c.evaluate.integrator = "authors_nose_hoover"  # the authors' Ac-Ala3 evaluation
    return c


def cpu_variant(c):
    c.pretrain.overrides = ml_collections.ConfigDict(
        dict(max_epochs=200, early_stopping_patience=20)
    )
    c.stabie.n_replicas = 16
    c.stabie.max_epochs = 40
    c.stabie.max_learning_epochs = 20
    c.stabie.qm_batches_per_step = 5
    c.evaluate.n_replicas = 16
    c.evaluate.length_ps = 10.0
    return c


def smoke_variant(c):
    c.data.source = "builtin:ala3_xtb_500K"
    c.data.n_train = 150
    c.data.n_val = 20
    c.data.n_test = 30
    c.model.hparams.num_layers = 1
    c.model.hparams.hidden_irreps = "8x0e+8x1o"
    c.model.hparams.radial_features = (16,)
    c.pretrain.overrides = ml_collections.ConfigDict(
        dict(max_epochs=5, batch_size=10, early_stopping_patience=None)
    )
    c.stabie.n_replicas = 4
    c.stabie.steps_per_epoch = 100
    c.stabie.sample_every = 20
    c.stabie.minibatch_size = 10
    c.stabie.max_epochs = 4
    c.stabie.max_learning_epochs = 2
    c.stabie.qm_batch_size = 10
    c.stabie.qm_batches_per_step = 1
    c.evaluate.n_replicas = 4
    c.evaluate.length_ps = 0.5
    c.evaluate.check_every_steps = 100
    c.evaluate.sample_every = 20
    return c


VARIANTS = {"paper": lambda c: c, "cpu": cpu_variant, "smoke": smoke_variant}


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    return build_variant("ala3", base_config, VARIANTS, variant)
