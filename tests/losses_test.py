"""Tests of L_QM and L_obs on an analytic harmonic pair potential."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stabie_jax.losses import (
    LabelledFrames,
    make_qm_loss_fn,
    make_training_set_qm_loss,
    observable_loss,
    predict_energy_forces,
    qm_errors,
    qm_loss,
)
from stabie_jax.models.potential import Potential

K_TRUE, R0_TRUE = 2.0, 1.2


def harmonic_potential() -> Potential:
    """U = Σ_{i<j} ½ k (r_ij − r0)², params {"k", "r0"}."""

    def per_atom(params, positions, neighbor=None):
        d = positions[:, None, :] - positions[None, :, :]
        n = positions.shape[0]
        eye = jnp.eye(n, dtype=bool)
        r = jnp.sqrt(jnp.sum(jnp.where(eye[..., None], 1.0, d) ** 2, axis=-1))
        pair = 0.5 * params["k"] * (r - params["r0"]) ** 2
        return 0.5 * jnp.sum(jnp.where(eye, 0.0, pair), axis=1)

    energy = lambda p, r, nbr=None: jnp.sum(per_atom(p, r))
    force = lambda p, r, nbr=None: -jax.grad(energy, argnums=1)(p, r)
    return Potential(energy, per_atom, force)


def frames_from(params, n_frames=6, n_atoms=3, seed=0):
    pot = harmonic_potential()
    rng = np.random.default_rng(seed)
    positions = jnp.asarray(1.2 * rng.standard_normal((n_frames, n_atoms, 3)))
    e, f = jax.jit(jax.vmap(lambda r: predict_energy_forces(pot, params, r)))(positions)
    return LabelledFrames(positions, e, f)


def true_params():
    return {"k": jnp.asarray(K_TRUE), "r0": jnp.asarray(R0_TRUE)}


def test_qm_loss_zero_at_truth_positive_elsewhere():
    with jax.enable_x64(True):
        pot = harmonic_potential()
        frames = frames_from(true_params())
        for energy_loss, force_loss in [("mse", "mse"), ("mae", "l2mae")]:
            loss = jax.jit(
                lambda p, el=energy_loss, fl=force_loss: qm_loss(
                    pot,
                    p,
                    frames,
                    energy_weight=0.3,
                    force_weight=0.7,
                    energy_loss=el,
                    force_loss=fl,
                )
            )
            assert float(loss(true_params())) == pytest.approx(0.0, abs=1e-20)
            for dk, dr in [(0.1, 0.0), (0.0, -0.05), (-0.3, 0.2)]:
                wrong = {"k": jnp.asarray(K_TRUE + dk), "r0": jnp.asarray(R0_TRUE + dr)}
                assert float(loss(wrong)) > 1e-6


def test_qm_loss_matches_hand_computed_value():
    """Numpy re-derivation: U and F of the harmonic pair model are analytic."""
    with jax.enable_x64(True):
        pot = harmonic_potential()
        frames = frames_from(true_params(), n_frames=4)
        k, r0 = 2.5, 1.0
        params = {"k": jnp.asarray(k), "r0": jnp.asarray(r0)}
        e_err, f_sq, f_norm = [], [], []
        for r, e_ref, f_ref in zip(*map(np.asarray, frames[:3]), strict=True):
            u = 0.0
            f = np.zeros_like(r)
            for i in range(3):
                for j in range(i + 1, 3):
                    d = r[i] - r[j]
                    dist = np.linalg.norm(d)
                    u += 0.5 * k * (dist - r0) ** 2
                    g = k * (dist - r0) * d / dist
                    f[i] -= g
                    f[j] += g
            e_err.append(u - e_ref)
            f_sq.append(np.mean((f - f_ref) ** 2))
            f_norm.append(np.mean(np.linalg.norm(f - f_ref, axis=-1)))
        e_err = np.array(e_err)
        expected_mse = 0.2 * np.mean(e_err**2) + 0.8 * np.mean(f_sq)
        qm_loss_jit = jax.jit(
            qm_loss,
            static_argnums=0,
            static_argnames=(
                "energy_weight",
                "force_weight",
                "per_atom_energy",
                "energy_loss",
                "force_loss",
            ),
        )
        got = qm_loss_jit(pot, params, frames, energy_weight=0.2, force_weight=0.8)
        np.testing.assert_allclose(got, expected_mse, rtol=1e-10)
        got_pa = qm_loss_jit(
            pot, params, frames, energy_weight=0.2, force_weight=0.8, per_atom_energy=True
        )
        np.testing.assert_allclose(
            got_pa, 0.2 * np.mean((e_err / 3) ** 2) + 0.8 * np.mean(f_sq), rtol=1e-10
        )
        got_l1 = qm_loss_jit(
            pot,
            params,
            frames,
            energy_weight=0.2,
            force_weight=0.8,
            energy_loss="mae",
            force_loss="l2mae",
        )
        np.testing.assert_allclose(
            got_l1, 0.2 * np.mean(np.abs(e_err)) + 0.8 * np.mean(f_norm), rtol=1e-10
        )
        errors = jax.jit(qm_errors, static_argnums=0)(pot, params, frames)
        np.testing.assert_allclose(errors.energy, e_err, rtol=1e-10)


def test_qm_loss_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        pot = harmonic_potential()
        frames = frames_from(true_params())
        loss = jax.jit(lambda p: qm_loss(pot, p, frames, energy_weight=0.05, force_weight=0.95))
        params = {"k": jnp.asarray(1.7), "r0": jnp.asarray(1.35)}
        grads = jax.jit(jax.grad(loss))(params)
        h = 1e-6
        for name in ("k", "r0"):
            plus = dict(params, **{name: params[name] + h})
            minus = dict(params, **{name: params[name] - h})
            fd = (loss(plus) - loss(minus)) / (2 * h)
            np.testing.assert_allclose(grads[name], fd, rtol=1e-6)
        # Descent direction points at the truth for k (r0 fixed at truth): dL/dk > 0 for k > k*.
        above = {"k": jnp.asarray(K_TRUE + 0.5), "r0": jnp.asarray(R0_TRUE)}
        assert float(jax.grad(loss)(above)["k"]) > 0.0


def test_weights_mask_padding_frames():
    with jax.enable_x64(True):
        pot = harmonic_potential()
        frames = frames_from(true_params(), n_frames=5)
        params = {"k": jnp.asarray(1.0), "r0": jnp.asarray(1.0)}
        loss_fn = jax.jit(make_qm_loss_fn(pot, energy_weight=1.0, force_weight=1.0))
        first3 = LabelledFrames(*(x[:3] for x in frames[:3]))
        ref, _ = loss_fn(params, first3)
        garbage = frames._replace(energies=frames.energies.at[3:].set(1e6))
        masked, _ = loss_fn(params, garbage, jnp.array([1.0, 1.0, 1.0, 0.0, 0.0]))
        np.testing.assert_allclose(masked, ref, rtol=1e-12)


def test_training_set_qm_loss_is_the_mean_over_its_batches():
    """Equal batches of a per-frame mean: any partition of all frames gives the full-set loss;
    random batches that cover a subset give that subset's loss."""
    with jax.enable_x64(True):
        pot = harmonic_potential()
        frames = frames_from(true_params(), n_frames=12)
        frames = frames._replace(energies=frames.energies + jnp.linspace(-0.3, 0.4, 12))
        params = {"k": jnp.asarray(1.5), "r0": jnp.asarray(1.1)}
        kw = dict(energy_weight=0.3, force_weight=0.7)
        full = float(qm_loss(pot, params, frames, **kw))
        key = jax.random.PRNGKey(3)
        ordered = make_training_set_qm_loss(pot, frames, batch_size=4, batches_per_step=0, **kw)
        np.testing.assert_allclose(float(ordered(params, key)), full, rtol=1e-12)
        covering = make_training_set_qm_loss(pot, frames, batch_size=4, batches_per_step=3, **kw)
        np.testing.assert_allclose(float(covering(params, key)), full, rtol=1e-12)
        # 2 random batches of 3: the loss of exactly those 6 frames, which differs from the full
        sub = make_training_set_qm_loss(pot, frames, batch_size=3, batches_per_step=2, **kw)
        idx = np.asarray(jax.random.choice(key, 12, (2, 3), replace=False)).ravel()
        picked = jax.tree.map(lambda x: x[idx], frames)
        expected = float(qm_loss(pot, params, picked, **kw))
        np.testing.assert_allclose(float(sub(params, key)), expected, rtol=1e-12)
        assert abs(expected - full) > 1e-6 * full
        with pytest.raises(ValueError, match="exceeds the 12 training frames"):
            make_training_set_qm_loss(pot, frames, batch_size=5, batches_per_step=3, **kw)
        with pytest.raises(ValueError, match="batch_size=13"):
            make_training_set_qm_loss(pot, frames, batch_size=13, batches_per_step=0, **kw)


def test_observable_loss_values_and_errors():
    g = jnp.array([1.0, 2.0, 4.0])
    ref = jnp.array([1.0, 1.0, 2.0])
    # Default: the squared norm (summed over components), as the authors' update follows.
    assert float(observable_loss(g, ref)) == pytest.approx(5.0)
    assert float(observable_loss(g, ref, reduction="mean")) == pytest.approx(5.0 / 3.0)
    np.testing.assert_allclose(jax.grad(observable_loss)(g, ref), 2.0 * (g - ref))
    mean_loss = lambda x: observable_loss(x, ref, reduction="mean")
    np.testing.assert_allclose(jax.grad(mean_loss)(g), 2.0 * (g - ref) / 3.0)
    # Leading axes (minibatch means) are kept: one loss per row.
    rows = jnp.stack([g, ref, 2 * g])
    np.testing.assert_allclose(observable_loss(rows, ref), [5.0, 0.0, 46.0])
    with pytest.raises(ValueError, match="shapes differ"):
        observable_loss(g, ref[:2])
    with pytest.raises(ValueError, match="reduction"):
        observable_loss(g, ref, reduction="max")


def test_bad_loss_names_raise():
    pot = harmonic_potential()
    frames = frames_from(true_params(), n_frames=2)
    with pytest.raises(ValueError, match="energy_loss"):
        qm_loss(pot, true_params(), frames, energy_weight=1, force_weight=1, energy_loss="huber")
    with pytest.raises(ValueError, match="force_loss"):
        qm_loss(pot, true_params(), frames, energy_weight=1, force_weight=1, force_loss="l1")
