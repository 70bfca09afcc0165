"""Batched Nosé–Hoover-chain velocity-Verlet MD over R replicas in PyTorch (benchmark baseline).

This is the integrator a PyTorch user would write to run R independent replicas of one molecule
at once: every tensor carries a leading replica axis, forces come from ``torch.autograd.grad`` of
the summed replica energies (one backward pass for all replicas), and the thermostat is a plain
Python loop over the few chain elements with tensor operations over replicas.

The algorithm is the one JAX-MD's ``simulate.nvt_nose_hoover`` uses (Martyna, Klein & Tuckerman
1992; Martyna et al. 1996; the direct-translation splitting of Tuckerman et al. 2006), step by
step, so that a stabie_jax/JAX-MD step and a step here do the same work:

1. chain masses ``Q = kT tau^2 (DOF for the first element, 1 for the others)``;
2. half a step of the chain (``chain_steps`` x Suzuki–Yoshida sub-steps), which rescales momenta;
3. velocity Verlet: ``p += dt/2 F``, ``R += dt p/m``, ``F = F(R)``, ``p += dt/2 F``;
4. the kinetic energy is refreshed and the chain makes its second half step.

Units are stabie_jax's: positions Å, momenta amu·Å/t, masses amu, energies eV, time in
``Å·sqrt(amu/eV)`` (convert femtoseconds with :func:`stabie_jax.units.fs_to_internal`), ``kT`` eV.

Examples:
  >>> step = make_nose_hoover_step(force_fn, dt, kT, tau=100 * dt)   # doctest: +SKIP
  >>> state = init_state(positions, momenta, masses, force_fn, kT)     # doctest: +SKIP
  >>> state = step(state)                                             # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch


def suzuki_yoshida_weights(sy_steps: int) -> list[float]:
    """Sub-step weights ``w_i`` (summing to 1) of the chain integration, as JAX-MD uses them.

    JAX-MD 0.2.29's table (``simulate.SUZUKI_YOSHIDA_WEIGHTS``) has, for 3 and 5 stages,
    ``w = 1 / (k - k^(-1/3))`` with ``k = 2`` and ``k = 4`` (outer weights; the middle one makes
    the sum 1). Yoshida's fourth-order weights have ``+1/3`` in the exponent (``w = 1.3512`` for
    3 stages); JAX-MD's values still sum to one, so the scheme stays consistent (second order).
    We follow JAX-MD so that both engines do the same arithmetic.
    """
    if sy_steps == 1:
        return [1.0]
    if sy_steps == 3:
        w = 1.0 / (2.0 - 2.0 ** (-1.0 / 3.0))
        return [w, 1.0 - 2.0 * w, w]
    if sy_steps == 5:
        w = 1.0 / (4.0 - 4.0 ** (-1.0 / 3.0))
        return [w, w, 1.0 - 4.0 * w, w, w]
    raise ValueError(f"sy_steps must be 1, 3 or 5, got {sy_steps}")


class NoseHooverState(NamedTuple):
    """State of R replicas (a new tuple every step; tensors are never modified in place).

    Attributes:
      positions: ``[R, N, 3]`` Å.
      momenta: ``[R, N, 3]`` amu·Å/t.
      forces: ``[R, N, 3]`` eV/Å at ``positions``.
      masses: ``[N, 1]`` amu.
      chain_positions: ``[R, M]`` thermostat positions ``xi``.
      chain_momenta: ``[R, M]`` thermostat momenta ``p_xi``.
      kinetic_energy: ``[R]`` eV.
    """

    positions: torch.Tensor
    momenta: torch.Tensor
    forces: torch.Tensor
    masses: torch.Tensor
    chain_positions: torch.Tensor
    chain_momenta: torch.Tensor
    kinetic_energy: torch.Tensor


def kinetic_energy(momenta: torch.Tensor, masses: torch.Tensor) -> torch.Tensor:
    """``sum p^2 / 2m`` per replica: ``[R, N, 3], [N, 1] -> [R]`` eV."""
    return 0.5 * (momenta * momenta / masses).sum(dim=(1, 2))


def init_state(
    positions: torch.Tensor,
    momenta: torch.Tensor,
    masses: torch.Tensor,
    force_fn: Callable[[torch.Tensor], torch.Tensor],
    chain_length: int = 5,
) -> NoseHooverState:
    """State with the thermostat at rest.

    Args:
      positions: ``[R, N, 3]`` Å.
      momenta: ``[R, N, 3]`` amu·Å/t.
      masses: ``[N]`` amu.
      force_fn: ``[R, N, 3] -> [R, N, 3]`` eV/Å.
      chain_length: number of thermostats in the chain (>= 2).
    """
    if chain_length < 2:
        raise ValueError(f"chain_length must be >= 2, got {chain_length}")
    n_rep = positions.shape[0]
    masses = masses.reshape(-1, 1).to(positions.dtype)
    zeros = torch.zeros(n_rep, chain_length, dtype=positions.dtype, device=positions.device)
    return NoseHooverState(
        positions=positions,
        momenta=momenta,
        forces=force_fn(positions),
        masses=masses,
        chain_positions=zeros,
        chain_momenta=zeros.clone(),
        kinetic_energy=kinetic_energy(momenta, masses),
    )


def make_nose_hoover_step(
    force_fn: Callable[[torch.Tensor], torch.Tensor],
    dt: float,
    kT: float,
    tau: float | None = None,
    chain_length: int = 5,
    chain_steps: int = 2,
    sy_steps: int = 3,
    degrees_of_freedom: int | None = None,
) -> Callable[[NoseHooverState], NoseHooverState]:
    """One NVT step for all replicas.

    Args:
      force_fn: ``positions [R, N, 3] -> forces [R, N, 3]`` eV/Å (e.g. autograd of a batched
        model energy).
      dt: time step, internal units (``Å·sqrt(amu/eV)``).
      kT: thermostat temperature, eV.
      tau: thermostat period, internal time units; default ``100 dt`` (JAX-MD's default).
      chain_length, chain_steps, sy_steps: Nosé–Hoover chain settings (JAX-MD's defaults).
      degrees_of_freedom: thermostatted degrees of freedom ``g``; default ``3N`` (JAX-MD's).

    Returns:
      ``step(state) -> state``.
    """
    if tau is None:
        tau = 100.0 * dt
    weights = suzuki_yoshida_weights(sy_steps)
    last = chain_length - 1

    def chain_substep(delta, p, xi, p_xi, q, ke, dof):
        d2, d4, d8 = delta / 2.0, delta / 4.0, delta / 8.0
        p_xi = list(p_xi.unbind(dim=1))  # M tensors of shape [R]
        xi = list(xi.unbind(dim=1))
        p_xi[last] = p_xi[last] + d4 * (p_xi[last - 1] ** 2 / q[last - 1] - kT)
        for m in range(last - 1, 0, -1):
            g = p_xi[m - 1] ** 2 / q[m - 1] - kT
            scale = torch.exp(-d8 * p_xi[m + 1] / q[m + 1])
            p_xi[m] = scale * (scale * p_xi[m] + d4 * g)
        g = 2.0 * ke - dof * kT
        scale = torch.exp(-d8 * p_xi[1] / q[1])
        p_xi[0] = scale * (scale * p_xi[0] + d4 * g)
        scale = torch.exp(-d2 * p_xi[0] / q[0])
        ke = ke * scale**2
        p = p * scale[:, None, None]
        xi = [x + d2 * px / qm for x, px, qm in zip(xi, p_xi, q, strict=True)]
        g = 2.0 * ke - dof * kT
        for m in range(last):
            scale = torch.exp(-d8 * p_xi[m + 1] / q[m + 1])
            p_xi[m] = scale * (scale * p_xi[m] + d4 * g)
            g = p_xi[m] ** 2 / q[m] - kT
        p_xi[last] = p_xi[last] + d4 * g
        return p, torch.stack(xi, dim=1), torch.stack(p_xi, dim=1), ke

    def chain_half_step(p, xi, p_xi, q, ke, dof):
        delta = dt / chain_steps
        for i in range(chain_steps * sy_steps):
            p, xi, p_xi, ke = chain_substep(delta * weights[i % sy_steps], p, xi, p_xi, q, ke, dof)
        return p, xi, p_xi, ke

    def step(state: NoseHooverState) -> NoseHooverState:
        dof = state.positions[0].numel() if degrees_of_freedom is None else degrees_of_freedom
        q = [kT * tau**2 * (dof if m == 0 else 1.0) for m in range(chain_length)]
        p, xi, p_xi, _ = chain_half_step(
            state.momenta,
            state.chain_positions,
            state.chain_momenta,
            q,
            state.kinetic_energy,
            dof,
        )
        p = p + (0.5 * dt) * state.forces
        positions = state.positions + dt * p / state.masses
        forces = force_fn(positions)
        p = p + (0.5 * dt) * forces
        ke = kinetic_energy(p, state.masses)
        p, xi, p_xi, ke = chain_half_step(p, xi, p_xi, q, ke, dof)
        return NoseHooverState(positions, p, forces, state.masses, xi, p_xi, ke)

    return step
