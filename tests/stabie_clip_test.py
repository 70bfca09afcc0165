"""What the gradient clip clips (``StabieSettings.grad_clip_scope``): the sum of the two terms
(the authors') or each term before they are added; checked against numpy on quadratic losses
whose gradients are known in closed form."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stabie_jax.stabie import StabieProblem, StabieSettings, make_learning_step, make_optimizer

A = np.array([3.0, -4.0, 12.0])  # ∇L_obs at θ = 0 is −1000·A: norm 13,000
B = np.array([0.5, 0.2, -0.1])  # ∇L_QM at θ = 0 is −B
LAM, CLIP, LR = 4.0, 1.0, 1e-2


def _problem():
    obs = lambda p, traj, key: (0.5 * 1000.0 * jnp.sum((p["w"] - A) ** 2), {})
    qm = lambda p, key: 0.5 * jnp.sum((p["w"] - B) ** 2)
    return StabieProblem(None, None, obs, qm)


def _step(scope, clip=CLIP):
    settings = StabieSettings(1, 1, LR, LAM, grad_clip_norm=clip, grad_clip_scope=scope)
    params = {"w": jnp.zeros(3)}
    step = make_learning_step(_problem(), settings)
    out = step(params, make_optimizer(settings).init(params), None, jax.random.key(0), LR)
    return out, np.asarray(out.params["w"])


def _clipped(g, c):
    return g * min(1.0, c / np.linalg.norm(g))


def test_each_term_clips_the_two_gradients_separately():
    g_obs, g_qm = -1000.0 * A, -LAM * B
    out, w = _step("each_term")
    g = _clipped(g_obs, CLIP) + _clipped(g_qm, CLIP)
    np.testing.assert_allclose(w, -LR * g, rtol=1e-6)
    np.testing.assert_allclose(out.metrics["update_norm"], LR * np.linalg.norm(g), rtol=1e-6)
    # the logged term norms are the unclipped ones; the share is that of the applied sum
    np.testing.assert_allclose(out.metrics["obs_grad_norm"], np.linalg.norm(g_obs), rtol=1e-6)
    np.testing.assert_allclose(out.metrics["qm_grad_norm"], np.linalg.norm(g_qm), rtol=1e-6)
    np.testing.assert_allclose(out.metrics["grad_norm"], np.linalg.norm(g), rtol=1e-6)
    cosine = g_obs @ g_qm / np.linalg.norm(g_obs) / np.linalg.norm(g_qm)
    np.testing.assert_allclose(out.metrics["grad_cosine"], cosine, rtol=1e-6)
    share = _clipped(g_obs, CLIP) @ g / (g @ g)
    assert 0.3 < share < 0.7  # both terms act
    np.testing.assert_allclose(out.metrics["obs_share"], share, rtol=1e-6)


def test_sum_scope_follows_the_larger_term_alone():
    g_obs, g_qm = -1000.0 * A, -LAM * B
    out, w = _step("sum")
    g = g_obs + g_qm
    np.testing.assert_allclose(w, -LR * _clipped(g, CLIP), rtol=1e-6)
    # the QM term is 1/6,000 of the sum: the update is (nearly) the observable direction
    cos = w @ (-g_obs) / np.linalg.norm(w) / np.linalg.norm(g_obs)
    assert cos > 0.9999
    assert out.metrics["obs_share"] > 0.999


def test_each_term_leaves_a_term_under_the_clip_unchanged():
    # λ·‖∇L_QM‖ = 2.2 under a clip of 10: only the observable term is scaled
    out, w = _step("each_term", clip=10.0)
    g = _clipped(-1000.0 * A, 10.0) + (-LAM * B)
    np.testing.assert_allclose(w, -LR * g, rtol=1e-6)


def test_qm_clip_fraction_shortens_only_the_qm_term():
    settings = StabieSettings(
        1, 1, LR, LAM, grad_clip_norm=CLIP, grad_clip_scope="each_term", qm_clip_fraction=0.25
    )
    params = {"w": jnp.zeros(3)}
    out = make_learning_step(_problem(), settings)(
        params, make_optimizer(settings).init(params), None, jax.random.key(0), LR
    )
    g = _clipped(-1000.0 * A, CLIP) + _clipped(-LAM * B, 0.25 * CLIP)
    np.testing.assert_allclose(np.asarray(out.params["w"]), -LR * g, rtol=1e-6)
    with pytest.raises(ValueError, match="qm_clip_fraction"):
        dataclasses.replace(settings, qm_clip_fraction=0.0)


def test_unknown_clip_scope_is_refused():
    with pytest.raises(ValueError, match="grad_clip_scope"):
        StabieSettings(1, 1, LR, LAM, grad_clip_scope="both")


def test_each_term_without_a_clip_is_the_plain_sum():
    settings = StabieSettings(1, 1, LR, LAM, grad_clip_norm=None, grad_clip_scope="each_term")
    params = {"w": jnp.zeros(3)}
    out = make_learning_step(_problem(), settings)(
        params, make_optimizer(settings).init(params), None, jax.random.key(0), LR
    )
    np.testing.assert_allclose(
        np.asarray(out.params["w"]), -LR * (-1000.0 * A - LAM * B), rtol=1e-6
    )
    assert dataclasses.replace(settings, grad_clip_scope="sum").grad_clip_scope == "sum"
