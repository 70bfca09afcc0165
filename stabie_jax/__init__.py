"""stabie_jax: StABlE training (stability-aware Boltzmann-estimator training) of NNIPs in JAX.

Internal units are eV, Å and amu (see :mod:`stabie_jax.units`). Submodules are imported on
demand (``from stabie_jax import estimator``) so that importing the package stays light:

* :mod:`stabie_jax.data` - datasets, readers, registry, splits, bonds;
* :mod:`stabie_jax.models` - SchNet, NequIP, GemNet-T and ``make_potential``;
* :mod:`stabie_jax.md` - vmapped Nosé–Hoover replicas; :mod:`stabie_jax.observables`,
  :mod:`stabie_jax.stability`;
* :mod:`stabie_jax.estimator`, :mod:`stabie_jax.localized_estimator`,
  :mod:`stabie_jax.hyperparameters`, :mod:`stabie_jax.reweighting` - Boltzmann estimators;
* :mod:`stabie_jax.pretrain`, :mod:`stabie_jax.losses`, :mod:`stabie_jax.stabie` - training;
* :mod:`stabie_jax.evaluate`, :mod:`stabie_jax.plots`, :mod:`stabie_jax.report` - evaluation;
* :mod:`stabie_jax.checkpoint`, :mod:`stabie_jax.ase_calculator`, :mod:`stabie_jax.interop`.
"""

from stabie_jax import units

__version__ = "0.1.0"

__all__ = ["units", "__version__"]
