"""NequIP: nequip-package layout, parameter count and equivariance of intermediate features.

The generic physical checks (finite-difference forces, invariance, cutoff continuity, jit,
neighbour lists, PBC) run for NequIP in ``models_potential_test.py``.
"""

from __future__ import annotations

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models_potential_test import (
    ATOMIC_NUMBERS,
    POSITIONS,
    free_graph,
    random_params,
    random_rotation,
    tiny_model,
)

from stabie_jax.models import parameter_count
from stabie_jax.models.nequip import NequIP, second_moment_normalization

PAPER_PARAMETER_COUNT = 120_000  # Table 1: 0.12M
ALA3_ATOMIC_NUMBERS = np.array([6, 6, 8, 1, 1, 1, 7], dtype=np.int32)


def _paper_shapes():
    module = NequIP()  # Ac-Ala3-NHMe settings of ../shared/REFERENCE_SETTINGS.md B1
    graph = free_graph(POSITIONS)
    z = jnp.asarray(ALA3_ATOMIC_NUMBERS)
    variables = jax.eval_shape(module.init, jax.random.key(0), z, graph)
    _, state = jax.eval_shape(
        lambda v: module.apply(v, z, graph, mutable=["intermediates"]), variables
    )
    return variables["params"], state["intermediates"]


def test_parameter_count_and_layout_at_paper_settings():
    params, intermediates = _paper_shapes()
    count = parameter_count(params)
    print(f"NequIP parameters at the paper's Ac-Ala3-NHMe settings: {count:,}")
    assert abs(count - PAPER_PARAMETER_COUNT) <= 0.15 * PAPER_PARAMETER_COUNT
    # trainable entries per module of the authors' nequip checkpoint (state_dict shapes)
    checkpoint = {
        "bessel_weights": 8,
        "chemical_embedding": 128,
        "layer0_convnet_conv": {"linear_1": 1024, "fc": 8704, "linear_2": 3072, "sc": 8192},
        "layer1_convnet_conv": {"linear_1": 2048, "fc": 14848, "linear_2": 9216, "sc": 16384},
        "layer2_convnet_conv": {"linear_1": 3072, "fc": 20992, "linear_2": 12288, "sc": 20480},
        "conv_to_output_hidden": 512,
        "output_hidden_to_scalar": 16,
    }
    for name, expected in checkpoint.items():
        if isinstance(expected, dict):
            for sub, n in expected.items():
                assert parameter_count(params[name][sub]) == n, (name, sub)
        else:
            assert parameter_count(params[name]) == expected, name
    assert count == 120_984
    # radial MLP output = one weight per (uvu path, channel): 2, 5 and 8 paths of 32 channels
    assert [params[f"layer{i}_convnet_conv"]["fc"]["layer2"].shape[1] for i in range(3)] == [
        64,
        160,
        256,
    ]
    # feature irreps after each gate, as nequip's ConvNetLayer builds them
    irreps = [str(intermediates[f"layer{i}_features"][0].irreps) for i in range(3)]
    assert irreps == ["32x0e+32x1o", "32x0e+32x1e+32x1o", "32x0e+32x0o+32x1e+32x1o"]


def test_intermediate_features_transform_with_their_irreps():
    module = tiny_model("nequip")
    params = random_params(module, ATOMIC_NUMBERS, seed=5)
    x = POSITIONS + 0.05 * np.random.default_rng(8).standard_normal(POSITIONS.shape)
    rotation = random_rotation(11)
    improper = -random_rotation(12)  # rotation times inversion: checks the parities
    matrices = [rotation, improper]

    @jax.jit
    @jax.vmap
    def features(positions):
        _, state = module.apply(
            {"params": params}, ATOMIC_NUMBERS, free_graph(positions), mutable=["intermediates"]
        )
        return {k: v[0] for k, v in state["intermediates"].items()}

    batch = np.stack([x] + [x @ r.T for r in matrices]).astype(np.float32)
    out = features(jnp.asarray(batch))
    assert len(out) == 3
    for name, f in out.items():
        base = f[0]
        for k, r in enumerate(matrices, start=1):
            expected = base.transform_by_matrix(jnp.asarray(r, jnp.float32))
            np.testing.assert_allclose(f[k].array, expected.array, atol=2e-5, err_msg=name)
        # non-vacuous: the non-scalar features are non-zero and change under the rotation
        vectors = base.filter(drop=["0e"]).array
        assert float(jnp.max(jnp.abs(vectors))) > 1e-2
        assert float(jnp.max(jnp.abs(f[1].filter(drop=["0e"]).array - vectors))) > 1e-3
    # odd scalars (0o, present from the third layer) flip sign under the improper rotation
    odd = out["layer2_features"].filter(keep=["0o"]).array
    assert odd.shape[-1] == 4
    np.testing.assert_allclose(odd[2], -odd[0], atol=2e-5)
    assert float(jnp.max(jnp.abs(odd[0]))) > 1e-3


def test_activation_normalisation_two_routes():
    """Gauss-Hermite quadrature vs e3nn-jax's quantile-grid estimate of e3nn's normalize2mom."""
    for name, fn in (("silu", jax.nn.silu), ("tanh", jnp.tanh)):
        c = second_moment_normalization(name)
        ratio = float(e3nn.normalize_function(fn)(1.3) / fn(1.3))
        np.testing.assert_allclose(c, ratio, rtol=2e-5)
    z = np.random.default_rng(0).standard_normal(1_000_000)
    silu = z / (1 + np.exp(-z))
    np.testing.assert_allclose(np.mean((second_moment_normalization("silu") * silu) ** 2), 1, 0.01)
    with pytest.raises(ValueError, match="activation"):
        second_moment_normalization("gelu")


def test_unknown_element_is_rejected():
    module = tiny_model("nequip")  # species H, C, O
    params = random_params(module, ATOMIC_NUMBERS, seed=0)
    z = ATOMIC_NUMBERS.copy()
    z[0] = 7  # nitrogen
    with pytest.raises(ValueError, match="not among the model's species"):
        jax.eval_shape(lambda p: module.apply({"params": p}, z, free_graph(POSITIONS)), params)
