"""stabie_jax: StABlE training (stability-aware Boltzmann-estimator training) of NNIPs in JAX.

Internal units are eV, Å and amu (see :mod:`stabie_jax.units`). The names a user needs are
available at the top level (``stabie_jax.make_simulator``, ``stabie_jax.boltzmann_jacobian``,
...); each is imported from its module on first use, so ``import stabie_jax`` stays light.
The modules:

* :mod:`stabie_jax.data` - datasets, readers, registry, splits, bonds;
* :mod:`stabie_jax.models` - SchNet, NequIP, GemNet-T and ``make_potential``;
* :mod:`stabie_jax.md` - vmapped Nosé–Hoover replicas; :mod:`stabie_jax.observables`,
  :mod:`stabie_jax.stability`;
* :mod:`stabie_jax.estimator`, :mod:`stabie_jax.localized_estimator`,
  :mod:`stabie_jax.hyperparameters`, :mod:`stabie_jax.reweighting` - Boltzmann estimators;
* :mod:`stabie_jax.pretrain`, :mod:`stabie_jax.losses`, :mod:`stabie_jax.stabie` - training
  (``stabie_jax.pretrain.pretrain`` runs pretraining; the module keeps the name);
* :mod:`stabie_jax.workflows` - whole stages with explicit arguments (a molecule's StABlE
  from a model checkpoint; StABlE from training frames to a saved model);
* :mod:`stabie_jax.evaluation` - stable times, metrics, reports and plots;
* :mod:`stabie_jax.checkpoint`, :mod:`stabie_jax.ase_calculator`, :mod:`stabie_jax.interop`.

Example:
  >>> import stabie_jax
  >>> stabie_jax.boltzmann_jacobian.__module__
  'stabie_jax.estimator'
"""

import importlib

from stabie_jax import units

__version__ = "0.1.0"

# name -> module that defines it (imported on first attribute access, PEP 562).
_API = {
    # models and potentials
    "SchNet": "stabie_jax.models.schnet",
    "NequIP": "stabie_jax.models.nequip",
    "GemNetT": "stabie_jax.models.gemnet_t",
    "Potential": "stabie_jax.models.potential",
    "make_potential": "stabie_jax.models.potential",
    "build_model": "stabie_jax.models.registry",
    # molecular dynamics
    "Simulator": "stabie_jax.md.state",
    "ReplicaState": "stabie_jax.md.state",
    "Trajectory": "stabie_jax.md.state",
    "make_simulator": "stabie_jax.md.replicas",
    "free_space": "stabie_jax.md.spaces",
    "periodic_space": "stabie_jax.md.spaces",
    "with_nonfinite_check": "stabie_jax.md.faults",
    # Boltzmann estimators
    "boltzmann_jacobian": "stabie_jax.estimator",
    "boltzmann_expectation": "stabie_jax.estimator",
    "localized_expectation": "stabie_jax.localized_estimator",
    "molecule_neighbourhoods": "stabie_jax.localized_estimator",
    # training
    "PretrainSettings": "stabie_jax.pretrain",
    "StabieProblem": "stabie_jax.stabie",
    "StabieSettings": "stabie_jax.stabie",
    "run_stabie": "stabie_jax.stabie",
    "MoleculeStabieInputs": "stabie_jax.workflows",
    "train_molecule": "stabie_jax.workflows",
    # evaluation
    "StabilityResult": "stabie_jax.evaluation",
    "evaluate_stability": "stabie_jax.evaluation",
    # data
    "Dataset": "stabie_jax.data.dataset",
    "load_dataset": "stabie_jax.data.loader",
    "load_molecule_data": "stabie_jax.data.held_out",
    "read_file": "stabie_jax.data.readers",
    # model checkpoints and use elsewhere
    "LoadedModel": "stabie_jax.checkpoint",
    "ModelMetadata": "stabie_jax.checkpoint",
    "load_model_checkpoint": "stabie_jax.checkpoint",
    "save_model_checkpoint": "stabie_jax.checkpoint",
    "make_model_potential": "stabie_jax.checkpoint",
    "StabieCalculator": "stabie_jax.ase_calculator",
}

__all__ = ["__version__", "units", *sorted(_API)]


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'stabie_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))
