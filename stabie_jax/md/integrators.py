"""MD integrators beyond JAX-MD's own, in JAX-MD style (``(init_fn, apply_fn)`` pure functions).

:func:`authors_nose_hoover` is the single-variable Nosé–Hoover integrator of the authors'
MDsim ``mdsim/md/integrator.py`` (class ``NoseHoover``, used by StABlE-Training), step for step.
With positions ``r``, velocities ``v``, forces ``F``, masses ``m``, timestep ``dt``, the
thermostat variable ``ζ`` (one scalar per system), ``K0 = g·kT/2`` and
``Q = g·kT·(ttime·dt)²`` (``g = 3N`` in the authors' code), one step is::

    a = F/m
    r ← r + v·dt + (a − ζ v)·dt²/2
    K_0 = Σ m v²/2                         (old velocities)
    v ← v + (a − ζ v)·dt/2
    F ← F(r);  a = F/m
    ζ ← ζ + (K_0 − K0)·dt/(2Q)
    K = Σ m v²/2                           (half-step velocities)
    ζ ← ζ + (K − K0)·dt/(2Q)
    v ← (v + a·dt/2) / (1 + ζ·dt/2)

i.e. a discretisation of ``dr/dt = v``, ``dv/dt = F/m − ζ v``, ``dζ/dt = (K − K0)/Q``. The
state also integrates ``ξ = ∫ζ dt`` (trapezoidal rule over the step's old and new ``ζ``), so that

    H = U + K + Q ζ² + 2·K0·ξ

is conserved: ``dH/dt = −F·v + (F·v − 2ζK) + 2Qζ(K − K0)/Q + 2K0ζ = 0``
(:func:`authors_nose_hoover_invariant`). Note ``Q ζ²`` (not ``Q ζ²/2``): the authors'
``dζ/dt`` has ``K − K0`` where JAX-MD's chain has ``2K − g kT``.

Thermostat time: the small oscillation of the kinetic energy of an ideal gas under these
equations has ``d²δK/dt² = −(2 K0/Q) δK``, angular frequency ``1/(ttime·dt)``, the same as
JAX-MD's chain with ``tau = √2·ttime·dt`` (:func:`stabie_jax.md.thermostat.chain_tau_from_ttime`).

Langevin dynamics use JAX-MD's ``simulate.nvt_langevin`` directly (see
:func:`stabie_jax.md.make_simulator`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax_md import dataclasses, quantity

__all__ = [
    "AuthorsNoseHooverState",
    "authors_nose_hoover",
    "authors_nose_hoover_invariant",
    "authors_thermostat_constants",
]


@dataclasses.dataclass
class AuthorsNoseHooverState:
    """State of :func:`authors_nose_hoover` for one system.

    Attributes:
      position: ``[N, 3]``.
      momentum: ``[N, 3]`` (velocity = momentum / mass).
      force: ``[N, 3]`` at ``position``.
      mass: ``[N, 1]`` (or a scalar).
      zeta: scalar thermostat variable ``ζ``, inverse internal time.
      xi: scalar ``ξ = ∫ζ dt`` (for the conserved quantity only; the dynamics do not use it).
    """

    position: jax.Array
    momentum: jax.Array
    force: jax.Array
    mass: jax.Array
    zeta: jax.Array
    xi: jax.Array


def authors_thermostat_constants(dof, kT, ttime_steps, dt):
    """``(Q, K0) = (dof·kT·(ttime·dt)², dof·kT/2)`` of the authors' Nosé–Hoover integrator."""
    return dof * kT * (ttime_steps * dt) ** 2, 0.5 * dof * kT


def _canonical_mass(mass):
    mass = jnp.asarray(mass)
    return jnp.reshape(mass, (mass.shape[0], 1)) if mass.ndim == 1 else mass


def authors_nose_hoover(
    energy_or_force_fn: Callable,
    shift_fn: Callable,
    dt: float,
    kT: float,
    *,
    ttime_steps: float = 20,
    dof: int | None = None,
):
    """The authors' (MDsim) single Nosé–Hoover thermostat, see the module docstring.

    Args:
      energy_or_force_fn: ``(position, **kwargs) -> energy`` (scalar) or force ``[N, 3]``;
        keyword arguments of ``init_fn``/``apply_fn`` (``params=``, ``neighbor=``) are passed on,
        as in JAX-MD.
      shift_fn: JAX-MD shift ``(position, dR, **kwargs) -> position``.
      dt: timestep, internal time units.
      kT: target thermal energy, eV.
      ttime_steps: the authors' ``ttime`` in timesteps (20 in all their configs).
      dof: thermostatted degrees of freedom ``g`` (default ``3N``, as the authors).

    Returns:
      ``(init_fn, apply_fn)``: ``init_fn(key, position, mass=1.0, momenta=None, **kwargs)``
      (Maxwell–Boltzmann momenta from ``key`` when ``momenta`` is None) and
      ``apply_fn(state, **kwargs) -> state``; both return :class:`AuthorsNoseHooverState`.
    """
    force_fn = quantity.canonicalize_force(energy_or_force_fn)
    half = 0.5 * dt

    def constants(position):
        g = position.shape[0] * position.shape[1] if dof is None else dof
        return authors_thermostat_constants(g, kT, ttime_steps, dt)

    def init_fn(key, position, mass=1.0, momenta=None, **kwargs):
        mass = _canonical_mass(jnp.asarray(mass, position.dtype))
        if momenta is None:
            p = jnp.sqrt(mass * kT) * jax.random.normal(key, position.shape, position.dtype)
            momenta = p - mass * jnp.sum(p, 0, keepdims=True) / jnp.sum(
                jnp.broadcast_to(mass, position.shape[:1] + (1,))
            )
        zero = jnp.zeros((), position.dtype)
        return AuthorsNoseHooverState(
            position=position,
            momentum=jnp.asarray(momenta, position.dtype),
            force=force_fn(position, **kwargs),
            mass=mass,
            zeta=zero,
            xi=zero,
        )

    def apply_fn(state: AuthorsNoseHooverState, **kwargs) -> AuthorsNoseHooverState:
        q, k0 = constants(state.position)
        m = state.mass
        zeta = state.zeta
        v = state.momentum / m
        a = state.force / m
        position = shift_fn(state.position, v * dt + (a - zeta * v) * (half * dt), **kwargs)
        ke_old = 0.5 * jnp.sum(m * v**2)
        v = v + half * (a - zeta * v)
        force = force_fn(position, **kwargs)
        a = force / m
        zeta_new = zeta + half * (ke_old - k0) / q
        ke_half = 0.5 * jnp.sum(m * v**2)
        zeta_new = zeta_new + half * (ke_half - k0) / q
        v = (v + half * a) / (1.0 + half * zeta_new)
        return AuthorsNoseHooverState(
            position=position,
            momentum=m * v,
            force=force,
            mass=m,
            zeta=zeta_new,
            xi=state.xi + half * (zeta + zeta_new),
        )

    return init_fn, apply_fn


def authors_nose_hoover_invariant(potential_energy, kinetic_energy, zeta, xi, q, k0):
    """Conserved ``U + K + Q ζ² + 2·K0·ξ`` of the authors' Nosé–Hoover equations (eV)."""
    return potential_energy + kinetic_energy + q * zeta**2 + 2.0 * k0 * xi
