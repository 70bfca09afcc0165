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
  :func:`periodic_observable_loss` and :func:`train_periodic`;
* :mod:`~stabie_jax.workflows.evaluation_run` - :class:`EvaluationRun`, what every evaluation
  shares (same initial structures and momenta for each model, chunked stability checks);
* :mod:`~stabie_jax.workflows.molecule_evaluation` - the paper's evaluation of molecule
  models: :class:`MoleculeEvaluation`, :func:`evaluate_molecule_models`, and its report
  (:mod:`~stabie_jax.workflows.molecule_report`: :func:`write_molecule_report`);
* :mod:`~stabie_jax.workflows.periodic_evaluation` - the same for periodic systems:
  :class:`PeriodicEvaluation`, :func:`evaluate_periodic_models`, :func:`write_periodic_report`.
"""

from stabie_jax.workflows.evaluation_run import EvaluationRun
from stabie_jax.workflows.molecule import (
    MoleculeStabieInputs,
    molecule_problem,
    reanchor_model_energy,
    train_molecule,
)
from stabie_jax.workflows.molecule_evaluation import (
    MoleculeEvaluation,
    evaluate_molecule_models,
    reference_vacf_of,
)
from stabie_jax.workflows.molecule_report import write_molecule_report
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
from stabie_jax.workflows.periodic_evaluation import (
    EVALUATION_CRITERIA,
    PeriodicEvaluation,
    evaluate_periodic_models,
    write_periodic_report,
)
from stabie_jax.workflows.training import LearningInputs, stabie_settings, train_and_save

__all__ = [
    "EVALUATION_CRITERIA",
    "EvaluationRun",
    "LearningInputs",
    "MoleculeEvaluation",
    "MoleculeStabieInputs",
    "PeriodicData",
    "PeriodicEvaluation",
    "PeriodicMD",
    "PeriodicStabieInputs",
    "TRAINING_CRITERIA",
    "cell_of_box",
    "check_qm_weight",
    "evaluate_molecule_models",
    "evaluate_periodic_models",
    "load_periodic_data",
    "molecule_problem",
    "periodic_neighbor_fn",
    "periodic_observable_loss",
    "periodic_simulator",
    "periodic_stable_fn",
    "reanchor_model_energy",
    "reference_vacf_of",
    "stabie_settings",
    "train_and_save",
    "train_molecule",
    "train_periodic",
    "write_molecule_report",
    "write_periodic_report",
]
