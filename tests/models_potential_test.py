"""Physical properties every model must have, checked on tiny SchNet and NequIP configurations.

Each model is compiled a handful of times per module: batched float64 energy and force
functions (padded to a fixed batch so that one executable serves every test), a periodic and a
neighbour-list variant. Parameters are drawn with numpy from the shapes ``init`` would create
(``jax.eval_shape``), which avoids compiling the random initialisers.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_md import partition, space

from stabie_jax.models import (
    Graph,
    atomwise_scale_shift,
    build_graph,
    dense_edges,
    make_potential,
    parameter_count,
    species_index,
)
from stabie_jax.models.nequip import NequIP
from stabie_jax.models.radial import (
    bessel_basis,
    bessel_frequencies,
    cosine_cutoff,
    gaussian_coefficient,
    gaussian_offsets,
    gaussian_smearing,
    polynomial_cutoff,
)
from stabie_jax.models.schnet import SchNet

CUTOFF = 4.0
# Ethanol-like C2H5O fragment: C, C, O and four H (Å); H 3-6 permute among themselves.
ATOMIC_NUMBERS = np.array([6, 6, 8, 1, 1, 1, 1], dtype=np.int32)
POSITIONS = np.array(
    [
        [0.00, 0.00, 0.00],
        [1.52, 0.03, -0.02],
        [2.01, 1.36, 0.04],
        [-0.38, 1.02, 0.05],
        [-0.41, -0.52, 0.88],
        [-0.36, -0.49, -0.91],
        [1.90, -0.55, 0.85],
    ]
)
BATCH = 48


def tiny_model(kind: str):
    """Small but complete configurations (NequIP with 3 layers, so that 0o and 1e appear)."""
    if kind == "schnet":
        return SchNet(
            hidden=16, num_filters=16, num_interactions=2, num_gaussians=10, cutoff=CUTOFF
        )
    return NequIP(
        species=(1, 6, 8),
        num_layers=3,
        hidden_irreps="4x0e+4x1e+4x0o+4x1o",
        embedding_irreps="4x0e",
        output_hidden_irreps="2x0e",
        radial_features=(8,),
        cutoff=CUTOFF,
        avg_num_neighbors=5.0,
    )


def free_graph(positions) -> Graph:
    senders, receivers = dense_edges(len(positions))
    # A fresh copy: jax 0.10 caches constants made from a numpy object inside a trace and hands
    # the float32 one back later under enable_x64 (jnp.asarray(same object) -> float32).
    if not isinstance(positions, jax.Array):
        positions = jnp.asarray(np.array(positions))
    return build_graph(space.free()[0], positions, senders, receivers)


def random_params(module, atomic_numbers, seed: int = 0, dtype=np.float32):
    """Random params with the structure of ``module.init`` (no compilation).

    Dense kernels ~ N(0, 1/fan_in), biases ~ N(0, 0.01), Bessel frequencies ``k pi (1 + 5%)``,
    everything else (embeddings, e3nn weights, which e3nn normalises itself) ~ N(0, 1).
    """
    shapes = jax.eval_shape(
        module.init,
        jax.random.key(0),
        jnp.asarray(atomic_numbers),
        free_graph(POSITIONS[: len(atomic_numbers)].astype(np.float32)),
    )["params"]
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path[-1:])
        x = rng.standard_normal(leaf.shape)
        if "kernel" in name:
            x = x / np.sqrt(leaf.shape[0])
        elif "bias" in name:
            x = 0.1 * x
        elif "bessel_weights" in name:
            x = bessel_frequencies(leaf.shape[0]) * (1.0 + 0.05 * x)
        return jnp.asarray(x, dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def random_rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q * np.sign(np.linalg.det(q))


class Harness:
    """A tiny model with float64 batched energy/force functions compiled once."""

    def __init__(self, kind: str):
        self.kind = kind
        self.module = tiny_model(kind)
        self.z = ATOMIC_NUMBERS
        self.params32 = random_params(self.module, self.z, seed=1)
        self.potential = make_potential(self.module, self.z, space.free()[0])
        with jax.enable_x64(True):
            self.params64 = jax.tree_util.tree_map(
                lambda x: jnp.asarray(x, jnp.float64), self.params32
            )
            self._energies = jax.jit(jax.vmap(self.potential.energy_fn, (None, 0)))
            self._forces = jax.jit(jax.vmap(self.potential.force_fn, (None, 0)))

    def _batched(self, fn, positions):
        positions = np.asarray(positions, dtype=np.float64)
        n = positions.shape[0]
        if n > BATCH:
            raise ValueError(f"at most {BATCH} configurations per call")
        padded = np.concatenate([positions, np.repeat(positions[:1], BATCH - n, axis=0)])
        with jax.enable_x64(True):
            out = fn(self.params64, jnp.asarray(padded))
            assert out.dtype == jnp.float64
            return np.asarray(out)[:n]

    def energies(self, positions) -> np.ndarray:
        """``[B] eV`` for ``[B, N, 3]`` positions, float64."""
        return self._batched(self._energies, positions)

    def forces(self, positions) -> np.ndarray:
        """``[B, N, 3] eV/Å``, float64."""
        return self._batched(self._forces, positions)


@pytest.fixture(scope="module", params=["schnet", "nequip"])
def harness(request) -> Harness:
    return Harness(request.param)


def perturbed(seed: int, scale: float = 0.05) -> np.ndarray:
    return POSITIONS + scale * np.random.default_rng(seed).standard_normal(POSITIONS.shape)


def test_forces_equal_minus_gradient_by_finite_differences(harness):
    x = perturbed(0)
    h = 1e-4
    displaced = []
    for k in range(x.size):
        for sign in (1.0, -1.0):
            y = x.copy().reshape(-1)
            y[k] += sign * h
            displaced.append(y.reshape(x.shape))
    e = harness.energies(displaced).reshape(-1, 2)
    fd_forces = -(e[:, 0] - e[:, 1]).reshape(x.shape) / (2 * h)
    forces = harness.forces([x])[0]
    assert np.max(np.abs(forces)) > 1e-3  # a non-trivial check
    np.testing.assert_allclose(forces, fd_forces, atol=1e-7, rtol=1e-6)


def test_energy_invariant_and_forces_equivariant(harness):
    x = perturbed(1)
    rotations = [random_rotation(s) for s in (2, 3)]
    inversion = -np.eye(3)
    perm = np.array([0, 1, 2, 5, 3, 6, 4])  # permutes the four hydrogens
    configs = [x] + [x @ r.T for r in rotations] + [x @ inversion.T]
    configs += [x + np.array([3.1, -7.2, 0.4]), x[perm]]
    e = harness.energies(configs)
    f = harness.forces(configs)
    np.testing.assert_allclose(e[1:], e[0], atol=1e-10, rtol=1e-12)
    for r, fr in zip([*rotations, inversion], f[1:4], strict=True):
        np.testing.assert_allclose(fr, f[0] @ r.T, atol=1e-10)
    np.testing.assert_allclose(f[4], f[0], atol=1e-10)
    np.testing.assert_allclose(f[5], f[0][perm], atol=1e-10)
    # a different geometry gives a different energy (the checks above are not vacuous)
    assert abs(harness.energies([perturbed(2)])[0] - e[0]) > 1e-4


def test_energy_continuous_as_an_atom_crosses_the_cutoff(harness):
    """Atom 6 (H) moves along +x away from the O atom (the largest x of the rest), so only the
    O-H pair crosses the cutoff; energy and force are continuous there."""
    x = POSITIONS.copy()

    def place(d):
        y = x.copy()
        y[6] = x[2] + np.array([d, 0.0, 0.0])
        return y

    eps = 1e-3
    ds = [CUTOFF - eps, CUTOFF + eps, CUTOFF + 0.7, CUTOFF - 0.3]
    e = harness.energies([place(d) for d in ds])
    f = harness.forces([place(CUTOFF - eps)])[0]
    np.testing.assert_allclose(e[1], e[2], atol=1e-12)  # beyond the cutoff: no interaction
    assert abs(e[0] - e[1]) < 1e-6
    assert abs(e[3] - e[1]) > 1e-4  # inside the cutoff the pair does interact
    assert np.max(np.abs(f[6])) < 1e-3  # smooth cutoffs: the pair force vanishes too


def test_jit_matches_eager_vmap_and_does_not_retrace(harness):
    configs = [perturbed(s) for s in (3, 4, 5)]
    chex.clear_trace_counter()  # the counter is keyed on the code, shared by both models
    with jax.enable_x64(True):

        @jax.jit
        @chex.assert_max_traces(n=1)
        def energy(params, positions):
            return harness.potential.energy_fn(params, positions)

        jitted = [float(energy(harness.params64, jnp.asarray(c))) for c in configs]
        with jax.debug_nans(False):  # op-by-op NaN checks make eager evaluation very slow
            eager = float(harness.potential.energy_fn(harness.params64, jnp.asarray(configs[0])))
    np.testing.assert_allclose(jitted, harness.energies(configs), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(eager, jitted[0], rtol=1e-12, atol=1e-12)
    out = jax.eval_shape(
        harness.potential.energy_fn, harness.params32, POSITIONS.astype(np.float32)
    )
    assert out.dtype == jnp.float32
    with jax.enable_x64(True):  # float32 params, float64 positions: computed in float64
        out = jax.eval_shape(harness.potential.energy_fn, harness.params32, POSITIONS.copy())
    assert out.dtype == jnp.float64


def test_periodic_box_and_sparse_neighbor_list_match_free_space(harness):
    box = 12.0
    x = 1.5 * perturbed(6)  # stretched: some pairs lie beyond the cutoff
    # straddle two faces of the box, then wrap
    wrapped = np.mod(x + np.array([box - 1.0, 0.3 * box, box - 0.5]), box)
    displacement, _ = space.periodic(box)
    periodic = make_potential(harness.module, harness.z, displacement)
    sparse = make_potential(harness.module, harness.z, displacement, use_neighbor_list=True)
    shifts = np.array([[0.0, 0.0, 0.0], [box, 0.0, 0.0], [0.0, -box, 2 * box]])
    with jax.enable_x64(True):
        batch = jnp.asarray(wrapped[None] + shifts[:, None, :])
        e_periodic = jax.jit(jax.vmap(periodic.energy_fn, (None, 0)))(harness.params64, batch)
        neighbor_fn = partition.neighbor_list(
            displacement,
            box,
            CUTOFF,
            dr_threshold=0.5,
            format=partition.Sparse,
            disable_cell_list=True,
        )
        nbrs = neighbor_fn.allocate(jnp.asarray(wrapped))
        assert not nbrs.did_buffer_overflow
        assert np.any(np.asarray(nbrs.idx[0]) == len(wrapped))  # the list has padded slots
        per_atom_sparse = jax.jit(sparse.per_atom_energy_fn)(
            harness.params64, jnp.asarray(wrapped), nbrs
        )
        per_atom_dense = jax.jit(periodic.per_atom_energy_fn)(
            harness.params64, jnp.asarray(wrapped)
        )
    e_free = harness.energies([x])[0]
    np.testing.assert_allclose(np.asarray(e_periodic), e_free, atol=1e-10, rtol=1e-12)
    np.testing.assert_allclose(per_atom_sparse, per_atom_dense, atol=1e-12)


def test_padded_edges_contribute_exactly_nothing(harness):
    x = jnp.asarray(perturbed(7).astype(np.float32))
    n = len(x)
    senders, receivers = dense_edges(n)
    pad = np.full(5, n, dtype=np.int32)
    displacement = space.free()[0]
    plain = build_graph(displacement, x, senders, receivers)
    padded = build_graph(
        displacement, x, np.concatenate([pad, senders, pad]), np.concatenate([pad, receivers, pad])
    )
    assert int(jnp.sum(~padded.edge_mask)) == 10 and bool(
        jnp.all(jnp.isfinite(padded.edge_vectors))
    )

    @jax.jit
    def per_atom_and_grad(params, graph):
        fn = lambda p: harness.module.apply({"params": p}, harness.z, graph)  # noqa: E731
        return fn(params), jax.grad(lambda p: jnp.sum(fn(p)))(params)

    e_plain, g_plain = per_atom_and_grad(harness.params32, plain)
    e_padded, g_padded = per_atom_and_grad(harness.params32, padded)
    np.testing.assert_allclose(e_padded, e_plain, rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(g_padded, g_plain, rtol=1e-5, atol=1e-6)


# --- radial bases and cutoffs ------------------------------------------------------------------


def test_cutoffs_vanish_smoothly_at_the_cutoff():
    with jax.enable_x64(True):
        rc = 5.0
        r = jnp.asarray(rc)
        poly = lambda s: polynomial_cutoff(s, rc, p=6)  # noqa: E731
        cos = lambda s: cosine_cutoff(s, rc)  # noqa: E731
        for fn, smooth_orders in ((poly, 3), (cos, 2)):
            g = fn
            for _ in range(smooth_orders):
                assert abs(float(g(r - 1e-9))) < 1e-6
                g = jax.grad(g)
            assert float(fn(jnp.asarray(0.0))) == 1.0
            assert float(fn(r + 0.1)) == 0.0 and float(jax.grad(fn)(r + 0.1)) == 0.0
        # the cosine cutoff's second derivative does not vanish: (pi/rc)^2 / 2
        d2 = jax.grad(jax.grad(cos))(r - 1e-9)
        np.testing.assert_allclose(float(d2), 0.5 * (np.pi / rc) ** 2, rtol=1e-6)
        # GemNet's p = 5 envelope at half the cutoff, from the closed form
        x = 0.5
        expected = 1 - 21 * x**5 + 35 * x**6 - 15 * x**7
        np.testing.assert_allclose(float(polynomial_cutoff(jnp.asarray(2.5), rc, p=5)), expected)


def test_radial_bases_match_closed_forms():
    with jax.enable_x64(True):
        mu = gaussian_offsets(0.0, 5.0, 25)
        np.testing.assert_allclose(mu[1], 5.0 / 24.0, rtol=1e-7)
        np.testing.assert_allclose(gaussian_coefficient(mu), -0.5 * (24.0 / 5.0) ** 2, rtol=1e-6)
        r = jnp.asarray([0.7, 3.3])
        g = gaussian_smearing(r, mu)
        np.testing.assert_allclose(g[1, 16], np.exp(gaussian_coefficient(mu) * (3.3 - mu[16]) ** 2))
        b = bessel_basis(r, 5.0, bessel_frequencies(8))
        np.testing.assert_allclose(b[0, 2], 2 / 5.0 * np.sin(3 * np.pi * 0.7 / 5.0) / 0.7)


# --- shared helpers ----------------------------------------------------------------------------


def test_species_index_and_scale_shift():
    z = np.array([8, 1, 1, 6])
    np.testing.assert_array_equal(species_index(z, (1, 6, 8)), [2, 0, 0, 1])
    with pytest.raises(ValueError, match="not among the model's species"):
        species_index(z, (1, 6))
    u = jnp.asarray([1.0, 2.0, 3.0, 4.0])
    e = atomwise_scale_shift(u, z, (1, 6, 8), (2.0, 3.0, 4.0), (-1.0, -2.0, -3.0))
    np.testing.assert_allclose(e, [4 * 1 - 3, 2 * 2 - 1, 2 * 3 - 1, 3 * 4 - 2])
    np.testing.assert_allclose(atomwise_scale_shift(u, z, None, 0.5, 1.0), 0.5 * u + 1.0)
    with pytest.raises(ValueError, match="shape"):
        atomwise_scale_shift(u, z, (1, 6, 8), (1.0, 2.0), 0.0)
    # unknown elements under tracing become NaN instead of a silent zero
    traced = jax.jit(lambda zz: atomwise_scale_shift(u, zz, (1, 6), (1.0, 1.0), 0.0))
    with jax.debug_nans(False):
        out = np.asarray(traced(jnp.asarray(z)))
    assert np.isnan(out[0]) and np.all(np.isfinite(out[1:]))


def test_model_scale_shift_fields_are_constants(harness):
    shifted = harness.module.clone(energy_scale=2.0, energy_shift=-1.5)
    graph = free_graph(POSITIONS.astype(np.float32))
    base = jax.jit(harness.module.apply)({"params": harness.params32}, harness.z, graph)
    out = jax.jit(shifted.apply)({"params": harness.params32}, harness.z, graph)
    np.testing.assert_allclose(out, 2.0 * base - 1.5, rtol=1e-6, atol=1e-6)
    assert parameter_count(harness.params32) == parameter_count(
        jax.eval_shape(shifted.init, jax.random.key(0), harness.z, graph)["params"]
    )
