"""The authors' Nosé–Hoover integrator, JAX-MD Langevin and the integrator choice of
make_simulator (stabie_jax.md.integrators, stabie_jax.md.replicas)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_md import space as jspace

from stabie_jax import units
from stabie_jax.md import (
    authors_kinetic_energy_period,
    authors_nose_hoover,
    authors_nose_hoover_invariant,
    authors_thermostat_constants,
    chain_tau_from_ttime,
    free_space,
    kinetic_energy,
    make_simulator,
    masses_from_atomic_numbers,
    maxwell_boltzmann_momenta,
    tau_from_ttime,
    thermostat_kinetic_energy_period,
)

DT = units.fs_to_internal(0.5)
KT = units.kT(300.0)

# ----------------------------------------------------------------------------------------------
# A 5-atom system: harmonic tether to the origin plus Lennard-Jones between all pairs.
N5 = 5
K_TETHER = 2.0  # eV/Å²
LJ_EPS, LJ_SIG = 0.01, 2.0
PAIRS = np.array(np.triu_indices(N5, k=1)).T


def lj_tether_energy(positions, **unused):
    e = 0.5 * K_TETHER * jnp.sum(positions**2)
    d = positions[PAIRS[:, 0]] - positions[PAIRS[:, 1]]
    s6 = (LJ_SIG**2 / jnp.sum(d**2, -1)) ** 3
    return e + jnp.sum(4 * LJ_EPS * (s6**2 - s6))


def lj_tether_forces_numpy(r):
    f = -K_TETHER * r
    for i, j in PAIRS:
        d = r[i] - r[j]
        r2 = d @ d
        s6 = (LJ_SIG**2 / r2) ** 3
        fij = 24 * LJ_EPS * (2 * s6**2 - s6) / r2 * d  # -dE/dr_i
        f[i] += fij
        f[j] -= fij
    return f


def authors_numpy(r, v, m, forces_fn, dt, kT, n_steps, ttime=20, dof=None):
    """The authors' update written out from MDsim mdsim/md/integrator.py (NoseHoover)."""
    m = m[:, None]
    dof = 3 * r.shape[0] if dof is None else dof
    k0 = 0.5 * dof * kT
    q = dof * kT * (ttime * dt) ** 2
    zeta = 0.0
    f = forces_fn(r)
    out_r, out_v, out_z = [], [], []
    for _ in range(n_steps):
        a = f / m
        r = r + v * dt + (a - zeta * v) * 0.5 * dt**2
        ke0 = 0.5 * np.sum(m * v**2)
        v = v + 0.5 * dt * (a - zeta * v)
        f = forces_fn(r)
        a = f / m
        zeta = zeta + 0.5 * dt * (ke0 - k0) / q
        ke = 0.5 * np.sum(m * v**2)
        zeta = zeta + 0.5 * dt * (ke - k0) / q
        v = (v + 0.5 * dt * a) / (1 + 0.5 * dt * zeta)
        out_r.append(r)
        out_v.append(v)
        out_z.append(zeta)
    return np.array(out_r), np.array(out_v), np.array(out_z)


def five_atoms(seed=0):
    rng = np.random.default_rng(seed)
    base = np.array([[0, 0, 0], [2.2, 0, 0], [0, 2.2, 0], [0, 0, 2.2], [-2.2, 0, 0]], float)
    r = base + 0.05 * rng.normal(size=(N5, 3))
    m = masses_from_atomic_numbers([6, 6, 8, 1, 7])
    v = np.sqrt(KT / m)[:, None] * rng.normal(size=(N5, 3)) * 1.5  # hot start: ζ does work
    return r, v, m


def _scan(apply_fn, state, n_steps):
    def body(s, _):
        s = apply_fn(s)
        return s, (s.position, s.momentum / s.mass, s.zeta)

    return jax.jit(lambda s: jax.lax.scan(body, s, None, length=n_steps))(state)


def test_authors_nose_hoover_matches_independent_numpy_implementation():
    r, v, m = five_atoms()
    ref_r, ref_v, ref_z = authors_numpy(r, v, m, lj_tether_forces_numpy, DT, KT, 200)
    assert np.max(np.abs(ref_z)) * DT > 1e-3  # the thermostat acts
    with jax.enable_x64(True):
        _, shift = jspace.free()
        init, apply = authors_nose_hoover(lj_tether_energy, shift, DT, KT)
        state = init(None, jnp.asarray(r), mass=jnp.asarray(m), momenta=jnp.asarray(m[:, None] * v))
        _, (pos, vel, zeta) = _scan(apply, state, 200)
        np.testing.assert_allclose(np.asarray(pos), ref_r, rtol=1e-10, atol=1e-11)
        np.testing.assert_allclose(np.asarray(vel), ref_v, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np.asarray(zeta), ref_z, rtol=1e-10, atol=1e-14)

        # The same through make_simulator (3N dof, as the authors), float64.
        sim = make_simulator(
            lambda p, x, nb=None: lj_tether_energy(x),
            m,
            dt=DT,
            kT=KT,
            space=free_space(),
            integrator="authors_nose_hoover",
            remove_com_dof=False,
            dtype=jnp.float64,
        )
        assert sim.integrator == "authors_nose_hoover" and sim.dof == 15
        s0 = sim.init({}, None, jnp.asarray(r)[None], momenta=jnp.asarray(m[:, None] * v)[None])
        _, traj = sim.simulate({}, s0, 200, 1)
        np.testing.assert_allclose(np.asarray(traj.positions[:, 0]), ref_r, rtol=1e-10, atol=1e-11)


# ----------------------------------------------------------------------------------------------
# Ideal gas: kinetic-energy oscillation period


def _ke_period(sim, n_atoms, masses, n_steps):
    p = maxwell_boltzmann_momenta(
        jax.random.PRNGKey(3), masses, KT, (1,), dof=sim.dof, rescale=True
    ) * np.sqrt(1.05)
    state = sim.init({}, None, jnp.zeros((1, n_atoms, 3)), momenta=p)
    _, traj = sim.simulate({}, state, n_steps, 1)
    ke = kinetic_energy(traj.velocities[:, 0] * masses[:, None], jnp.asarray(masses, jnp.float32))
    x = np.asarray(ke) / (0.5 * sim.dof * KT) - 1.0
    t = np.arange(1, n_steps + 1) * DT
    crossings = t[1:][np.sign(x[1:]) != np.sign(x[:-1])]
    assert len(crossings) >= 5, len(crossings)
    return 2 * np.mean(np.diff(crossings[:5]))


def test_ideal_gas_period_authors_equals_chain_with_sqrt2_tau():
    n = 2000
    masses = np.full(n, 12.0)

    def zero_energy(params, positions, neighbor=None):
        return 0.0 * jnp.sum(positions)

    kw = dict(dt=DT, kT=KT, space=free_space())
    authors = make_simulator(zero_energy, masses, integrator="authors_nose_hoover", **kw)
    chain_sqrt2 = make_simulator(
        zero_energy, masses, tau=chain_tau_from_ttime(20, DT), chain_length=2, **kw
    )
    chain_old = make_simulator(
        zero_energy, masses, tau=tau_from_ttime(20, DT), chain_length=2, **kw
    )
    p_authors = _ke_period(authors, n, masses, 400)
    p_sqrt2 = _ke_period(chain_sqrt2, n, masses, 400)
    p_old = _ke_period(chain_old, n, masses, 400)
    print(
        "periods / (ttime dt):",
        p_authors / (20 * DT),
        p_sqrt2 / (20 * DT),
        p_old / (20 * DT),
    )
    # Linear theory: 2π·ttime·dt for the authors and for the chain at tau = √2·ttime·dt.
    assert p_authors == pytest.approx(authors_kinetic_energy_period(20, DT), rel=0.06)
    assert p_sqrt2 == pytest.approx(thermostat_kinetic_energy_period(chain_sqrt2.tau), rel=0.06)
    assert p_authors == pytest.approx(p_sqrt2, rel=0.05)
    assert abs(p_old / p_authors - 1) > 0.2


# ----------------------------------------------------------------------------------------------
# Conserved quantity


def _harmonic_drift(dt, n_steps, seed=0):
    """Max |H(t) − H(0)| / K0 of the authors' integrator on 5 anisotropic harmonic atoms, and
    the same for U + K alone."""
    rng = np.random.default_rng(seed)
    k = jnp.asarray(rng.uniform(1.0, 10.0, size=(N5, 3)))
    m = jnp.full(N5, 12.0)
    r0 = jnp.asarray(np.sqrt(KT / np.asarray(k)) * rng.normal(size=(N5, 3)))
    p0 = jnp.asarray(np.sqrt(12.0 * KT) * rng.normal(size=(N5, 3)))

    def energy(x, **unused):
        return 0.5 * jnp.sum(k * x**2)

    _, shift = jspace.free()
    init, apply = authors_nose_hoover(energy, shift, dt, KT, ttime_steps=20 * DT / dt)
    q, k0 = authors_thermostat_constants(3 * N5, KT, 20 * DT / dt, dt)

    def extended(s):
        ke = 0.5 * jnp.sum(s.momentum**2 / s.mass)
        return authors_nose_hoover_invariant(energy(s.position), ke, s.zeta, s.xi, q, k0), (
            energy(s.position) + ke
        )

    def body(s, _):
        s = apply(s)
        return s, extended(s)

    s0 = init(None, r0, mass=m, momenta=p0)
    h0, e0 = extended(s0)
    _, (h, e) = jax.jit(lambda s: jax.lax.scan(body, s, None, length=n_steps))(s0)
    return float(jnp.max(jnp.abs(h - h0)) / k0), float(jnp.max(jnp.abs(e - e0)) / k0)


def test_authors_invariant_is_conserved_up_to_first_order_in_dt():
    """H = U + K + Qζ² + 2K0ξ is conserved by the authors' equations of motion; their scheme
    updates ζ with the kinetic energy of the old and the half-kicked velocities, which is first
    order in dt, so over a fixed time the drift of H halves when dt halves (a wrong H would not
    converge to zero). Over 2000 steps of 0.5 fs the drift is ~15 % of K0."""
    with jax.enable_x64(True):
        d1, e1 = _harmonic_drift(DT, 2000)
        d2, _ = _harmonic_drift(DT / 2, 4000)
        d4, _ = _harmonic_drift(DT / 4, 8000)
    print("drift/K0 at dt, dt/2, dt/4:", d1, d2, d4, "U+K:", e1)
    assert d1 < 0.3
    assert 1.7 < d1 / d2 < 2.3 and 1.7 < d2 / d4 < 2.3
    assert e1 > 10 * d4  # the thermostat exchanges far more energy than H drifts


# ----------------------------------------------------------------------------------------------
# make_simulator with each integrator


def _exploding_energy(params, positions, neighbor=None):
    """Dimer bound at 1 Å, pulled apart beyond 1.4 Å, NaN force beyond 2 Å."""
    d = jnp.linalg.norm(positions[1] - positions[0])
    return 2.5 * (d - 1.0) ** 2 - 8.0 * jax.nn.relu(d - 1.4) + 0.01 * jnp.sqrt(2.0 - d)


@pytest.mark.parametrize("integrator", ["nose_hoover_chain", "authors_nose_hoover", "langevin"])
def test_each_integrator_freezes_nonfinite_and_rewinds(integrator):
    masses = masses_from_atomic_numbers([6, 6])
    sim = make_simulator(
        _exploding_energy,
        masses,
        dt=DT,
        kT=KT,
        space=free_space(),
        history_every=10,
        history_length=3,
        integrator=integrator,
    )
    assert sim.integrator == integrator
    pos = jnp.array([[[0.0, 0, 0], [d, 0.1, 0]] for d in (1.0, 1.5, 1.02)])
    mom = jnp.zeros((3, 2, 3)).at[:, 1, 1].set(jnp.array([0.3, 0.0, -0.3]))
    mom = mom.at[:, 0, 1].set(-mom[:, 1, 1])
    state = sim.init({}, jax.random.PRNGKey(0), pos, momenta=mom)
    out, traj = sim.simulate({}, state, 200, 10)
    assert np.asarray(out.nonfinite).tolist() == [False, True, False]
    assert np.asarray(out.alive).tolist() == [True, False, True]
    assert np.all(np.isfinite(np.asarray(traj.positions)))
    assert 5 < int(out.step[1]) < 100
    assert np.all(np.isfinite(np.asarray(sim.invariant({}, out))))

    # Rewind one save back restores the saved positions exactly and revives the replica.
    s10, _ = sim.simulate({}, state, 10)
    s20, _ = sim.simulate({}, s10, 10)
    back, ok = sim.rewind(s20, jnp.array([True, False, True]), 1)
    assert np.asarray(ok).tolist() == [True, False, True]
    np.testing.assert_array_equal(np.asarray(back.positions[0]), np.asarray(s10.positions[0]))
    np.testing.assert_array_equal(np.asarray(back.positions[1]), np.asarray(s20.positions[1]))
    assert np.asarray(back.step).tolist() == [10, 20, 10]
    again, _ = sim.simulate({}, back, 10)
    if integrator == "langevin":  # fresh noise after a rewind
        assert not np.allclose(np.asarray(again.positions[0]), np.asarray(s20.positions[0]))
    else:  # deterministic: the same steps again
        np.testing.assert_allclose(
            np.asarray(again.positions[0]), np.asarray(s20.positions[0]), atol=1e-6
        )


def _harmonic_wells(params, positions, neighbor=None):
    return 0.5 * 5.0 * jnp.sum((positions - WELLS) ** 2)


WELLS = jnp.asarray(np.arange(18, dtype=np.float32).reshape(6, 3) * 1.7)


def test_langevin_temperature_and_reproducibility():
    masses = masses_from_atomic_numbers([6, 6, 8, 1, 1, 7])
    sim = make_simulator(
        _harmonic_wells,
        masses,
        dt=DT,
        kT=KT,
        space=free_space(),
        integrator="langevin",
        langevin_gamma=units.per_ps_to_internal(5.0),
    )
    assert sim.dof == 18
    assert sim.tau == pytest.approx(1.0 / units.per_ps_to_internal(5.0))
    pos = jnp.broadcast_to(WELLS, (16, 6, 3))
    start = sim.init({}, jax.random.PRNGKey(1), pos)
    state, _ = sim.simulate({}, start, 1000)  # 0.5 ps = 2.5/γ: equilibrate
    _, traj = sim.simulate({}, state, 4000, 20)
    ke = kinetic_energy(traj.velocities * masses[:, None], jnp.asarray(masses, jnp.float32))
    t_kin = float(jnp.mean(2.0 * ke / sim.dof)) / KT
    print("Langevin <2K/3N> / kT:", t_kin)
    assert t_kin == pytest.approx(1.0, abs=0.04)

    same, _ = sim.simulate({}, sim.init({}, jax.random.PRNGKey(1), pos), 1000)
    np.testing.assert_array_equal(np.asarray(same.positions), np.asarray(state.positions))
    other, _ = sim.simulate({}, sim.init({}, jax.random.PRNGKey(2), pos), 1000)
    assert not np.allclose(np.asarray(other.positions), np.asarray(state.positions))
    # The replicas' noise differs (one key per replica), even from identical starts.
    same_start = sim.init({}, jax.random.PRNGKey(1), pos, momenta=jnp.zeros((16, 6, 3)))
    moved, _ = sim.simulate({}, same_start, 10)
    assert not np.allclose(np.asarray(moved.positions[0]), np.asarray(moved.positions[1]))


def test_unknown_integrator_rejected():
    with pytest.raises(ValueError, match="integrator"):
        make_simulator(
            _harmonic_wells, np.ones(6), dt=DT, kT=KT, space=free_space(), integrator="verlet"
        )
