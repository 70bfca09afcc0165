"""Whole StABlE stages assembled from the library, with explicit arguments (no config object).

A workflow takes a model checkpoint, data and plain settings, builds the pieces (potential,
simulator, stability criterion, losses) and runs a stage, writing its outputs to the directories
it is given. The experiment entry points (``python -m experiments.aspirin ...``) read their
config into these arguments; a script can call the same functions directly:

* :mod:`~stabie_jax.workflows.training` - :class:`LearningInputs` (how the learning steps are
  taken, converted by :func:`stabie_settings`) and :func:`train_and_save`: start replicas from
  training frames, run :func:`stabie_jax.stabie.run_stabie`, save the trained model checkpoint;
* :mod:`~stabie_jax.workflows.molecule` - a single flexible molecule in free space (aspirin,
  Ac-Ala3-NHMe): :class:`MoleculeStabieInputs`, :func:`molecule_problem`,
  :func:`train_molecule` and :func:`reanchor_model_energy`;
* :mod:`~stabie_jax.workflows.periodic` - a periodic system (64-water, any bulk system):
  :func:`load_periodic_data`, :func:`periodic_simulator`, :func:`periodic_stable_fn`,
  :func:`periodic_observable_loss` and :func:`train_periodic`.
"""

from stabie_jax.workflows.molecule import (
    MoleculeStabieInputs,
    molecule_problem,
    reanchor_model_energy,
    train_molecule,
)
from stabie_jax.workflows.periodic import (
    TRAINING_CRITERIA,
    PeriodicData,
    PeriodicMD,
    PeriodicStabieInputs,
    cell_of_box,
    check_qm_weight,
    load_periodic_data,
    periodic_neighbor_fn,
    periodic_observable_loss,
    periodic_simulator,
    periodic_stable_fn,
    train_periodic,
)
from stabie_jax.workflows.training import LearningInputs, stabie_settings, train_and_save

__all__ = [
    "LearningInputs",
    "MoleculeStabieInputs",
    "PeriodicData",
    "PeriodicMD",
    "PeriodicStabieInputs",
    "TRAINING_CRITERIA",
    "cell_of_box",
    "check_qm_weight",
    "load_periodic_data",
    "molecule_problem",
    "periodic_neighbor_fn",
    "periodic_observable_loss",
    "periodic_simulator",
    "periodic_stable_fn",
    "reanchor_model_energy",
    "stabie_settings",
    "train_and_save",
    "train_molecule",
    "train_periodic",
]
