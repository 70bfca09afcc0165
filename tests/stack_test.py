"""The pinned JAX stack works together: jax-md space/partition/energy/simulate/quantity + Flax.

This is the check behind the verified version set in BUILD.md and constraints.txt.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax_md import energy, partition, quantity, simulate, space


def test_lennard_jones_neighbor_list_matches_dense():
    # jax-md's cell-list construction produces NaNs in discarded lanes (inf - inf), which
    # jax_debug_nans reports although they never reach a result; the result itself is checked.
    with jax.debug_nans(False):
        _check_lennard_jones_neighbor_list()


def _check_lennard_jones_neighbor_list():
    box = 8.0
    displacement_fn, _ = space.periodic(box)
    key = jax.random.PRNGKey(0)
    grid = jnp.stack(jnp.meshgrid(*[jnp.arange(3.0)] * 3, indexing="ij"), -1).reshape(-1, 3)
    positions = grid * (box / 3) + 0.05 * jax.random.normal(key, grid.shape)
    dense_fn = energy.lennard_jones_pair(displacement_fn, sigma=1.0, epsilon=1.0, r_cutoff=2.5)
    neighbor_fn, nbr_energy_fn = energy.lennard_jones_neighbor_list(
        displacement_fn, box, sigma=1.0, epsilon=1.0, r_cutoff=2.5, format=partition.Sparse
    )
    nbrs = neighbor_fn.allocate(positions)
    assert not nbrs.did_buffer_overflow
    np.testing.assert_allclose(
        nbr_energy_fn(positions, neighbor=nbrs), dense_fn(positions), rtol=1e-5
    )


class _PairMLP(nn.Module):
    @nn.compact
    def __call__(self, positions):
        d = positions[:, None, :] - positions[None, :, :]
        r = jnp.sqrt(jnp.sum(d**2, -1) + jnp.eye(positions.shape[0]))
        h = nn.Dense(8)(jnp.exp(-r)[..., None])
        return 0.5 * jnp.sum(nn.Dense(1)(jnp.tanh(h))[..., 0] * (1 - jnp.eye(positions.shape[0])))


def test_nose_hoover_drives_flax_model_under_vmap():
    """Harmonic-restrained Flax energy, NVT under vmap: finite, and kinetic T near target."""
    displacement_fn, shift_fn = space.free()
    model = _PairMLP()
    positions0 = jnp.array([[0.0, 0.0, 0.0], [1.2, 0.0, 0.0], [0.0, 1.1, 0.2], [0.8, 0.9, 1.0]])
    params = model.init(jax.random.PRNGKey(1), positions0)

    def energy_fn(positions, **unused):
        restraint = 0.5 * 5.0 * jnp.sum((positions - positions0) ** 2)
        return 0.01 * model.apply(params, positions) + restraint

    kT = 0.1
    init_fn, step_fn = simulate.nvt_nose_hoover(energy_fn, shift_fn, dt=0.01, kT=kT, tau=0.5)
    keys = jax.random.split(jax.random.PRNGKey(2), 4)
    states = jax.vmap(lambda k: init_fn(k, positions0, mass=1.0))(keys)

    def body(states, _):
        states = jax.vmap(step_fn)(states)
        ke = jax.vmap(lambda s: quantity.kinetic_energy(momentum=s.momentum, mass=s.mass))(states)
        return states, ke

    states, ke = jax.jit(lambda s: jax.lax.scan(body, s, None, length=4000))(states)
    assert bool(jnp.all(jnp.isfinite(states.position)))
    # Free molecule: 3N dof; <KE> = 3N kT / 2 = 0.6. Average over replicas and the second half.
    mean_ke = float(jnp.mean(ke[2000:]))
    assert abs(mean_ke - 0.6) < 0.06
