"""GemNet-T: parameter count, forces, invariances, periodic images, capacities and overflow."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_md import partition, space

from stabie_jax import md, units
from stabie_jax.models import build_graph, dense_edges, edges_from_neighbor_list, make_potential
from stabie_jax.models.gemnet_t import (
    AUTHORS_PARAMETER_COUNT,
    MDSIM_WATER_SCALE_FACTORS,
    SCALE_COLLECTION,
    GemNetT,
    count_parameters,
    fit_scale_factors,
    make_table_status_fn,
    scale_factor_names,
    update_neighbor_list,
)
from stabie_jax.models.gemnet_table import (
    build_neighbor_table,
    check_table_status,
    max_neighbors_in_frames,
)
from stabie_jax.models.registry import replica_fault_check

CUTOFF = 3.0  # Å, tiny model; boxes below are > 2 * CUTOFF so minimum image is exact
TINY = dict(
    num_blocks=1,
    emb_size_atom=16,
    emb_size_edge=16,
    emb_size_trip=8,
    emb_size_rbf=8,
    emb_size_cbf=8,
    emb_size_bil_trip=8,
    num_spherical=4,
    num_radial=6,
    cutoff=CUTOFF,
    neighbor_capacity=24,
)


def water_lattice(n_per_side: int, spacing: float, seed: int = 0):
    """Randomly oriented rigid waters (O-H 0.96 Å, 104.5°) on a jittered cubic lattice.

    Returns positions ``[3 n^3, 3]`` Å, atomic numbers ``[3 n^3]`` and the box length Å.
    """
    rng = np.random.default_rng(seed)
    half = np.deg2rad(104.5) / 2
    local = np.array([[0, 0, 0], [np.sin(half), np.cos(half), 0], [-np.sin(half), np.cos(half), 0]])
    local *= 0.96
    positions = []
    for idx in np.ndindex(n_per_side, n_per_side, n_per_side):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        centre = (np.array(idx) + 0.5) * spacing + rng.uniform(-0.3, 0.3, size=3)
        positions.append(centre + local @ q.T)
    positions = np.concatenate(positions)
    z = np.tile([8, 1, 1], n_per_side**3).astype(np.int32)
    return positions, z, n_per_side * spacing


@pytest.fixture(scope="module")
def tiny():
    """Tiny GemNet-T with non-trivial scale factors and its parameters."""
    scales = tuple(1.0 + 0.1 * i for i in range(len(scale_factor_names(1))))
    model = GemNetT(**TINY, scale_factors=scales)
    positions, z, _ = water_lattice(1, 3.0)
    graph = build_graph(space.free()[0], jnp.asarray(positions), *dense_edges(3))
    params = jax.jit(model.init)(jax.random.key(0), jnp.asarray(z), graph)["params"]
    return model, params


def _free_molecule(n_waters: int = 2, seed: int = 1):
    positions, z, _ = water_lattice(2, 2.8, seed)
    return positions[: 3 * n_waters], z[: 3 * n_waters]


def test_parameter_count_matches_authors():
    positions, z, _ = water_lattice(1, 3.0)
    graph = build_graph(space.free()[0], jnp.asarray(positions), *dense_edges(3))
    shapes = jax.eval_shape(GemNetT().init, jax.random.key(0), jnp.asarray(z), graph)
    n_params = count_parameters(shapes["params"])
    print(f"GemNet-T water parameters: {n_params} trainable + 17 scale factors")
    # The authors' 1 891 025 includes 17 frozen scale factors (static fields here).
    assert n_params + len(scale_factor_names(4)) == AUTHORS_PARAMETER_COUNT
    assert abs(n_params - AUTHORS_PARAMETER_COUNT) / AUTHORS_PARAMETER_COUNT < 0.05
    assert len(MDSIM_WATER_SCALE_FACTORS) == len(scale_factor_names(4))


def test_forces_are_minus_gradient_by_finite_differences(tiny):
    model, params = tiny
    positions, z = _free_molecule(2)
    with jax.enable_x64(True):
        params64 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), params)
        pot = make_potential(model, z, space.free()[0])
        r0 = jnp.asarray(positions, jnp.float64)
        energy_fn = jax.jit(pot.energy_fn)
        forces = np.asarray(jax.jit(pot.force_fn)(params64, r0))
        assert np.max(np.abs(forces)) > 1e-3  # a non-trivial field
        rng = np.random.default_rng(0)
        step = 1e-5
        for _ in range(4):
            direction = rng.normal(size=r0.shape)
            e_plus = energy_fn(params64, r0 + step * direction)
            e_minus = energy_fn(params64, r0 - step * direction)
            numeric = -(e_plus - e_minus) / (2 * step)
            analytic = np.sum(forces * direction)
            np.testing.assert_allclose(numeric, analytic, rtol=1e-6, atol=1e-8)


def test_rotation_translation_permutation_invariance(tiny):
    model, params = tiny
    positions, z = _free_molecule(3)
    pot = make_potential(model, z, space.free()[0])
    per_atom = jax.jit(pot.per_atom_energy_fn)
    force_fn = jax.jit(pot.force_fn)
    e0 = np.asarray(per_atom(params, jnp.asarray(positions)))
    f0 = np.asarray(force_fn(params, jnp.asarray(positions)))
    assert np.std(e0) > 1e-4

    rot, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))
    moved = positions @ rot.T + np.array([3.0, -1.0, 7.5])
    np.testing.assert_allclose(per_atom(params, jnp.asarray(moved)), e0, atol=2e-5)
    np.testing.assert_allclose(force_fn(params, jnp.asarray(moved)), f0 @ rot.T, atol=2e-4)

    perm = np.random.default_rng(4).permutation(len(z))
    pot_p = make_potential(model, z[perm], space.free()[0])
    e_perm = jax.jit(pot_p.per_atom_energy_fn)(params, jnp.asarray(positions[perm]))
    np.testing.assert_allclose(e_perm, e0[perm], atol=2e-5)


def _periodic_setup(model, n_per_side=2, spacing=3.25, seed=5, capacity_multiplier=1.25):
    positions, z, box = water_lattice(n_per_side, spacing, seed)
    positions = np.mod(positions, box)
    displacement, _ = space.periodic(box)
    neighbor_fn = partition.neighbor_list(
        displacement,
        box,
        model.cutoff,
        dr_threshold=0.5,
        capacity_multiplier=capacity_multiplier,
        format=partition.Sparse,
    )
    return positions, z, box, displacement, neighbor_fn


def test_neighbor_list_matches_all_pairs_and_lattice_images(tiny):
    model, params = tiny
    positions, z, box, displacement, neighbor_fn = _periodic_setup(model)
    assert box > 2 * CUTOFF
    pot_nl = make_potential(model, z, displacement, use_neighbor_list=True)
    pot_all = make_potential(model, z, displacement)
    r = jnp.asarray(positions)
    nbrs = neighbor_fn.allocate(r)
    assert not nbrs.did_buffer_overflow
    e_nl = jax.jit(pot_nl.energy_fn)(params, r, nbrs)
    e_all = jax.jit(pot_all.energy_fn)(params, r)
    np.testing.assert_allclose(e_nl, e_all, rtol=1e-5)

    # Shift every atom by a lattice vector, or some atoms only (then wrap): same energy.
    energy_fn = jax.jit(pot_all.energy_fn)
    shifted = positions + box * np.array([1.0, -2.0, 0.0])
    np.testing.assert_allclose(energy_fn(params, jnp.asarray(shifted)), e_all, rtol=1e-5)
    some = positions.copy()
    some[::4] += box * np.array([0.0, 1.0, -1.0])
    np.testing.assert_allclose(energy_fn(params, jnp.asarray(some)), e_all, rtol=1e-5)
    np.testing.assert_allclose(energy_fn(params, jnp.asarray(np.mod(some, box))), e_all, rtol=1e-5)


def test_supercell_has_eight_times_the_energy(tiny):
    model, params = tiny
    positions, z, box, displacement, _ = _periodic_setup(model)
    pot = make_potential(model, z, displacement)
    e_cell = float(jax.jit(pot.energy_fn)(params, jnp.asarray(positions)))

    shifts = np.array(list(np.ndindex(2, 2, 2)), dtype=float) * box
    big_positions = np.concatenate([positions + s for s in shifts])
    big_z = np.tile(z, 8)
    big_box = 2 * box
    big_displacement, _ = space.periodic(big_box)
    neighbor_fn = partition.neighbor_list(
        big_displacement, big_box, CUTOFF, dr_threshold=0.3, format=partition.Sparse
    )
    r = jnp.asarray(big_positions)
    nbrs = neighbor_fn.allocate(r)
    big_pot = make_potential(model, big_z, big_displacement, use_neighbor_list=True)
    e_big = float(jax.jit(big_pot.energy_fn)(params, r, nbrs))
    assert abs(e_cell) > 1e-2
    np.testing.assert_allclose(e_big, 8 * e_cell, rtol=2e-5)


def test_table_triplets_and_reverse_edges_against_brute_force():
    positions, z, box = water_lattice(2, 3.25, 6)
    displacement, _ = space.periodic(box)
    graph = build_graph(displacement, jnp.asarray(positions), *dense_edges(len(z)))
    capacity = 24
    table = jax.jit(build_neighbor_table, static_argnums=(1, 2, 3))(graph, len(z), CUTOFF, capacity)
    lengths = np.asarray(graph.edge_lengths)
    recv = np.asarray(graph.receivers)
    inside = lengths < CUTOFF
    counts = np.bincount(recv[inside], minlength=len(z))
    assert int(table.max_neighbors) == counts.max()
    assert not bool(table.overflow) and not bool(table.missing_reverse)
    mask = np.asarray(table.slot_mask).reshape(len(z), capacity)
    np.testing.assert_array_equal(mask.sum(1), counts)
    # Every inside edge appears exactly once, in the row of its receiver.
    slot_edge = np.asarray(table.slot_edge)[np.asarray(table.slot_mask)]
    np.testing.assert_array_equal(np.sort(slot_edge), np.nonzero(inside)[0])
    rows = np.nonzero(np.asarray(table.slot_mask))[0] // capacity
    np.testing.assert_array_equal(recv[slot_edge], rows)
    # Triplets (b->a, c->a, b != c): brute force count equals sum n (n - 1).
    brute = sum(
        1
        for e1 in np.nonzero(inside)[0]
        for e2 in np.nonzero(inside & (recv == recv[e1]))[0]
        if e1 != e2
    )
    assert brute == int(np.sum(counts * (counts - 1))) > 0
    # The swap points at the reverse edge: opposite vectors.
    vec = np.asarray(table.vectors)
    valid = np.asarray(table.slot_mask)
    swap = np.asarray(table.swap)[valid]
    np.testing.assert_allclose(vec[swap], -vec[valid], atol=1e-5)


def test_padding_and_skin_edges_contribute_exactly_zero(tiny):
    model, params = tiny
    positions, z = _free_molecule(3)
    r = jnp.asarray(positions)
    senders, receivers = dense_edges(len(z))
    graph = build_graph(space.free()[0], r, senders, receivers)
    apply = jax.jit(model.apply)
    e0 = apply({"params": params}, jnp.asarray(z), graph)
    # Twice as many slots of padding, and the edge list in a different order.
    n = len(z)
    order = np.random.default_rng(7).permutation(len(senders))
    pad = np.full(len(senders), n, np.int32)
    padded = build_graph(
        space.free()[0],
        r,
        np.concatenate([senders[order], pad]),
        np.concatenate([receivers[order], pad]),
    )
    e1 = apply({"params": params}, jnp.asarray(z), padded)
    np.testing.assert_allclose(e1, e0, atol=1e-6)
    # A far atom (beyond the cutoff from all) adds only its own isolated energy.
    far = jnp.concatenate([r, jnp.array([[40.0, 0.0, 0.0]])])
    z_far = np.append(z, 8)
    graph_far = build_graph(space.free()[0], far, *dense_edges(n + 1))
    e_far = apply({"params": params}, jnp.asarray(z_far), graph_far)
    np.testing.assert_allclose(e_far[:n], e0, atol=1e-6)


def test_capacity_overflow_is_reported_never_silent(tiny):
    model, params = tiny
    positions, z, box, displacement, _ = _periodic_setup(model)
    small = model.clone(neighbor_capacity=4)
    status_fn = jax.jit(make_table_status_fn(small, z, displacement))
    status = status_fn(jnp.asarray(positions))
    assert bool(status.overflow) and int(status.max_neighbors) > 4
    with pytest.raises(ValueError, match="neighbor_capacity"):
        check_table_status(status, small.neighbor_capacity)
    pot = make_potential(small, z, displacement)
    with jax.debug_nans(False):
        energies = jax.jit(pot.per_atom_energy_fn)(params, jnp.asarray(positions))
        forces = jax.jit(jax.grad(lambda r: -pot.energy_fn(params, r)))(jnp.asarray(positions))
    assert np.all(np.isnan(np.asarray(energies)))
    # The forces are NaN too: a NaN energy with zero forces would let MD integrate free flight.
    assert np.all(np.isnan(np.asarray(forces)))
    # Enough capacity: no flag.
    ok = jax.jit(make_table_status_fn(model, z, displacement))(jnp.asarray(positions))
    check_table_status(ok, model.neighbor_capacity)


def test_one_directional_edges_are_rejected(tiny):
    model, params = tiny
    positions, z = _free_molecule(2)
    senders, receivers = dense_edges(len(z))
    keep = senders < receivers  # OrderedSparse-like half list
    graph = build_graph(space.free()[0], jnp.asarray(positions), senders[keep], receivers[keep])
    table = jax.jit(build_neighbor_table, static_argnums=(1, 2, 3))(
        graph, len(z), CUTOFF, model.neighbor_capacity
    )
    assert bool(table.missing_reverse)
    with jax.debug_nans(False):
        energies = jax.jit(model.apply)({"params": params}, jnp.asarray(z), graph)
    assert np.all(np.isnan(np.asarray(energies)))


def test_neighbor_list_buffer_overflow_detected_and_reallocated(tiny):
    model, params = tiny
    positions, z, box, displacement, neighbor_fn = _periodic_setup(model, capacity_multiplier=1.0)
    r = jnp.asarray(positions)
    nbrs = neighbor_fn.allocate(r)
    # Squeeze all molecules towards the box centre: many more pairs than allocated.
    squeezed = box / 2 + 0.6 * (r - box / 2)
    assert bool(neighbor_fn.update(squeezed, nbrs).did_buffer_overflow)
    fresh, reallocated = update_neighbor_list(neighbor_fn, squeezed, nbrs)
    assert reallocated and not bool(fresh.did_buffer_overflow)
    pot_nl = make_potential(model, z, displacement, use_neighbor_list=True)
    pot_all = make_potential(model, z, displacement)
    np.testing.assert_allclose(
        jax.jit(pot_nl.energy_fn)(params, squeezed, fresh),
        jax.jit(pot_all.energy_fn)(params, squeezed),
        rtol=1e-5,
    )
    same, reallocated = update_neighbor_list(neighbor_fn, squeezed, fresh)
    assert not reallocated
    senders, _ = edges_from_neighbor_list(same)
    assert senders.shape == edges_from_neighbor_list(fresh)[0].shape


def test_fitted_scale_factors_preserve_variance(tiny):
    model, params = tiny
    module = model.clone(scale_factors=None)
    positions, z, box, displacement, _ = _periodic_setup(module)
    graph = build_graph(displacement, jnp.asarray(positions), *dense_edges(len(z)))
    fitted, values = fit_scale_factors(module, params, [(jnp.asarray(z), graph)])
    assert list(values) == list(scale_factor_names(1))
    assert all(v > 0 for v in values.values()) and any(abs(v - 1) > 0.05 for v in values.values())
    _, state = fitted.apply({"params": params}, jnp.asarray(z), graph, mutable=[SCALE_COLLECTION])
    for path, stats in jax.tree_util.tree_flatten_with_path(state[SCALE_COLLECTION])[0]:
        var_in, var_out, _ = np.asarray(stats)
        np.testing.assert_allclose(var_out, var_in, rtol=1e-3, err_msg=str(path))


def test_wrong_number_of_scale_factors_raises(tiny):
    model, params = tiny
    positions, z = _free_molecule(1)
    graph = build_graph(space.free()[0], jnp.asarray(positions), *dense_edges(3))
    with pytest.raises(ValueError, match="scale_factors"):
        model.clone(scale_factors=MDSIM_WATER_SCALE_FACTORS).apply(
            {"params": params}, jnp.asarray(z), graph
        )


def _reference_energies(params, model: GemNetT, z, positions):
    """Independent float64 numpy GemNet-T on explicit edge and triplet index lists.

    Edges are only the pairs inside the cutoff; triplets are the index pairs ``(b->a, c->a)``;
    the bilinear layer is applied per triplet (no neighbour table, no efficient reordering).
    """
    p = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params)
    scales = model._scales()
    n_int = 3 * model.num_blocks

    def act(x):
        return x / (1.0 + np.exp(-x)) / 0.6

    def dense(x, node):
        return x @ node["kernel"]

    def residual(x, node):
        return (x + act(dense(act(dense(x, node["dense_0"])), node["dense_1"]))) / np.sqrt(2)

    n = len(z)
    diff = positions[None, :, :] - positions[:, None, :]  # [s, t] = R_t - R_s
    dist = np.linalg.norm(diff, axis=-1)
    src, dst = np.nonzero((dist < model.cutoff) & ~np.eye(n, dtype=bool))
    vec = positions[dst] - positions[src]
    d = np.linalg.norm(vec, axis=1)
    unit = vec / d[:, None]
    lookup = {(s, t): e for e, (s, t) in enumerate(zip(src, dst, strict=True))}
    swap = np.array([lookup[(t, s)] for s, t in zip(src, dst, strict=True)])
    trip_ba, trip_ca = zip(
        *[(b, c) for c in range(len(src)) for b in np.nonzero(dst == dst[c])[0] if b != c],
        strict=True,
    )
    trip_ba, trip_ca = np.array(trip_ba), np.array(trip_ca)

    x = d / model.cutoff
    centres = np.linspace(0, 1, model.num_radial)
    width = 1.0 / (model.num_radial - 1)
    pexp = model.envelope_exponent
    env = (
        1
        - (pexp + 1) * (pexp + 2) / 2 * x**pexp
        + pexp * (pexp + 2) * x ** (pexp + 1)
        - pexp * (pexp + 1) / 2 * x ** (pexp + 2)
    )
    rbf = env[:, None] * np.exp(-((x[:, None] - centres) ** 2) / (2 * width**2))
    cos = np.sum(unit[trip_ca] * unit[trip_ba], axis=1)
    sph = np.stack(
        [
            np.sqrt((2 * ell + 1) / (4 * np.pi))
            * np.polynomial.legendre.legval(cos, np.eye(model.num_spherical)[ell])
            for ell in range(model.num_spherical)
        ],
        axis=1,
    )
    cbf = np.einsum("tl,tr,lri->ti", sph, rbf[trip_ca], p["mlp_cbf3"])  # per triplet
    rbf3, rbf_h, rbf_out = (dense(rbf, p[k]) for k in ("mlp_rbf3", "mlp_rbf_h", "mlp_rbf_out"))
    h = p["atom_emb"]["embedding"][np.asarray(z) - 1]

    def edge_concat(h, feats, node):
        return act(dense(np.concatenate([h[src], h[dst], feats], axis=1), node))

    def atom_sum(m, rbf_e, node, scale):
        out = np.zeros((n, m.shape[1]))
        np.add.at(out, dst, m * dense(rbf_e, node["dense_rbf"]))
        out = act(dense(out * scale, node["dense_in"]))
        for i in range(model.num_atom):
            out = residual(out, node[f"residual_{i}"])
        return out

    def output(i, m):
        node = p[f"out_block_{i}"]
        x = atom_sum(m, rbf_out, node["atom"], scales[n_int + i])
        return dense(x, node["out_energy"])[:, 0]

    m = edge_concat(h, rbf, p["edge_emb"])
    energy = output(0, m)
    for b in range(1, model.num_blocks + 1):
        node = p[f"int_block_{b}"]
        tn = node["trip_interaction"]
        s_rbf, s_cbf, s_atom = scales[3 * (b - 1) : 3 * b]
        x_ba = act(dense(m, tn["dense_ba"])) * dense(rbf3, tn["mlp_rbf"]) * s_rbf
        x_ba = act(dense(x_ba, tn["down_projection"]))
        per_trip = np.einsum("ti,tj,jio->to", cbf, x_ba[trip_ba], tn["bilinear"])
        x = np.zeros((len(src), per_trip.shape[1]))
        np.add.at(x, trip_ca, per_trip)
        x = x * s_cbf
        x3 = act(dense(x, tn["up_projection_ca"])) + act(dense(x, tn["up_projection_ac"]))[swap]
        x = (act(dense(m, node["dense_ca"])) + x3 / np.sqrt(2)) / np.sqrt(2)
        x = residual(x, node["before_skip_0"])
        m = residual((m + x) / np.sqrt(2), node["after_skip_0"])
        h = (h + atom_sum(m, rbf_h, node["atom_update"], s_atom)) / np.sqrt(2)
        m2 = residual(edge_concat(h, m, node["concat_layer"]), node["residual_m_0"])
        m = (m + m2) / np.sqrt(2)
        energy = energy + output(b, m)
    return energy


def test_matches_independent_edge_list_reference(tiny):
    model, params = tiny
    positions, z = _free_molecule(4, seed=8)
    with jax.enable_x64(True):
        params64 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), params)
        pot = make_potential(model, z, space.free()[0])
        ours = np.asarray(jax.jit(pot.per_atom_energy_fn)(params64, jnp.asarray(positions)))
    reference = _reference_energies(params, model, z, np.asarray(positions, np.float64))
    assert np.std(reference) > 1e-3
    np.testing.assert_allclose(ours, reference, rtol=1e-9, atol=1e-10)


def test_registry_round_trip_and_init_on_a_crowded_graph(tiny):
    from stabie_jax.models.registry import build_model, init_params, model_hparams

    model, params = tiny
    rebuilt = build_model("gemnet_t", **model_hparams(model))
    assert model_hparams(rebuilt) == model_hparams(model)
    positions, z = _free_molecule(2)
    graph = build_graph(space.free()[0], jnp.asarray(positions), *dense_edges(len(z)))
    apply = jax.jit(lambda m, p: m.apply({"params": p}, jnp.asarray(z), graph), static_argnums=0)
    np.testing.assert_allclose(apply(rebuilt, params), apply(model, params), rtol=1e-6)
    # Initialising on an example graph that overflows the table must not produce NaNs.
    crowded = rebuilt.clone(neighbor_capacity=4)
    new_params = init_params(crowded, np.tile([8, 1, 1], 9), jax.random.key(1))
    assert count_parameters(new_params) == count_parameters(params)


def _tiny_water_md(model, params, capacity, n_replicas=2):
    """A 24-atom periodic water box in MD with a GemNet-T of the given table capacity."""
    positions, z, box = water_lattice(2, 3.25, 5)
    positions = np.mod(positions, box)
    sp = md.periodic_space(box)
    module = model.clone(neighbor_capacity=capacity)
    pot = make_potential(module, z, sp.displacement_fn)
    sim = md.make_simulator(
        pot.energy_fn,
        md.masses_from_atomic_numbers(z),
        dt=units.fs_to_internal(0.5),
        kT=units.kT(300.0),
        space=sp,
    )
    check = replica_fault_check(module, sp.displacement_fn, sim.dt, sim.masses)
    sim = md.with_nonfinite_check(sim, check)
    start = jnp.asarray(np.repeat(positions[None], n_replicas, 0))
    return sim, sim.init(params, jax.random.key(0), start), positions, sp


def test_table_overflow_in_md_raises_with_the_capacity_to_set(tiny):
    model, params = tiny
    with jax.debug_nans(False):
        sim, state, positions, sp = _tiny_water_md(model, params, capacity=4)
        most = max_neighbors_in_frames(positions[None], sp.displacement_fn, model.cutoff)
        assert most > 4  # the table overflows at the very first positions
        with pytest.raises(ValueError, match=r"neighbor_capacity=4\. Set .*neighbor_capacity="):
            sim.simulate(params, state, 10)


def test_enough_capacity_runs_and_a_physical_blowup_is_not_called_overflow(tiny):
    model, params = tiny
    sim, state, positions, sp = _tiny_water_md(model, params, capacity=model.neighbor_capacity)
    new, _ = sim.simulate(params, state, 10)
    assert not np.asarray(new.nonfinite).any() and np.all(np.asarray(new.step) == 10)
    # A replica frozen as non-finite with few neighbours (a blow-up of the physics, here
    # simulated by flagging it) passes the check: the table cannot have overflowed.
    check = replica_fault_check(model, sp.displacement_fn, sim.dt, sim.masses)
    check(new, np.array([True, False]))
    # The same state judged against a capacity below its neighbour count raises.
    most = max_neighbors_in_frames(np.asarray(new.positions[:1]), sp.displacement_fn, CUTOFF)
    tight = replica_fault_check(
        model.clone(neighbor_capacity=most - 1), sp.displacement_fn, sim.dt, sim.masses
    )
    with pytest.raises(ValueError, match=rf"replica\(s\) \[0\] .* has {most} neighbours"):
        tight(new, np.array([True, False]))
