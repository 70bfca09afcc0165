"""A tiny per-atom-energy Flax model and analytic reference potentials for the tests.

``PairMLP`` follows the model interface of :mod:`stabie_jax.models.graph` (per-atom energies
from a :class:`Graph`), so pretraining, checkpoints and the ASE calculator can be tested before
and independently of the production models.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from stabie_jax.models import registry

TOY_KIND = "toy_pair_mlp"


class PairMLP(nn.Module):
    """``e_i = ½ Σ_j f_c(r_ij) · MLP(rbf(r_ij), emb(Z_i)·emb(Z_j))`` (eV, normalised)."""

    hidden: int = 16
    n_rbf: int = 8
    cutoff: float = 4.0

    @nn.compact
    def __call__(self, atomic_numbers, graph):
        n_atoms = atomic_numbers.shape[0]
        r = graph.edge_lengths
        centres = jnp.linspace(0.5, self.cutoff, self.n_rbf)
        rbf = jnp.exp(-2.0 * (r[:, None] - centres) ** 2)
        emb = nn.Embed(119, 4)(atomic_numbers)
        pad = jnp.zeros((1, 4), emb.dtype)
        emb = jnp.concatenate([emb, pad], axis=0)
        pair = emb[graph.senders] * emb[graph.receivers]
        x = jnp.concatenate([rbf, pair], axis=-1)
        x = nn.tanh(nn.Dense(self.hidden)(x))
        x = nn.Dense(1)(x)[:, 0]
        fc = jnp.where(r < self.cutoff, 0.5 * (jnp.cos(jnp.pi * r / self.cutoff) + 1.0), 0.0)
        x = jnp.where(graph.edge_mask, 0.5 * fc * x, 0.0)
        return jax.ops.segment_sum(x, graph.receivers, num_segments=n_atoms)


def register_toy_model() -> None:
    """Register :class:`PairMLP` under :data:`TOY_KIND` (idempotent)."""
    if TOY_KIND not in registry.available_models():
        registry.register_model(TOY_KIND, PairMLP)


def lennard_jones(positions, epsilon=0.5, sigma=2.0):
    """Total LJ energy (eV) of a small cluster in free space, positions [N,3] Å."""
    n = positions.shape[0]
    i, j = np.triu_indices(n, 1)
    r = jnp.linalg.norm(positions[i] - positions[j], axis=-1)
    sr6 = (sigma / r) ** 6
    return jnp.sum(4.0 * epsilon * (sr6**2 - sr6))


def lj_dataset(n_frames, n_atoms=3, noise=0.08, seed=0, epsilon=0.5, sigma=2.0):
    """Perturbed LJ clusters near equilibrium: (positions [F,N,3], energies [F], forces)."""
    rng = np.random.default_rng(seed)
    r0 = 2.0 ** (1.0 / 6.0) * sigma
    base = np.array(
        [
            [0.0, 0.0, 0.0],
            [r0, 0.0, 0.0],
            [0.5 * r0, 0.5 * np.sqrt(3.0) * r0, 0.0],
            [0.5 * r0, np.sqrt(3.0) * r0 / 6.0, np.sqrt(2.0 / 3.0) * r0],
        ]
    )[:n_atoms]
    positions = base[None] + noise * rng.standard_normal((n_frames, n_atoms, 3))
    energy_fn = lambda r: lennard_jones(r, epsilon, sigma)
    e, g = jax.jit(jax.vmap(jax.value_and_grad(energy_fn)))(jnp.asarray(positions, jnp.float32))
    return np.asarray(positions, np.float32), np.asarray(e), -np.asarray(g)
