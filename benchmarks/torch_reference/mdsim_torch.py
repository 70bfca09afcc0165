"""The authors' own stack in PyTorch: ``torch_geometric.nn.SchNet`` and MDsim's Nosé–Hoover.

What a user of MDsim / the StABlE authors' code runs for R replicas of one molecule:

* the model is torch_geometric's ``SchNet`` itself (not a re-implementation), loaded with the
  weights of a stabie_jax SchNet through :func:`stabie_jax.interop.schnet_layout.
  params_to_state_dict` (so both sides run the same function);
* the R replicas are one torch_geometric batch (``batch`` vector, R·N nodes); its edges are all
  ordered intra-molecule pairs closer than the cutoff, built in plain torch and handed to
  SchNet's ``interaction_graph`` hook (torch_geometric's ``radius_graph`` needs ``torch-cluster``
  or ``pyg-lib``, which PyPI does not provide here; for molecules with fewer than 32 atoms
  within the cutoff, such as aspirin, it is the same graph);
* forces are ``-autograd.grad`` of the summed energies (one backward pass for all replicas);
* the integrator is MDsim's single Nosé–Hoover thermostat (velocity Verlet with friction ζ,
  ``Q = g·kT·(ttime·dt)²``, one ζ per replica), the step of
  :func:`stabie_jax.md.authors_nose_hoover` written out in torch.

Units are stabie_jax's (Å, amu, eV, internal time ``Å·sqrt(amu/eV)``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from stabie_jax.interop.schnet_layout import SchNetConfig, params_to_state_dict


def radius_graph(n_atoms: int, cutoff: float, device="cpu") -> Callable:
    """``(pos [R·N, 3], batch [R·N]) -> (edge_index [2, E], distances [E])``: every ordered pair
    of atoms of one molecule closer than ``cutoff`` (molecules of ``n_atoms`` each, in order)."""
    i, j = np.nonzero(~np.eye(n_atoms, dtype=bool))
    pairs = torch.as_tensor(np.stack([i, j]), dtype=torch.long, device=device)

    def graph(pos, batch):
        n_mol = pos.shape[0] // n_atoms
        offsets = (torch.arange(n_mol, device=pos.device) * n_atoms).repeat_interleave(
            pairs.shape[1]
        )
        edge_index = pairs.repeat(1, n_mol) + offsets
        dist = (pos[edge_index[0]] - pos[edge_index[1]]).norm(dim=-1)
        keep = dist < cutoff
        return edge_index[:, keep], dist[keep]

    return graph


def schnet_from_params(params, config: SchNetConfig, n_atoms: int, dtype=torch.float32):
    """``torch_geometric.nn.SchNet`` holding stabie_jax SchNet ``params`` (directed-edge layout
    of :class:`stabie_jax.models.schnet.SchNet`), with the batched radius graph above."""
    from torch_geometric.nn import SchNet

    model = SchNet(
        hidden_channels=config.hidden_channels,
        num_filters=config.num_filters,
        num_interactions=config.num_interactions,
        num_gaussians=config.num_gaussians,
        cutoff=config.cutoff,
        interaction_graph=radius_graph(n_atoms, config.cutoff),
    )
    wanted = model.state_dict()
    tensors = {
        k: torch.as_tensor(np.array(v), dtype=wanted[k].dtype)
        for k, v in params_to_state_dict(params, config).items()
        if k in wanted
    }
    model.load_state_dict(tensors, strict=True)
    return model.to(dtype).eval()


def make_energy_force(model, atomic_numbers, config: SchNetConfig) -> Callable:
    """``positions [R, N, 3] -> (energies [R] eV, forces [R, N, 3] eV/Å)`` of all replicas at
    once (one torch_geometric batch, one backward pass), MDsim's normaliser applied."""
    z_one = torch.as_tensor(np.asarray(atomic_numbers), dtype=torch.long)
    n_atoms = z_one.shape[0]

    def energy_force(positions):
        n_rep = positions.shape[0]
        z = z_one.to(positions.device).repeat(n_rep)
        batch = torch.arange(n_rep, device=positions.device).repeat_interleave(n_atoms)
        pos = positions.detach().reshape(-1, 3).requires_grad_(True)
        out = model(z, pos, batch).reshape(n_rep)
        (grad,) = torch.autograd.grad(out.sum(), pos)
        energy = config.energy_scale * out.detach() + config.energy_shift
        return energy, -config.energy_scale * grad.reshape(positions.shape)

    return energy_force


class MDsimState(NamedTuple):
    """Replica states of MDsim's Nosé–Hoover: positions, velocities ``[R, N, 3]``, forces
    ``[R, N, 3]``, friction ``zeta [R]``."""

    positions: torch.Tensor
    velocities: torch.Tensor
    forces: torch.Tensor
    zeta: torch.Tensor


def make_mdsim_nose_hoover(
    energy_force: Callable, masses, dt: float, kT: float, ttime_steps: float = 20
) -> tuple[Callable, Callable]:
    """``(init(positions, momenta), step(state))`` of MDsim's Nosé–Hoover over R replicas.

    ``g = 3N`` thermostatted degrees of freedom, ``Q = g·kT·(ttime·dt)²``, target kinetic
    energy ``K0 = g·kT/2``; one step (as MDsim's ``NoseHoover.step``): ``x += v dt + (a − ζv)
    dt²/2``; ``v += (a − ζv) dt/2``; new forces; ``ζ += dt/2 (K_old − K0)/Q``, then ``+= dt/2
    (K_half − K0)/Q``; ``v = (v + a dt/2)/(1 + ζ dt/2)``.
    """
    m = torch.as_tensor(np.asarray(masses)).reshape(1, -1, 1)
    n_atoms = m.shape[1]
    g = 3 * n_atoms
    q, k0 = g * kT * (ttime_steps * dt) ** 2, 0.5 * g * kT
    half = 0.5 * dt

    def kinetic(v, mass):
        return 0.5 * (mass * v**2).sum(dim=(1, 2))

    def init(positions, momenta):
        mass = m.to(positions.dtype).to(positions.device)
        _, forces = energy_force(positions)
        zeta = torch.zeros(positions.shape[0], dtype=positions.dtype, device=positions.device)
        return MDsimState(positions, momenta / mass, forces, zeta)

    def step(state: MDsimState) -> MDsimState:
        mass = m.to(state.positions.dtype).to(state.positions.device)
        v, zeta = state.velocities, state.zeta[:, None, None]
        a = state.forces / mass
        positions = state.positions + v * dt + (a - zeta * v) * (half * dt)
        ke_old = kinetic(v, mass)
        v = v + half * (a - zeta * v)
        _, forces = energy_force(positions)
        a = forces / mass
        zeta_new = state.zeta + half * (ke_old - k0) / q
        zeta_new = zeta_new + half * (kinetic(v, mass) - k0) / q
        v = (v + half * a) / (1.0 + half * zeta_new[:, None, None])
        return MDsimState(positions.detach(), v.detach(), forces.detach(), zeta_new.detach())

    return init, step
