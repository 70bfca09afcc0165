"""The NVT integrator of a replica simulator, with everything that depends on its choice.

:func:`make_dynamics` picks one of :data:`INTEGRATORS` and returns a :class:`Dynamics`: the
single-replica ``(init, apply)`` pair, the effective thermostat time and degrees of freedom, and
the few integrator-specific pieces the replica engine needs (first-link masses of the chain,
per-replica keys, rewinds of the Langevin key, the conserved energy).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax_md import simulate

from stabie_jax import units
from stabie_jax.md import integrators, thermostat

__all__ = ["INTEGRATORS", "Dynamics", "make_dynamics"]

INTEGRATORS = ("nose_hoover_chain", "authors_nose_hoover", "langevin")


class Dynamics(NamedTuple):
    """One integrator of :func:`make_dynamics`.

    Attributes:
      init: JAX-MD ``init_fn(key, position [N,3], mass=, momenta=, params=, neighbor=)``.
      apply: JAX-MD ``apply_fn(state, params=, neighbor=) -> state`` (one step of ``dt``).
      post_init: ``batched state -> batched state`` after ``vmap(init)`` (the chain's
        first-link mass for the requested degrees of freedom; identity otherwise).
      replica_keys: ``(key or None, R) -> [R, 2]`` keys passed to ``init``.
      on_rewind: ``(restored, current) -> restored`` batched states (Langevin: the random key
        moves on instead of being restored; identity otherwise).
      invariant: ``(potential [R] eV, kinetic [R] eV, batched state) -> [R]`` eV.
      tau: thermostat time, internal time (chain: ``tau``; authors': ``ttime·dt``;
        Langevin: ``1/γ``).
      dof: thermostatted degrees of freedom per replica.
    """

    init: Callable
    apply: Callable
    post_init: Callable
    replica_keys: Callable
    on_rewind: Callable
    invariant: Callable
    tau: float
    dof: int


def _set_dof(md, dof: int, kT: float):
    """Thermostat the requested ``dof`` (JAX-MD counts ``3N``): first-link mass ``dof·kT·tau²``."""
    chain = md.chain
    q = kT * chain.tau[..., None] ** 2 * jnp.ones_like(chain.mass)
    q = q.at[..., 0].multiply(dof)
    return md.set(chain=dataclasses.replace(chain, mass=q, degrees_of_freedom=dof))


def _fixed_keys(key, n_rep):
    return jnp.broadcast_to(jax.random.PRNGKey(0), (n_rep, 2))


def _langevin_keys(key, n_rep):
    base = jax.random.PRNGKey(0) if key is None else key
    return jax.random.split(jax.random.fold_in(base, 1), n_rep)


def _chain_invariant(dof: int, kT: float):
    def invariant(pe, ke, md):
        c = md.chain
        e = pe + ke + c.momentum[:, 0] ** 2 / (2 * c.mass[:, 0]) + dof * kT * c.position[:, 0]
        e = e + jnp.sum(c.momentum[:, 1:] ** 2 / (2 * c.mass[:, 1:]) + kT * c.position[:, 1:], -1)
        return e

    return invariant


def make_dynamics(
    energy_fn: Callable,
    shift_fn: Callable,
    n_atoms: int,
    *,
    dt: float,
    kT: float,
    tau: float | None = None,
    remove_com_dof: bool | None = None,
    integrator: str = "nose_hoover_chain",
    chain_length: int = 3,
    chain_steps: int = 2,
    sy_steps: int = 3,
    ttime_steps: float = 20,
    langevin_gamma: float | None = None,
) -> Dynamics:
    """Build one of :data:`INTEGRATORS` for ``energy_fn(params, positions [N,3] Å, neighbor)``.

    Args:
      energy_fn: ``(params, positions [N,3] Å, neighbor=None) -> eV``.
      shift_fn: JAX-MD shift of the space.
      n_atoms: atoms per replica ``N``.
      dt: timestep, internal time. kT: eV.
      tau: chain thermostat time, internal time (``"nose_hoover_chain"`` only; default
        ``20·dt``).
      remove_com_dof: thermostat ``3N − 3`` (True) or ``3N`` (False) degrees of freedom;
        default (None) ``3N`` for ``"authors_nose_hoover"``, ``3N − 3`` otherwise (Langevin
        always uses ``3N``).
      integrator, chain_length, chain_steps, sy_steps, ttime_steps, langevin_gamma: as in
        :func:`stabie_jax.md.make_simulator`.

    Returns:
      A :class:`Dynamics`; raises ``ValueError`` for a non-positive ``langevin_gamma``.
    """
    tau = thermostat.tau_from_ttime(20, dt) if tau is None else tau
    if remove_com_dof is None:
        remove_com_dof = integrator != "authors_nose_hoover"
    dof = thermostat.degrees_of_freedom(n_atoms, remove_com_dof)

    def md_energy(position, params, neighbor=None):
        return energy_fn(params, position, neighbor)

    if integrator == "nose_hoover_chain":
        init, apply = simulate.nvt_nose_hoover(
            md_energy,
            shift_fn,
            dt,
            kT,
            chain_length=chain_length,
            chain_steps=chain_steps,
            sy_steps=sy_steps,
            tau=tau,
        )
        return Dynamics(
            init,
            apply,
            post_init=lambda md: _set_dof(md, dof, kT),
            replica_keys=_fixed_keys,
            on_rewind=lambda restored, current: restored,
            invariant=_chain_invariant(dof, kT),
            tau=tau,
            dof=dof,
        )
    if integrator == "authors_nose_hoover":
        init, apply = integrators.authors_nose_hoover(
            md_energy, shift_fn, dt, kT, ttime_steps=ttime_steps, dof=dof
        )
        q, k0 = integrators.authors_thermostat_constants(dof, kT, ttime_steps, dt)

        def authors_invariant(pe, ke, md):
            return integrators.authors_nose_hoover_invariant(pe, ke, md.zeta, md.xi, q, k0)

        return Dynamics(
            init,
            apply,
            post_init=lambda md: md,
            replica_keys=_fixed_keys,
            on_rewind=lambda restored, current: restored,
            invariant=authors_invariant,
            tau=ttime_steps * dt,
            dof=dof,
        )
    gamma = units.per_ps_to_internal(0.1) if langevin_gamma is None else langevin_gamma
    if not gamma > 0:
        raise ValueError(f"langevin_gamma must be > 0, got {gamma}")
    init, apply = simulate.nvt_langevin(md_energy, shift_fn, dt, kT, gamma=gamma)
    return Dynamics(
        init,
        apply,
        post_init=lambda md: md,
        replica_keys=_langevin_keys,
        # Fresh noise after a rewind: the random key moves on instead of being restored.
        on_rewind=lambda restored, current: restored.set(rng=current.rng),
        invariant=lambda pe, ke, md: pe + ke,
        tau=1.0 / gamma,
        dof=3 * n_atoms,  # the per-atom noise thermalises the centre of mass too
    )
