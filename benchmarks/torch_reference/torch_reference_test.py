"""The PyTorch benchmark baseline (this folder) computes what stabie_jax computes.

* the batched Nosé–Hoover-chain step equals JAX-MD's ``nvt_nose_hoover`` step for step;
* the compact PyTorch SchNet, loaded from stabie_jax parameters, gives the JAX SchNet's energies
  and forces (float64, 1e-5 relative), and equals torch_geometric's SchNet on the same weights.

Skipped (with the reason) where torch is not installed: CI installs only the ``test`` extra.
"""

from __future__ import annotations

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch baseline needs the 'torch' extra")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.torch_reference import nose_hoover_torch  # noqa: E402


def _springs(n_atoms: int, seed: int):
    """A nonlinear test potential: harmonic springs between all pairs with random rest lengths."""
    rng = np.random.default_rng(seed)
    k = rng.uniform(0.5, 2.0, size=(n_atoms, n_atoms))
    r0 = rng.uniform(1.0, 2.0, size=(n_atoms, n_atoms))
    k, r0 = np.triu(k, 1), np.triu(r0, 1)
    return k, r0


def _spring_energy_jax(k, r0, positions):
    diff = positions[:, None, :] - positions[None, :, :]
    n = positions.shape[0]
    d = jnp.sqrt(jnp.sum(diff**2, -1) + jnp.eye(n))
    return jnp.sum(k * (d - r0) ** 2)


def _spring_forces_torch(k, r0, positions):
    with torch.enable_grad():
        x = positions.detach().requires_grad_(True)
        diff = x[:, :, None, :] - x[:, None, :, :]
        n = x.shape[1]
        eye = torch.eye(n, dtype=x.dtype)
        d = torch.sqrt((diff**2).sum(-1) + eye)
        energy = (torch.as_tensor(k) * (d - torch.as_tensor(r0)) ** 2).sum()
        (grad,) = torch.autograd.grad(energy, x)
    return -grad


@pytest.mark.parametrize("chain_length,chain_steps,sy_steps", [(2, 1, 1), (5, 2, 1), (5, 2, 3)])
def test_nose_hoover_matches_jax_md(chain_length, chain_steps, sy_steps, monkeypatch):
    from jax_md import simulate, space

    n_rep, n_atoms, n_steps = 3, 5, 25
    # dt, tau and kT exactly representable in float32: JAX-MD rounds them to float32.
    dt, kT, tau = 2.0**-5, 0.0625, 2.0**-5 * 16
    k, r0 = _springs(n_atoms, seed=0)
    rng = np.random.default_rng(1)
    positions = rng.normal(scale=1.0, size=(n_rep, n_atoms, 3))
    masses = rng.uniform(1.0, 16.0, size=n_atoms)
    momenta = rng.normal(size=(n_rep, n_atoms, 3)) * np.sqrt(masses * 4 * kT)[None, :, None]

    with jax.enable_x64(True):
        _, shift_fn = space.free()
        energy_fn = lambda r: _spring_energy_jax(jnp.asarray(k), jnp.asarray(r0), r)
        init_fn, apply_fn = simulate.nvt_nose_hoover(
            energy_fn,
            shift_fn,
            dt,
            kT,
            chain_length=chain_length,
            chain_steps=chain_steps,
            sy_steps=sy_steps,
            tau=tau,
        )
        state = jax.vmap(lambda r, p: init_fn(jax.random.key(0), r, jnp.asarray(masses), p))(
            jnp.asarray(positions), jnp.asarray(momenta)
        )
        apply_fn = jax.jit(jax.vmap(apply_fn))
        for _ in range(n_steps):
            state = apply_fn(state)
        ref_positions = np.asarray(state.position)
        ref_momenta = np.asarray(state.momentum)
        ref_chain = np.asarray(state.chain.momentum)

    # JAX-MD rounds each Suzuki-Yoshida sub-step length to float32 (even under x64); give the
    # torch step the same rounded lengths (delta is a power of two, so the division is exact).
    delta = dt / chain_steps
    exact_weights = nose_hoover_torch.suzuki_yoshida_weights(sy_steps)
    rounded = [float(np.float32(delta * w)) / delta for w in exact_weights]
    monkeypatch.setattr(nose_hoover_torch, "suzuki_yoshida_weights", lambda n: rounded)

    force_fn = lambda r: _spring_forces_torch(k, r0, r)
    t_state = nose_hoover_torch.init_state(
        torch.as_tensor(positions),
        torch.as_tensor(momenta),
        torch.as_tensor(masses),
        force_fn,
        chain_length=chain_length,
    )
    step = nose_hoover_torch.make_nose_hoover_step(
        force_fn,
        dt,
        kT,
        tau=tau,
        chain_length=chain_length,
        chain_steps=chain_steps,
        sy_steps=sy_steps,
    )
    for _ in range(n_steps):
        t_state = step(t_state)

    moved = np.abs(ref_positions - positions).max()
    assert moved > 0.1  # the trajectory went somewhere
    np.testing.assert_allclose(t_state.positions.numpy(), ref_positions, rtol=0, atol=1e-10)
    np.testing.assert_allclose(t_state.momenta.numpy(), ref_momenta, rtol=0, atol=1e-9)
    np.testing.assert_allclose(t_state.chain_momenta.numpy(), ref_chain, rtol=0, atol=1e-9)


def test_nose_hoover_thermostat_changes_kinetic_energy_towards_target():
    """Hot replicas cool and cold ones heat up under the thermostat (free particles)."""
    n_atoms, kT, dt = 8, 0.05, 0.05
    masses = torch.ones(n_atoms, dtype=torch.float64)
    scale = torch.tensor([0.1, 3.0], dtype=torch.float64)[:, None, None]
    momenta = torch.randn(
        2, n_atoms, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    momenta = momenta * scale * np.sqrt(kT)
    zero_force = lambda r: torch.zeros_like(r)
    state = nose_hoover_torch.init_state(torch.zeros_like(momenta), momenta, masses, zero_force)
    step = nose_hoover_torch.make_nose_hoover_step(zero_force, dt, kT, tau=10 * dt)
    target = 1.5 * n_atoms * kT
    ke0 = state.kinetic_energy.clone()
    for _ in range(60):
        state = step(state)
    assert ke0[0] < target and state.kinetic_energy[0] > 2 * ke0[0]
    assert ke0[1] > target and state.kinetic_energy[1] < 0.5 * ke0[1]


def _aspirin_like_geometries(n_rep: int, n_atoms: int, seed: int) -> np.ndarray:
    """Random compact clusters (all pair distances > 0.9 Å, some beyond the 5 Å cutoff)."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n_rep:
        r = rng.uniform(0.0, 5.5, size=(n_atoms, 3))
        d = np.linalg.norm(r[:, None] - r[None], axis=-1) + 10 * np.eye(n_atoms)
        if d.min() > 0.9:
            out.append(r)
    return np.stack(out)


def _perturbed_params(module, z, scale: float, seed: int):
    """The module's initial parameters plus ``scale``-sized Gaussian noise (a non-trivial model)."""
    from stabie_jax.models.registry import init_params

    params = init_params(module, z, jax.random.key(0))
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [a + scale * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def test_torch_schnet_matches_jax_schnet_in_float64():
    from jax_md import space

    from benchmarks.torch_reference.schnet_torch import TorchSchNet
    from stabie_jax.interop.torch_schnet import SchNetConfig
    from stabie_jax.models.potential import make_potential
    from stabie_jax.models.registry import build_model

    z = (6, 6, 6, 6, 6, 6, 6, 8, 8, 8, 6, 6, 8, 1, 1, 1, 1, 1, 1, 1, 1)  # aspirin
    config = SchNetConfig(num_interactions=3, energy_scale=0.8, energy_shift=-17637.8)
    module = build_model(
        "schnet",
        num_interactions=3,
        energy_scale=0.8,
        energy_shift=-17637.8 / len(z),
    )
    params = _perturbed_params(module, z, scale=0.2, seed=1)
    positions = _aspirin_like_geometries(4, len(z), seed=2)

    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
        pot = make_potential(module, z, space.free()[0])
        fn = jax.jit(jax.vmap(lambda r: (pot.energy_fn(p64, r), pot.force_fn(p64, r))))
        e_jax, f_jax = (np.asarray(a) for a in fn(jnp.asarray(positions)))

    model = TorchSchNet.from_stabie_params(params, config, dtype=torch.float64)
    e_t, f_t = model.energy_and_forces(torch.as_tensor(z), torch.as_tensor(positions))
    e_t, f_t = e_t.detach().numpy(), f_t.numpy()

    assert np.ptp(e_jax) > 1e-3 and np.abs(f_jax).max() > 1e-2  # non-trivial model
    np.testing.assert_allclose(e_t, e_jax, rtol=1e-5)
    np.testing.assert_allclose(e_t - (-17637.8), e_jax - (-17637.8), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(f_t, f_jax, rtol=1e-5, atol=1e-5 * np.abs(f_jax).max())
    # Batched and single-structure calls agree.
    e_single, f_single = model.energy_and_forces(torch.as_tensor(z), torch.as_tensor(positions[1]))
    np.testing.assert_allclose(e_single.item(), e_t[1], rtol=0, atol=1e-9)
    np.testing.assert_allclose(f_single.numpy(), f_t[1], rtol=0, atol=1e-9)

    tg = pytest.importorskip("torch_geometric", reason="cross-check against torch_geometric")
    del tg
    from stabie_jax.interop.torch_schnet import (
        TorchCheckpoint,
        params_to_state_dict,
        torch_geometric_reference,
    )

    sd = {k: v.astype(np.float64) for k, v in params_to_state_dict(params, config).items()}
    reference = torch_geometric_reference(TorchCheckpoint(sd, config, None, {}, "<memory>"))
    for k in range(len(positions)):
        e_ref, f_ref = reference(z, positions[k])
        assert e_ref == pytest.approx(e_t[k], abs=1e-8)
        np.testing.assert_allclose(f_ref, f_t[k], rtol=0, atol=1e-9)


def test_torch_geometric_side_matches_stabie_jax_energies_forces_and_mdsim_steps():
    """The compare.py ``torch_geometric`` side: torch_geometric's SchNet on the stabie_jax
    weights, batched over replicas, gives stabie_jax's energies and forces (float64, 1e-5
    relative), and its MDsim Nosé–Hoover steps follow ``md.authors_nose_hoover`` step for step."""
    pytest.importorskip("torch_geometric", reason="the torch_geometric side needs torch_geometric")
    from jax_md import space

    from benchmarks.torch_reference import mdsim_torch
    from stabie_jax import md, units
    from stabie_jax.interop.torch_schnet import SchNetConfig
    from stabie_jax.models.potential import make_potential
    from stabie_jax.models.registry import build_model

    z = (6, 6, 6, 6, 6, 6, 6, 8, 8, 8, 6, 6, 8, 1, 1, 1, 1, 1, 1, 1, 1)  # aspirin
    config = SchNetConfig(num_interactions=3, energy_scale=0.8, energy_shift=-17637.8)
    module = build_model(
        "schnet", num_interactions=3, energy_scale=0.8, energy_shift=-17637.8 / len(z)
    )
    # a milder perturbation than above: forces of a few eV/Å keep 5 MD steps well-conditioned
    params = _perturbed_params(module, z, scale=0.05, seed=3)
    positions = _aspirin_like_geometries(3, len(z), seed=4)
    masses = np.asarray(md.masses_from_atomic_numbers(z), np.float64)
    dt, kT = units.fs_to_internal(0.5), units.kT(500.0)
    momenta = np.random.default_rng(5).normal(size=positions.shape) * np.sqrt(
        masses[None, :, None] * kT
    )
    n_steps = 5

    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
        pot = make_potential(module, z, space.free()[0])
        fn = jax.jit(jax.vmap(lambda r: (pot.energy_fn(p64, r), pot.force_fn(p64, r))))
        e_jax, f_jax = (np.asarray(a) for a in fn(jnp.asarray(positions)))
        init, apply = md.authors_nose_hoover(
            lambda r: pot.force_fn(p64, r), space.free()[1], dt, kT, ttime_steps=20
        )

        def run(r, p):
            state = init(None, r, mass=jnp.asarray(masses), momenta=p)
            for _ in range(n_steps):
                state = apply(state)
            return state.position, state.momentum / state.mass, state.zeta

        end = [run(jnp.asarray(r), jnp.asarray(p)) for r, p in zip(positions, momenta, strict=True)]
        x_jax = np.stack([np.asarray(s[0]) for s in end])
        v_jax = np.stack([np.asarray(s[1]) for s in end])
        zeta_jax = np.asarray([float(s[2]) for s in end])

    model = mdsim_torch.schnet_from_params(params, config, len(z), dtype=torch.float64)
    energy_force = mdsim_torch.make_energy_force(model, z, config)
    e_t, f_t = (a.numpy() for a in energy_force(torch.as_tensor(positions)))
    assert np.ptp(e_jax) > 1e-3 and np.abs(f_jax).max() > 1e-2  # non-trivial model
    np.testing.assert_allclose(e_t - (-17637.8), e_jax - (-17637.8), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(f_t, f_jax, rtol=1e-5, atol=1e-5 * np.abs(f_jax).max())

    init_t, step_t = mdsim_torch.make_mdsim_nose_hoover(energy_force, masses, dt, kT, 20)
    state = init_t(torch.as_tensor(positions), torch.as_tensor(momenta))
    for _ in range(n_steps):
        state = step_t(state)
    moved = np.abs(x_jax - positions).max()
    assert moved > 1e-3 and np.abs(zeta_jax).max() > 0  # the steps did something
    np.testing.assert_allclose(state.positions.numpy(), x_jax, rtol=0, atol=1e-9 * moved + 1e-12)
    np.testing.assert_allclose(
        state.velocities.numpy(), v_jax, rtol=0, atol=1e-8 * np.abs(v_jax).max()
    )
    np.testing.assert_allclose(state.zeta.numpy(), zeta_jax, rtol=1e-8, atol=1e-14)
