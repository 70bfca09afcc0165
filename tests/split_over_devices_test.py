"""The learning step's sample work split over devices gives the same numbers as one device.

The estimator's backward pass (``∇_θ Σ c_i U_θ(x_i)``, also in its localized form) and the
training-set QM loss can run in chunks and over a device mesh (``mesh=``); both are sums over
samples or frames, so the split changes only the summation order. Each check runs in a
subprocess with 3 fake CPU devices (3 does not divide the sample counts, so the padding is
exercised) and compares against the same function without a mesh or chunks, in float64.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    assert jax.device_count() == 3, jax.devices()
    from stabie_jax import estimator, losses
    from stabie_jax.models.potential import Potential
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("replica",))

    def energy(p, x):  # pair potential, params k and r0; x [4, 3]
        d = x[:, None] - x[None]
        r = jnp.sqrt(jnp.sum(d**2, -1) + jnp.eye(4))
        return 0.25 * jnp.sum(p["k"] * (r - p["r0"]) ** 2 * (1 - jnp.eye(4)))

    def observable(x):
        d = x[:, None] - x[None]
        return jnp.sqrt(jnp.sum(d**2, -1) + jnp.eye(4)).reshape(-1)[:5]

    params = {"k": jnp.asarray(2.0), "r0": jnp.asarray(1.1)}
    x = jnp.asarray(np.random.default_rng(0).normal(size=(47, 4, 3)))
    mask = jnp.arange(47) % 7 != 3
    ref = jnp.linspace(0.5, 1.5, 5)

    def grad_of(build, **kw):
        f = build(energy, observable, 0.7, batch_size=10, **kw)
        def loss(p):
            out = f(p, x, mask)
            means = out[0] if isinstance(out, tuple) else out
            return jnp.sum((means - ref) ** 2)
        return jax.value_and_grad(loss)(params)

    for build in (estimator.boltzmann_expectation, estimator.boltzmann_batch_means):
        value, plain = grad_of(build)
        for kw in (dict(mesh=mesh), dict(mesh=mesh, chunk_size=4), dict(chunk_size=6)):
            v2, split = grad_of(build, **kw)
            assert abs(float(v2) - float(value)) <= 1e-12 * abs(float(value)), (kw, v2, value)
            for name in plain:
                a, b = float(plain[name]), float(split[name])
                assert abs(a) > 1e-3, (name, a)
                assert abs(a - b) <= 1e-10 * abs(a), (build.__name__, kw, name, a, b)

    force = lambda p, r, nbr=None: -jax.grad(energy, argnums=1)(p, r)
    pot = Potential(lambda p, r, nbr=None: energy(p, r), None, force)
    rng = np.random.default_rng(1)
    frames = losses.LabelledFrames(
        jnp.asarray(rng.normal(size=(23, 4, 3))),
        jnp.asarray(rng.normal(size=23)),
        jnp.asarray(rng.normal(size=(23, 4, 3))),
    )
    key = jax.random.PRNGKey(5)
    for per_step in (0, 3):
        kw = dict(batch_size=5, batches_per_step=per_step, energy_weight=0.3, force_weight=0.7)
        plain = losses.make_training_set_qm_loss(pot, frames, **kw)
        value, grads = jax.value_and_grad(plain)(params, key)
        for extra in (dict(mesh=mesh), dict(mesh=mesh, chunk_size=2), dict(chunk_size=3)):
            split = losses.make_training_set_qm_loss(pot, frames, **kw, **extra)
            v2, g2 = jax.jit(jax.value_and_grad(split))(params, key)
            assert abs(float(v2) - float(value)) <= 1e-12 * abs(float(value)), (extra, v2, value)
            for name in grads:
                a, b = float(grads[name]), float(g2[name])
                assert abs(a) > 1e-3 and abs(a - b) <= 1e-10 * abs(a), (per_step, extra, name)

    # the localized estimator (water's): each frame's per-atom energies once, split by frame
    from stabie_jax import localized_estimator as le

    def per_atom(p, x):
        d = x[:, None] - x[None]
        r = jnp.sqrt(jnp.sum(d**2, -1) + jnp.eye(4))
        return 0.5 * jnp.sum(p["k"] * (r - p["r0"]) ** 2 * (1 - jnp.eye(4)), axis=1)

    def bond(sample):
        x, a = sample.positions, sample.atoms
        return jnp.linalg.norm(x[a[1]] - x[a[0]])[None]

    frames = jnp.asarray(np.random.default_rng(2).normal(size=(13, 4, 3)))
    pairs = np.array([[0, 1], [2, 3], [1, 2]])
    frame_index = jnp.asarray(np.repeat(np.arange(13), 3))
    atoms = jnp.asarray(np.tile(pairs, (13, 1)))
    lmask = jnp.arange(39) % 5 != 2
    for build in (le.localized_expectation, le.localized_batch_means):
        def lgrad(**kw):
            f = build(per_atom, bond, 0.7, batch_size=6, **kw)
            def loss(p):
                out = f(p, frames, frame_index, atoms, lmask)
                means = out[0] if isinstance(out, tuple) else out
                return jnp.sum((means - 1.2) ** 2)
            return jax.value_and_grad(loss)(params)
        value, plain = lgrad()
        for kw in (dict(mesh=mesh), dict(mesh=mesh, chunk_size=2)):
            v2, split = lgrad(**kw)
            assert abs(float(v2) - float(value)) <= 1e-12 * abs(float(value)), (kw, v2, value)
            for name in plain:
                a, b = float(plain[name]), float(split[name])
                ok = abs(a) > 1e-3 and abs(a - b) <= 1e-10 * abs(a)
                assert ok, (build.__name__, kw, name, a, b)
    print("OK")
    """
)


def test_estimator_and_qm_loss_split_over_three_devices_match_one():
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=3",
    }
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("OK")
