"""SchNet: torch_geometric's architecture and parameter count.

The generic physical checks (finite-difference forces, invariance, cutoff continuity, jit,
neighbour lists, PBC) run for SchNet in ``models_potential_test.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_md import space
from models_potential_test import ATOMIC_NUMBERS, POSITIONS, free_graph, random_params

from stabie_jax.models import make_potential, parameter_count
from stabie_jax.models.schnet import SchNet

PAPER_PARAMETER_COUNT = 117_953  # MDsim's count for hidden 64, filters 64, 6 blocks, 25 Gaussians


def test_parameter_count_at_paper_settings():
    module = SchNet()  # hidden 64, filters 64, 6 interactions, 25 Gaussians, cutoff 5 Å
    z = jnp.asarray(ATOMIC_NUMBERS)
    params = jax.eval_shape(module.init, jax.random.key(0), z, free_graph(POSITIONS))["params"]
    count = parameter_count(params)
    print(f"SchNet parameters at the paper's settings: {count:,}")
    assert abs(count - PAPER_PARAMETER_COUNT) <= 0.01 * PAPER_PARAMETER_COUNT
    assert count == PAPER_PARAMETER_COUNT
    # torch_geometric's layer shapes (Flax kernels are transposed torch weights)
    block = params["interaction_0"]
    assert params["embedding"]["embedding"].shape == (100, 64)
    assert block["filter_0"]["kernel"].shape == (25, 64)
    assert set(block["conv_in"]) == {"kernel"}  # CFConv.lin1 has no bias
    assert params["readout_0"]["kernel"].shape == (64, 32)
    assert params["readout_1"]["kernel"].shape == (32, 1)


def reference_schnet(params, z, positions, cutoff, num_gaussians):
    """torch_geometric's SchNet forward written out in numpy (float64), per atom."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)

    def ssp(x):
        return np.logaddexp(0.0, x) - np.log(2.0)

    def dense(x, layer):
        return x @ layer["kernel"] + layer.get("bias", 0.0)

    n = len(z)
    i, j = np.nonzero(~np.eye(n, dtype=bool))
    d = np.linalg.norm(positions[i] - positions[j], axis=-1)
    keep = d < cutoff  # radius_graph
    i, j, d = i[keep], j[keep], d[keep]
    mu = np.linspace(0.0, cutoff, num_gaussians)
    expansion = np.exp(-0.5 / (mu[1] - mu[0]) ** 2 * (d[:, None] - mu) ** 2)
    c = 0.5 * (np.cos(d * np.pi / cutoff) + 1.0)

    h = p["embedding"]["embedding"][z]
    k = 0
    while f"interaction_{k}" in p:
        b = p[f"interaction_{k}"]
        w = dense(ssp(dense(expansion, b["filter_0"])), b["filter_1"]) * c[:, None]
        x = h @ b["conv_in"]["kernel"]
        agg = np.zeros_like(x)
        np.add.at(agg, i, x[j] * w)  # message x_j * W, summed at the target
        h = h + dense(ssp(dense(agg, b["conv_out"])), b["dense"])
        k += 1
    return dense(ssp(dense(h, p["readout_0"])), p["readout_1"])[:, 0]


def test_matches_a_numpy_transcription_of_torch_geometric():
    module = SchNet(hidden=16, num_filters=12, num_interactions=3, num_gaussians=9, cutoff=3.0)
    z = ATOMIC_NUMBERS
    params = random_params(module, z, seed=3)
    x = 1.3 * POSITIONS  # some pairs beyond the 3 Å cutoff
    mean, std = -17637.828125, 0.7  # MDsim normaliser: E = std * sum(out) + mean
    scaled = module.clone(energy_scale=std, energy_shift=mean / len(z))
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
        per_atom = jax.jit(module.apply)({"params": p64}, z, free_graph(x))
        energy = jax.jit(make_potential(scaled, z, space.free()[0]).energy_fn)(p64, jnp.asarray(x))
    expected = reference_schnet(params, z, x, 3.0, 9)
    assert np.min(np.linalg.norm(x[:, None] - x[None], axis=-1)[np.triu_indices(7, 1)]) < 3.0
    assert np.max(np.linalg.norm(x[:, None] - x[None], axis=-1)) > 3.0
    np.testing.assert_allclose(np.asarray(per_atom), expected, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(float(energy), std * expected.sum() + mean, rtol=1e-13, atol=1e-7)


def test_rejects_invalid_atomic_numbers_and_offsets():
    graph = free_graph(POSITIONS[:3])
    params = random_params(SchNet(hidden=8, num_filters=8, num_interactions=1), ATOMIC_NUMBERS[:3])
    module = SchNet(hidden=8, num_filters=8, num_interactions=1)
    with pytest.raises(ValueError, match="atomic numbers must lie in"):
        module.apply({"params": params}, np.array([6, 0, 1]), graph)
    with pytest.raises(ValueError, match="atomic numbers must lie in"):
        module.apply({"params": params}, np.array([6, 100, 1]), graph)
    bad = module.clone(gaussian_offsets=(0.0, 1.0))
    with pytest.raises(ValueError, match="gaussian_offsets"):
        bad.apply({"params": params}, np.array([6, 8, 1]), graph)


@pytest.mark.parametrize("periodic", [False, True])
def test_undirected_edges_give_the_directed_energies_and_forces(periodic):
    """Each pair listed once with messages both ways equals the directed all-pairs graph."""
    with jax.enable_x64(True):
        _check_undirected(periodic)


def _check_undirected(periodic):
    from jax_md import partition

    directed = SchNet(hidden=16, num_filters=16, num_interactions=2, cutoff=3.0)
    undirected = directed.clone(undirected_edges=True)
    params = random_params(directed, ATOMIC_NUMBERS, dtype=np.float64)
    positions = jnp.asarray(POSITIONS, jnp.float64)
    if periodic:
        box = 6.0
        displacement, _ = space.periodic(box)
        positions = jnp.mod(positions, box)
        potentials, neighbors = [], []
        for module, fmt in ((directed, partition.Sparse), (undirected, partition.OrderedSparse)):
            neighbor_fn = partition.neighbor_list(
                displacement, box, 3.0, format=fmt, fractional_coordinates=False
            )
            neighbors.append(neighbor_fn.allocate(positions))
            potentials.append(
                make_potential(module, ATOMIC_NUMBERS, displacement, use_neighbor_list=True)
            )
        with pytest.raises(ValueError, match="OrderedSparse"):
            potentials[1].energy_fn(params, positions, neighbors[0])
    else:
        displacement, _ = space.free()
        potentials = [
            make_potential(m, ATOMIC_NUMBERS, displacement) for m in (directed, undirected)
        ]
        neighbors = [None, None]
    (e0, f0), (e1, f1) = (
        (p.energy_fn(params, positions, nb), p.force_fn(params, positions, nb))
        for p, nb in zip(potentials, neighbors, strict=True)
    )
    assert abs(float(e0)) > 1e-3  # a non-trivial energy
    np.testing.assert_allclose(float(e1), float(e0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(f1), np.asarray(f0), rtol=1e-10, atol=1e-12)


def test_shifted_softplus_and_its_derivatives_match_the_closed_forms():
    """The custom JVP (sigmoid from the cached exp(-|x|)) gives softplus(x) - log 2, its
    derivative sigmoid(x) and second derivative e^-|x| / (1 + e^-|x|)^2, also far into both
    tails (float64; autodiff of jax.nn.softplus underflows to 0 there, this does not)."""
    from stabie_jax.models.schnet import LOG2_FLOAT32, shifted_softplus

    with jax.enable_x64(True):
        x = jnp.array([-60.0, -20.0, -3.0, -1e-3, 0.0, 1e-3, 0.7, 5.0, 40.0, 80.0])
        xs = np.asarray(x)
        decay = np.exp(-np.abs(xs))
        value = np.maximum(xs, 0) + np.log1p(decay) - LOG2_FLOAT32
        first = np.where(xs >= 0, 1 / (1 + decay), decay / (1 + decay))
        second = decay / (1 + decay) ** 2
        np.testing.assert_allclose(shifted_softplus(x), value, rtol=1e-15, atol=1e-15)
        d1 = jax.vmap(jax.grad(shifted_softplus))(x)
        d2 = jax.vmap(jax.grad(jax.grad(shifted_softplus)))(x)
        np.testing.assert_allclose(d1, first, rtol=1e-14, atol=0)
        np.testing.assert_allclose(d2, second, rtol=1e-13, atol=0)
        np.testing.assert_allclose(
            shifted_softplus(x), jax.nn.softplus(x) - LOG2_FLOAT32, atol=1e-15
        )
        assert float(d2[4]) == 0.25 and float(d1[4]) == 0.5
