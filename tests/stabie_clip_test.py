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


def _problem(a=A, b=B):
    """Quadratic observable and QM losses with optima ``a`` and ``b``."""
    obs = lambda p, traj, key: (0.5 * 1000.0 * jnp.sum((p["w"] - a) ** 2), {})
    qm = lambda p, key: 0.5 * jnp.sum((p["w"] - b) ** 2)
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


def _projected_step(scope, a, b, clip=CLIP):
    """One step with ``project_conflict`` on the quadratic losses with optima ``a`` and ``b``."""
    settings = StabieSettings(
        1, 1, LR, LAM, grad_clip_norm=clip, grad_clip_scope=scope, project_conflict=True
    )
    params = {"w": jnp.zeros(3)}
    out = make_learning_step(_problem(a, b), settings)(
        params, make_optimizer(settings).init(params), None, jax.random.key(0), LR
    )
    return out, np.asarray(out.params["w"])


@pytest.mark.parametrize("scope", ["sum", "each_term"])
def test_project_conflict_removes_the_component_along_the_qm_term(scope):
    # B' has a negative inner product with A: the gradients -1000 A and -λ B' conflict
    b = np.array([-0.5, 0.2, -0.3])
    g_obs, g_qm = -1000.0 * A, -LAM * b
    assert g_obs @ g_qm < 0
    out, w = _projected_step(scope, A, b)
    g_perp = g_obs - (g_obs @ g_qm) / (g_qm @ g_qm) * g_qm
    np.testing.assert_allclose(g_perp @ g_qm, 0.0, atol=1e-9 * np.linalg.norm(g_obs))
    if scope == "sum":
        g = _clipped(g_perp + g_qm, CLIP)
    else:
        g = _clipped(g_perp, CLIP) + _clipped(g_qm, CLIP)
    np.testing.assert_allclose(w, -LR * g, rtol=1e-5)
    # the step no longer raises L_QM to first order: <Δθ, ∇L_QM> <= 0 (∇L_QM = -b at θ = 0)
    assert w @ (-b) < 0
    # without the projection the same step raises it
    w_plain = -LR * _clipped(g_obs + g_qm, CLIP)
    assert w_plain @ (-b) > 0
    cosine = g_obs @ g_qm / np.linalg.norm(g_obs) / np.linalg.norm(g_qm)
    assert out.metrics["obs_projected"] == 1.0
    np.testing.assert_allclose(out.metrics["obs_removed_fraction"], -cosine, rtol=1e-5)
    np.testing.assert_allclose(
        np.linalg.norm(g_obs - g_perp) / np.linalg.norm(g_obs), -cosine, rtol=1e-9
    )


def test_project_conflict_leaves_agreeing_terms_alone():
    b = np.array([0.5, -0.2, 0.1])  # <A, b> > 0: no conflict
    out, w = _projected_step("sum", A, b)
    np.testing.assert_allclose(w, -LR * _clipped(-1000.0 * A - LAM * b, CLIP), rtol=1e-6)
    assert out.metrics["obs_projected"] == 0.0
    assert out.metrics["obs_removed_fraction"] == 0.0
