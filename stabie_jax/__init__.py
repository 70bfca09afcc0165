"""stabie_jax: StABlE training (stability-aware Boltzmann-estimator training) of NNIPs in JAX.

Internal units are eV, Å and amu (see :mod:`stabie_jax.units`).
"""

from stabie_jax import units

__version__ = "0.1.0"

__all__ = ["units", "__version__"]
