"""Thermostat settings, masses and initial velocities for Nosé–Hoover MD.

Authors' ``ttime`` ↔ JAX-MD ``tau``
-----------------------------------
The authors' integrator (MDsim ``mdsim/md/integrator.py``, used by StABlE-Training; reproduced
exactly by :func:`stabie_jax.md.integrators.authors_nose_hoover`) has one thermostat variable
``ζ`` with ``dζ/dt = (K − K0)/Q``, ``K0 = g kT/2`` and mass::

    Q_authors = g · kT · (ttime · dt)²,      g = 3N,  ttime = 20 steps.

JAX-MD's Nosé–Hoover chain (``jax_md.simulate.nose_hoover_chain``) has, for its first link,
``dζ/dt = (2K − g kT)/Q_0`` with ``Q_0 = g · kT · tau²`` (the further links have ``kT · tau²``).
The two masses are the same number at ``tau = ttime · dt`` (:func:`tau_from_ttime`), but the
equations differ by the factor 2 in front of ``K``, so the same mass is *not* the same
thermostat. Linearising around equilibrium for free particles (no potential; the thermostat
changes ``K`` by ``dK/dt = −2ζK``):

* authors: ``d²δK/dt² = −2K0 · δK / Q_authors = −δK / (ttime·dt)²``, so
  ``ω = 1/(ttime·dt)`` and the kinetic-energy period is ``2π · ttime · dt``;
* JAX-MD: ``d²δK/dt² = −2K0 · 2 δK / Q_0 = −(2/tau²) δK``, so ``ω = √2/tau`` and the period
  is ``2π · tau/√2`` (:func:`thermostat_kinetic_energy_period`).

Both are independent of ``g``. The same relaxation therefore needs
``tau = √2 · ttime · dt`` (:func:`chain_tau_from_ttime`); ``tau = ttime · dt`` makes the chain's
thermostat √2 faster than the authors'. ``tests/md_integrators_test.py`` measures the periods on
an ideal gas. (When half of the fluctuation sits in harmonic potential energy the frequencies
are lower by √2 for both.)

The paper's "effective mass 2000 cm⁻¹" is not in the authors' code. Read as a thermostat
frequency ``ω = 2π c ν̃`` with Martyna's convention ``Q = g kT / ω²``, it maps to
``tau = 1 / (2π c ν̃)`` (2.65 fs for 2000 cm⁻¹, see :func:`tau_from_wavenumber`); it is offered as
an option, the default follows the code (``tau = 20 dt``).

Degrees of freedom: the integrator conserves total momentum, which we set to zero, so the
canonical choice is ``g = 3N − 3``; the authors use ``g = 3N`` (their kinetic energy target is
``3N kT / 2``), which makes the sampled temperature ``3N/(3N−3)`` too high (5 % for aspirin).
Both are available (``remove_com_dof``).
"""

from __future__ import annotations

import math

import ase.data
import jax
import jax.numpy as jnp
import numpy as np

from stabie_jax import units

__all__ = [
    "authors_kinetic_energy_period",
    "authors_thermostat_mass",
    "chain_tau_from_ttime",
    "degrees_of_freedom",
    "kinetic_energy",
    "kinetic_temperature",
    "masses_from_atomic_numbers",
    "maxwell_boltzmann_momenta",
    "tau_from_ttime",
    "tau_from_wavenumber",
    "thermostat_kinetic_energy_period",
]


def tau_from_ttime(ttime_steps: float, dt):
    """JAX-MD ``tau = ttime · dt``: the chain's first-link mass equals the authors' ``Q``.

    This matches the thermostat *mass*, not its time scale: the chain then relaxes √2 faster
    than the authors' integrator (see the module docstring). Use :func:`chain_tau_from_ttime` for
    the same kinetic-energy oscillation period, or the authors' integrator itself
    (``make_simulator(integrator="authors_nose_hoover")``). Kept as the library default of
    ``make_simulator(integrator="nose_hoover_chain")`` so earlier runs are reproduced.

    Args:
      ttime_steps: authors' thermostat time in timesteps (20 in all their configs).
      dt: timestep, internal time units.

    Returns:
      ``tau`` in internal time units.
    """
    return ttime_steps * dt


def chain_tau_from_ttime(ttime_steps: float, dt):
    """JAX-MD chain ``tau = √2 · ttime · dt`` with the authors' thermostat time scale.

    The chain's kinetic-energy oscillation (ideal gas, small amplitude) then has the period
    ``2π · ttime · dt`` of the authors' ``dζ/dt = (K − K0)/Q`` thermostat.

    Args:
      ttime_steps: authors' thermostat time in timesteps.
      dt: timestep, internal time units.

    Returns:
      ``tau`` in internal time units.
    """
    return math.sqrt(2.0) * ttime_steps * dt


def authors_kinetic_energy_period(ttime_steps: float, dt):
    """Small-oscillation period ``2π · ttime · dt`` of an ideal gas's kinetic energy under the
    authors' thermostat."""
    return 2.0 * math.pi * ttime_steps * dt


def authors_thermostat_mass(n_atoms: int, kT, ttime_steps: float, dt):
    """The authors' Nosé–Hoover mass ``Q = 3N·kT·(ttime·dt)²`` in eV·(internal time)²."""
    return 3.0 * n_atoms * kT * (ttime_steps * dt) ** 2


def tau_from_wavenumber(wavenumber_per_cm: float) -> float:
    """``tau = 1/ω`` for a thermostat frequency given as a wavenumber (cm⁻¹), internal time."""
    return 1.0 / units.wavenumber_to_angular_frequency(wavenumber_per_cm)


def thermostat_kinetic_energy_period(tau):
    """Small-oscillation period ``2π tau / sqrt(2)`` of the kinetic energy of an ideal gas."""
    return 2.0 * math.pi * tau / math.sqrt(2.0)


def masses_from_atomic_numbers(atomic_numbers) -> np.ndarray:
    """Standard atomic masses in amu (``ase.data.atomic_masses``).

    Args:
      atomic_numbers: ``[N]`` ints.

    Returns:
      ``[N]`` float64 numpy array, amu.
    """
    z = np.asarray(atomic_numbers, dtype=np.int64)
    if z.ndim != 1 or np.any(z < 1) or np.any(z >= len(ase.data.atomic_masses)):
        raise ValueError(f"atomic_numbers must be a 1-D array of valid Z >= 1, got {z}")
    return np.asarray(ase.data.atomic_masses[z], dtype=np.float64)


def degrees_of_freedom(n_atoms: int, remove_com_dof: bool = True) -> int:
    """Thermostatted degrees of freedom: ``3N − 3`` (zero total momentum) or ``3N``."""
    return 3 * n_atoms - (3 if remove_com_dof and n_atoms > 1 else 0)


def kinetic_energy(momenta, masses):
    """``Σ p²/(2m)`` over the last two axes.

    Args:
      momenta: ``[..., N, 3]`` amu·Å/(internal time).
      masses: ``[N]`` amu.

    Returns:
      ``[...]`` eV.
    """
    return 0.5 * jnp.sum(momenta**2 / masses[:, None], axis=(-2, -1))


def kinetic_temperature(momenta, masses, dof: int):
    """Instantaneous kinetic temperature ``2K/g`` as kT in eV, ``[...]``."""
    return 2.0 * kinetic_energy(momenta, masses) / dof


def maxwell_boltzmann_momenta(key, masses, kT, shape=(), *, dof=None, rescale=False, dtype=None):
    """Momenta drawn from Maxwell–Boltzmann at ``kT`` with zero total momentum.

    Args:
      key: PRNG key.
      masses: ``[N]`` amu.
      kT: thermal energy, eV.
      shape: leading batch shape (e.g. ``(n_replicas,)``).
      dof: degrees of freedom for ``rescale`` (default ``3N − 3``).
      rescale: if True, scale each sample so that its kinetic energy is exactly ``dof·kT/2``
        (the authors rescale to ``3N kT/2``: pass ``dof=3N``).
      dtype: floating dtype (default: the masses' dtype or float32).

    Returns:
      ``[*shape, N, 3]`` momenta in amu·Å/(internal time) (velocity = momentum / mass).
    """
    masses = jnp.asarray(masses, dtype=dtype)
    n_atoms = masses.shape[0]
    dof = degrees_of_freedom(n_atoms) if dof is None else dof
    p = jax.random.normal(key, (*shape, n_atoms, 3), dtype=masses.dtype)
    p = p * jnp.sqrt(masses[:, None] * kT)
    # Zero total momentum: remove the centre-of-mass velocity from every atom.
    v_com = jnp.sum(p, axis=-2, keepdims=True) / jnp.sum(masses)
    p = p - masses[:, None] * v_com
    if rescale:
        ke = kinetic_energy(p, masses)
        p = p * jnp.sqrt(0.5 * dof * kT / ke)[..., None, None]
    return p
