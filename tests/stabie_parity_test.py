"""One StABlE learning step against an independent numpy re-implementation of the authors' update.

The authors' learning step (StABlE-Training ``boltzmann_estimator.py`` and its training loop),
written out here from their formulas, for samples cut into minibatches b of B states:

* per minibatch, ``J_b = Ê_b[g] Ê_b[∇θU]ᵀ − Ê_b[g ∇θUᵀ]`` (no 1/kT, no B/(B−1));
* ``v_b = 2(Ê_b[g] − g_ref)``, no division by the number of components;
* observable gradient ``mean_b v_bᵀ J_b``, plus ``λ · mean over QM batches of ∇L_QM``;
* torch ``clip_grad_norm_`` (``coef = max/(‖g‖ + 1e-6)``, applied when < 1), SGD without
  momentum at α.

stabie_jax's side is one :func:`stabie_jax.stabie.make_learning_step` call with the authors'
(α, λ, clip) converted by the experiments' conversion (``hyperparameters.exact_hyperparameters``).
Per-sample energy gradients and the QM-loss gradients come from ``jax.grad`` on both sides (the
authors use autograd too); everything they are combined with — observables, means, the batch
covariances, the vector, the weighting, the clip, the step — is numpy here. float64 throughout,
compared at 1e-6 relative.

A further test checks the logged observable share of the update on a case with a closed form.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import shared_file
from jax.flatten_util import ravel_pytree

from stabie_jax import hyperparameters, losses, md, units
from stabie_jax.localized_estimator import neighbourhood_max_deviation, select_neighbourhoods
from stabie_jax.md import Trajectory
from stabie_jax.models import make_potential
from stabie_jax.models.graph import build_graph, dense_edges
from stabie_jax.models.schnet import SchNet
from stabie_jax.observables import h_of_r, h_of_r_centers
from stabie_jax.stabie import StabieProblem, StabieSettings, make_learning_step, make_optimizer
from stabie_jax.trajectory_losses import (
    global_observable_loss,
    local_observable_loss,
    sample_order,
)

R_MAX, N_BINS, SIGMA = 10.0, 500, 0.01  # the authors' aspirin h(r)


# ---------------------------------------------------------------------------------------------
# The authors' update in numpy.


def authors_observable_gradient(g, dU, g_ref, batch_size):
    """``mean_b v_bᵀ J_b`` over consecutive minibatches; ``g [N, K]``, ``dU [N, P]``."""
    n = g.shape[0]
    assert n % batch_size == 0, "the authors' batches are full"
    total = np.zeros(dU.shape[1])
    n_batches = n // batch_size
    for b in range(n_batches):
        gb, db = g[b * batch_size : (b + 1) * batch_size], dU[b * batch_size : (b + 1) * batch_size]
        mean_g = gb.mean(axis=0)
        jac = np.outer(mean_g, db.mean(axis=0)) - gb.T @ db / batch_size  # [K, P]
        v = 2.0 * (mean_g - g_ref)
        total += v @ jac
    return total / n_batches


def authors_step(grad_obs, grad_qm_batches, qm_weight, clip, alpha):
    """``(Δθ, obs, qm, total)`` of one clipped SGD step on ``grad_obs + λ·mean(grad_qm)``."""
    qm = qm_weight * np.mean(grad_qm_batches, axis=0) if len(grad_qm_batches) else 0.0 * grad_obs
    total = grad_obs + qm
    if clip is not None:
        coef = clip / (np.linalg.norm(total) + 1e-6)
        if coef < 1.0:
            total = total * coef
    return -alpha * total, grad_obs, qm, grad_obs + qm


def numpy_h_of_r(positions):
    """Gaussian-smeared pair-distance distribution on the authors' grid, sum 100."""
    centres = h_of_r_centers(R_MAX, N_BINS)
    n = positions.shape[0]
    i, j = np.nonzero(~np.eye(n, dtype=bool))
    d = np.linalg.norm(positions[i] - positions[j], axis=-1)
    h = np.exp(-0.5 * ((centres[None, :] - d[:, None]) / SIGMA) ** 2).sum(axis=0)
    return 100.0 * h / h.sum()


def flat(tree):
    return np.asarray(ravel_pytree(tree)[0])


def one_authors_step(obs_loss, qm_loss, hp, params, trajectory, key):
    """One stabie_jax learning step with converted hyperparameters ``hp``: ``(out, Δθ)``."""
    settings = StabieSettings(
        steps_per_epoch=1,
        sample_every=1,
        learning_rate=hp.learning_rate,
        qm_weight=hp.qm_weight,
        grad_clip_norm=hp.grad_clip_norm,
        gradient_scale=hp.gradient_scale,
    )
    step = make_learning_step(StabieProblem(None, None, obs_loss, qm_loss), settings)
    out = step(params, make_optimizer(settings).init(params), trajectory, key, hp.learning_rate)
    return out, flat(out.params) - flat(params)


# ---------------------------------------------------------------------------------------------
# Global h(r) estimator: a small SchNet on real rMD17 aspirin frames.


@pytest.fixture(scope="module")
def aspirin():
    d = np.load(shared_file("rmd17_aspirin", "rmd17_aspirin_train_01.npz"))
    z = np.asarray(d["nuclear_charges"], np.int32)
    e = units.kcal_per_mol_to_ev(np.asarray(d["energies"][:300]))
    f = units.kcal_per_mol_to_ev(np.asarray(d["forces"][:300]))
    return z, np.asarray(d["coords"][:300]), e - e.mean(), f


def _schnet_setup(z, x0, cutoff, displacement_fn, seed, energy_scale=1.0):
    module = SchNet(
        hidden=16,
        num_filters=16,
        num_interactions=2,
        num_gaussians=12,
        cutoff=cutoff,
        energy_scale=energy_scale,
    )
    potential = make_potential(module, z, displacement_fn)
    senders, receivers = dense_edges(len(z))
    graph = build_graph(displacement_fn, jnp.asarray(x0), senders, receivers)
    params = module.init(jax.random.key(seed), jnp.asarray(z), graph)["params"]
    return potential, params


@pytest.mark.parametrize("clip", [1.0, None], ids=["clipped", "unclipped"])
def test_global_hr_learning_step_equals_authors_update(aspirin, clip):
    z, coords, energies, forces = aspirin
    # The random model's energies are scaled up (x100) so that the authors' gradient norm is well
    # above 1 (torch's clip divides by ‖g‖ + 1e-6, optax's by ‖g‖: a 1e-6/‖g‖ relative
    # difference) and the clip at the authors' 1.0 acts; λ is scaled down so that both terms
    # count (at λ = 10 this random model's QM gradient is ~10^5x the observable one).
    alpha, lam, B = 1e-3, 1e-4, 10
    T = 500.0
    kT = units.kT(T)
    F, R, frozen = 4, 22, (3, 17)  # 88 frames, two frozen replicas -> 80 valid = 8 batches
    with jax.enable_x64(True):
        potential, params = _schnet_setup(
            z, coords[0], 5.0, md.free_space().displacement_fn, 0, energy_scale=100.0
        )
        params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
        positions = coords[: F * R].reshape(F, R, len(z), 3)
        alive = np.ones((F, R), bool)
        alive[:, list(frozen)] = False
        traj = Trajectory(
            jnp.asarray(positions),
            jnp.zeros_like(jnp.asarray(positions)),
            jnp.zeros((F, R), jnp.int32),
            jnp.asarray(alive),
            None,
        )
        g_ref = np.stack([numpy_h_of_r(x) for x in coords[200:260]]).mean(axis=0)

        # QM: all of frames 100..199 in 5 fixed batches of 20, the authors' per-batch loss
        qm_idx = np.arange(100, 200).reshape(5, 20)
        kw = dict(energy_weight=0.05, force_weight=0.95)
        frames = losses.LabelledFrames(
            jnp.asarray(coords), jnp.asarray(energies), jnp.asarray(forces)
        )

        def qm_loss_fn(p, key):
            del key
            per = [
                losses.qm_loss(potential, p, jax.tree.map(lambda a, i=i: a[i], frames), **kw)
                for i in qm_idx
            ]
            return jnp.mean(jnp.stack(per))

        obs_loss = global_observable_loss(
            potential.energy_fn,
            lambda r: h_of_r(r, r_max=R_MAX, n_bins=N_BINS, sigma=SIGMA),
            jnp.asarray(g_ref),
            kT,
            batch_size=B,
            reduction="sum",
            vjp="per_batch",
        )
        hp = hyperparameters.exact_hyperparameters("authors", alpha, lam, clip, kT, B)
        key = jax.random.key(7)
        out, delta_ours = one_authors_step(obs_loss, qm_loss_fn, hp, params, traj, key)
        assert out.applied

        # ---- the authors' side: samples in the same shuffled order, invalid ones dropped ----
        k_obs, _ = jax.random.split(key)
        mask = alive.reshape(-1)
        order = np.asarray(sample_order(k_obs, jnp.asarray(mask)))
        order = order[mask[order]]
        assert len(order) == 80
        x = positions.reshape(-1, len(z), 3)[order]
        g = np.stack([numpy_h_of_r(xi) for xi in x])
        per_sample = jax.jit(jax.vmap(jax.grad(potential.energy_fn), in_axes=(None, 0)))
        dU = np.stack([flat(t) for t in _unstack(per_sample(params, jnp.asarray(x)))])
        grad_obs = authors_observable_gradient(g, dU, g_ref, B)

        def batch_loss(p, i):  # λ_U mean (ΔE)² + λ_F mean (ΔF)², written out here
            e, f = jax.vmap(lambda r: potential_ef(potential, p, r))(jnp.asarray(coords[i]))
            return kw["energy_weight"] * jnp.mean((e - energies[i]) ** 2) + kw[
                "force_weight"
            ] * jnp.mean((f - forces[i]) ** 2)

        grad_qm = [flat(jax.grad(batch_loss)(params, i)) for i in qm_idx]
        delta_authors, obs, qm, total = authors_step(grad_obs, grad_qm, lam, clip, alpha)

    # the test exercises both terms and (when set) the clip
    n_obs, n_qm, n_total = (np.linalg.norm(v) for v in (obs, qm, total))
    assert n_obs > 0.02 * n_total and n_qm > 0.02 * n_total, (n_obs, n_qm, n_total)
    if clip is not None:
        assert n_total > 2.0 * clip, f"clip {clip} inactive at norm {n_total}"
    np.testing.assert_allclose(
        delta_ours, delta_authors, rtol=1e-6, atol=1e-6 * abs(delta_authors).max()
    )
    rel = np.linalg.norm(delta_ours - delta_authors) / np.linalg.norm(delta_authors)
    assert rel < 1e-6, rel
    # logged norms are the authors' (gradient_scale) and the update is the applied one
    np.testing.assert_allclose(out.metrics["obs_grad_norm"], n_obs, rtol=1e-6)
    np.testing.assert_allclose(out.metrics["qm_grad_norm"], n_qm, rtol=1e-6)
    np.testing.assert_allclose(out.metrics["grad_norm"], n_total, rtol=1e-6)
    np.testing.assert_allclose(out.metrics["update_norm"], np.linalg.norm(delta_authors), rtol=1e-6)
    np.testing.assert_allclose(out.metrics["obs_share"], obs @ total / n_total**2, rtol=1e-6)
    print(
        f"authors' update: |obs| {n_obs:.4g}, |lambda qm| {n_qm:.4g}, |sum| {n_total:.4g}, "
        f"obs share {obs @ total / n_total**2:.3f}, |dtheta| {np.linalg.norm(delta_authors):.3g}"
    )


def potential_ef(potential, params, r):
    e, grad = jax.value_and_grad(potential.energy_fn, argnums=1)(params, r)
    return e, -grad


def _unstack(tree):
    n = jax.tree.leaves(tree)[0].shape[0]
    return [jax.tree.map(lambda a, i=i: a[i], tree) for i in range(n)]


def test_mean_reduction_with_its_conversion_is_the_same_update(aspirin):
    """The mean-over-bins loss, converted with n_observable, gives the sum's update."""
    z, coords, _, _ = aspirin
    B, kT = 10, units.kT(500.0)
    with jax.enable_x64(True):
        potential, params = _schnet_setup(z, coords[0], 5.0, md.free_space().displacement_fn, 1)
        params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
        pos = jnp.asarray(coords[:40].reshape(2, 20, len(z), 3))
        traj = Trajectory(
            pos, jnp.zeros_like(pos), jnp.zeros((2, 20), jnp.int32), jnp.ones((2, 20), bool), None
        )
        g_ref = jnp.asarray(np.stack([numpy_h_of_r(x) for x in coords[200:220]]).mean(axis=0))
        deltas = {}
        for reduction in ("sum", "mean"):
            loss = global_observable_loss(
                potential.energy_fn,
                lambda r: h_of_r(r, r_max=R_MAX, n_bins=N_BINS, sigma=SIGMA),
                g_ref,
                kT,
                batch_size=B,
                reduction=reduction,
                vjp="per_batch",
            )
            hp = hyperparameters.exact_hyperparameters(
                "authors", 1e-3, 0.0, 1.0, kT, B, reduction=reduction, n_observable=N_BINS
            )
            _, deltas[reduction] = one_authors_step(loss, None, hp, params, traj, jax.random.key(3))
    rel = np.linalg.norm(deltas["mean"] - deltas["sum"]) / np.linalg.norm(deltas["sum"])
    assert rel < 1e-9, rel
    assert np.linalg.norm(deltas["sum"]) > 0


# ---------------------------------------------------------------------------------------------
# Localized water estimator: a small per-atom SchNet on SPC/Fw water frames, periodic.


def numpy_oh_lengths(x, atoms, box):
    """``[M, 2]`` O–H lengths (minimum image) of neighbourhoods ``atoms [M, 3]`` (O, H, H)."""
    d = x[atoms[:, 1:]] - x[atoms[:, :1]]
    d -= box * np.round(d / box)
    return np.linalg.norm(d, axis=-1)


def test_localized_water_learning_step_equals_authors_update():
    path = shared_file("spcfw_water_64", "spcfw_water_64_300K.npz")
    d = np.load(path)
    z = np.asarray(d["z"], np.int32)
    box = np.diag(np.asarray(d["cell"], np.float64))
    frames = np.asarray(d["R"][::500][:6], np.float64)  # 6 frames, 0.5 ps apart
    F, R = 3, 2
    neighbourhoods = np.arange(len(z)).reshape(-1, 3)  # stored O, H, H
    alpha, B, n_bins, per_bin = 3e-3, 4, 16, 4  # 56 samples: 14 full batches
    kT = units.kT(300.0)
    # reference O–H lengths: other frames of the same data
    ref_x = np.asarray(d["R"][5000:5010], np.float64)
    oh_ref = np.concatenate([numpy_oh_lengths(x, neighbourhoods, box) for x in ref_x]).mean(0)
    r_eq = float(oh_ref.mean())
    with jax.enable_x64(True):
        disp = md.periodic_space(box).displacement_fn
        potential, params = _schnet_setup(z, frames[0], 3.0, disp, 2)
        params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
        positions = jnp.asarray(frames.reshape(F, R, len(z), 3))
        traj = Trajectory(
            positions,
            jnp.zeros_like(positions),
            jnp.zeros((F, R), jnp.int32),
            jnp.ones((F, R), bool),
            None,
        )
        loss = local_observable_loss(
            potential.per_atom_energy_fn,
            neighbourhoods,
            jnp.asarray(oh_ref),
            kT,
            bond_equilibrium=r_eq,
            displacement_fn=disp,
            batch_size=B,
            n_bins=n_bins,
            per_bin=per_bin,
            reduction="sum",
            vjp="per_batch",
        )
        hp = hyperparameters.exact_hyperparameters("authors", alpha, 0.0, 1.0, kT, B)
        key = jax.random.key(11)
        out, delta_ours = one_authors_step(loss, None, hp, params, traj, key)
        assert out.applied

        # ---- the authors' side: the same selection and order, their formulas ----
        k_obs, _ = jax.random.split(key)
        k_select, k_order = jax.random.split(k_obs)
        flat_frames = np.asarray(positions).reshape(F * R, len(z), 3)
        deviation = np.stack(
            [
                np.abs(numpy_oh_lengths(x, neighbourhoods, box) - r_eq).max(axis=1)
                for x in flat_frames
            ]
        )
        np.testing.assert_allclose(
            deviation,
            np.asarray(
                neighbourhood_max_deviation(
                    jnp.asarray(flat_frames), jnp.asarray(neighbourhoods), r_eq, disp
                )
            ),
            rtol=1e-10,
        )
        chosen = select_neighbourhoods(
            k_select, jnp.asarray(deviation), n_bins=n_bins, per_bin=per_bin
        )
        order = np.asarray(sample_order(k_order, chosen.mask))
        keep = np.asarray(chosen.mask)[order]
        order = order[keep]
        assert len(order) % B == 0 and len(order) >= 8 * B, len(order)
        fi = np.asarray(chosen.frame_index)[order]
        atoms = neighbourhoods[np.asarray(chosen.neighbourhood_index)[order]]
        g = np.stack(
            [
                numpy_oh_lengths(flat_frames[f], a[None], box)[0]
                for f, a in zip(fi, atoms, strict=True)
            ]
        )

        def local_energy(p, x, a):
            return jnp.sum(potential.per_atom_energy_fn(p, x)[a])

        per_sample = jax.jit(jax.grad(local_energy))
        dU = np.stack(
            [
                flat(per_sample(params, jnp.asarray(flat_frames[f]), jnp.asarray(a)))
                for f, a in zip(fi, atoms, strict=True)
            ]
        )
        grad_obs = authors_observable_gradient(g, dU, oh_ref, B)
        delta_authors, obs, _, total = authors_step(grad_obs, [], 0.0, 1.0, alpha)

    rel = np.linalg.norm(delta_ours - delta_authors) / np.linalg.norm(delta_authors)
    assert rel < 1e-6, rel
    np.testing.assert_allclose(out.metrics["obs_grad_norm"], np.linalg.norm(obs), rtol=1e-6)
    np.testing.assert_allclose(out.metrics["update_norm"], np.linalg.norm(delta_authors), rtol=1e-6)
    print(
        f"water: {len(order)} samples, |obs| {np.linalg.norm(obs):.4g}, clipped: "
        f"{np.linalg.norm(total) > 1.0}"
    )


# ---------------------------------------------------------------------------------------------
# The observable share of the update on a case with a closed form.


def test_observable_share_on_harmonic_oscillator_matches_closed_form():
    """U = ½k x², g = x², L_QM = ½q(k − k0)² + ½p(b − b0)² (b not in U).

    On stratified Gaussian samples of the k ensemble, ⟨x²⟩ = kT/k and ∂⟨x²⟩/∂k = −kT/k² (to the
    sample's discretisation: its truncated tails shift the fourth moment by ~0.2 %, hence the
    0.5 % tolerance; a missing 1/kT or a mis-scaled term is off by factors), so ∇L_obs = (a, 0)
    with a = 2(kT/k − g_ref)(−kT/k²) and ∇(λL_QM) = (λq(k − k0), λp(b − b0)): the share
    ⟨g_obs, g⟩/‖g‖² and the cosine are known.
    """
    kT, k, k0, b, b0, q, p, lam = 0.05, 2.0, 1.5, 0.3, 0.1, 1e-4, 5e-4, 1.0
    g_ref = 0.8 * kT / k
    n = 20_000
    with jax.enable_x64(True):
        u = (jnp.arange(n) + 0.5) / n
        x = jnp.sqrt(kT / k) * jax.scipy.special.ndtri(u)
        traj = Trajectory(
            x[:, None, None, None] * jnp.ones((1, 1, 1, 3)) * jnp.asarray([1.0, 0, 0]),
            jnp.zeros((n, 1, 1, 3)),
            jnp.zeros((n, 1), jnp.int32),
            jnp.ones((n, 1), bool),
            None,
        )
        energy = lambda prm, r: 0.5 * prm["k"] * r[0, 0] ** 2
        obs = lambda r: jnp.stack([r[0, 0] ** 2])
        loss = global_observable_loss(energy, obs, jnp.asarray([g_ref]), kT)
        qm = lambda prm, key: 0.5 * q * (prm["k"] - k0) ** 2 + 0.5 * p * (prm["b"] - b0) ** 2
        settings = StabieSettings(1, 1, 1e-3, lam, grad_clip_norm=None)
        step = make_learning_step(StabieProblem(None, None, loss, qm), settings)
        params = {"k": jnp.asarray(k), "b": jnp.asarray(b)}
        out = step(params, make_optimizer(settings).init(params), traj, jax.random.key(0), 1e-3)
    a = 2.0 * (kT / k - g_ref) * (-kT / k**2)
    g_obs = np.array([a, 0.0])
    g_qm = lam * np.array([q * (k - k0), p * (b - b0)])
    g = g_obs + g_qm
    share = g_obs @ g / (g @ g)
    cosine = g_obs @ g_qm / np.linalg.norm(g_obs) / np.linalg.norm(g_qm)
    assert 0.2 < share < 0.8  # both terms matter in this case
    np.testing.assert_allclose(out.metrics["obs_share"], share, rtol=5e-3)
    np.testing.assert_allclose(out.metrics["grad_cosine"], cosine, rtol=5e-3)
    np.testing.assert_allclose(out.metrics["obs_grad_norm"], abs(a), rtol=5e-3)
    np.testing.assert_allclose(out.metrics["qm_grad_norm"], np.linalg.norm(g_qm), rtol=1e-12)
    np.testing.assert_allclose(out.metrics["update_norm"], 1e-3 * np.linalg.norm(g), rtol=5e-3)
