"""Tiny aspirin settings for the end-to-end tests, as a config file the entry point can load
(``--config=tests/tiny_configs.py``) and as a function the in-process tests call."""

from __future__ import annotations

from experiments.configs import aspirin


def get_config():
    """The aspirin smoke config at test size: 40 training frames, a 1-interaction SchNet,
    2 pretraining epochs, 3 StABlE epochs of 4 replicas, 4 evaluation replicas."""
    c = aspirin.get_config("smoke")
    c.progress = False
    c.data.n_train, c.data.n_val, c.data.n_test = 40, 10, 10
    c.model.hparams.hidden = 16
    c.model.hparams.num_filters = 16
    c.model.hparams.num_interactions = 1
    c.pretrain.overrides.max_epochs = 2
    c.pretrain.overrides.batch_size = 10
    c.stabie.n_replicas = 4
    c.stabie.steps_per_epoch = 40
    c.stabie.sample_every = 10
    c.stabie.minibatch_size = 8
    c.stabie.max_epochs = 3
    c.stabie.qm_batch_size = 10
    c.stabie.qm_batches_per_step = 1
    c.stabie.f_max = 0.25
    c.evaluate.n_replicas = 4
    c.evaluate.length_ps = 0.04
    c.evaluate.check_every_steps = 40
    c.evaluate.sample_every = 10
    c.evaluate.vacf_window_steps = 20
    c.evaluate.transfer_temperatures_kelvin = (700.0,)
    c.evaluate.transfer_length_ps = 0.02
    return c
