"""GemNet-T: a two-hop (triplet) directional message-passing potential, per-atom energies in eV.

Reference: J. Gasteiger, F. Becker, S. Günnemann, "GemNet: Universal Directional Graph Neural
Networks for Molecules", NeurIPS 2021. This is the triplets-only variant "GemNet-T" with
energy-conserving forces (``direct_forces = False``: forces are ``-dE/dR`` by ``jax.grad``),
configured as the StABlE / MDsim authors ran it on water (MDsim ``configs/water/gemnet-T.yml``):
embeddings atom/edge 128, triplet 64, rbf/cbf 16, bilinear 64, 4 interaction blocks, 7 spherical
x 6 radial basis functions, Gaussian radial basis with polynomial envelope (p = 5), cutoff 5 Å,
one residual layer before/after the skip and after the concatenation, two in the atom MLPs,
scaled-SiLU activations, He-orthogonal initialisation, 83 element embeddings.

Architecture (edges are directed ``s -> t``; an edge's *message* ``m_st`` lives on the edge):

1. embeddings: ``h_a = Embed(Z_a)``; ``m_st = Dense([h_s, h_t, rbf(d_st)])``;
2. each interaction block updates the edge messages with the triplet interaction: for edge
   ``c -> a`` it sums, over the other edges ``b -> a`` into the same atom, the down-projected
   ``m_ba`` (modulated by ``rbf(d_ba)``) weighted by the circular basis of ``angle(c, a, b)``
   and ``rbf(d_ca)`` through a bilinear layer; the result is added to ``c -> a`` and, through a
   second projection, to the reverse edge ``a -> c`` (the two-hop path ``b -> a -> c``); then
   residual layers, an atom update (sum of rbf-gated messages into the atom) and a re-embedding
   of the edges from the new atom states;
3. an output block after the embedding and after every interaction block sums rbf-gated
   messages into the atom and maps them to one energy per atom; the per-atom energy is the sum
   over the ``num_blocks + 1`` output blocks.

The layers of steps 2 and 3 (and the edge embedding) are in :mod:`stabie_jax.models.gemnet_blocks`,
the bases in :mod:`stabie_jax.models.gemnet_basis`; this module assembles them.

Static shapes and periodic systems. The triplets are built inside ``jit`` from the edge list by
:mod:`stabie_jax.models.gemnet_table` (a ``[n_atoms, neighbor_capacity]`` table of the edges
inside the cutoff). Edges may come from all pairs (molecules) or a JAX-MD ``partition.Sparse``
neighbour list under ``space.periodic`` (minimum image; the box must exceed twice the cutoff).
If an atom has more than ``neighbor_capacity`` neighbours inside the cutoff, the per-atom
energies and the forces are **NaN** (never silently wrong) and :func:`make_table_status_fn` +
:func:`~stabie_jax.models.gemnet_table.check_table_status` say why on the host. Neighbour-list
buffer overflow is JAX-MD's ``neighbor.did_buffer_overflow``; :func:`update_neighbor_list`
re-allocates on the host.

Deviation from the authors (documented, deliberate): MDsim's ``max_neighbors: 50`` keeps only
the 50 nearest neighbours of each atom (OCP's ``radius_graph_pbc``). In liquid water at 5 Å
atoms have 41-67 neighbours (mean 52, SPC/Fw data set), so that truncation drops about 5 % of
the edges inside the cutoff and makes the energy discontinuous. Here every neighbour inside the
cutoff is kept; ``neighbor_capacity`` (default 80) is only a static buffer size, and exceeding
it is an error, not a truncation. The number of parameters does not depend on it.

Cost. Work and memory scale with the ``n_atoms * neighbor_capacity`` slots (edge tensors) and
the ``n_atoms * neighbor_capacity**2 * num_spherical`` triplet basis, not with the length of
the edge list. Energy + forces of 64 waters (192 atoms, capacity 80, float32) need about
1.1 GB of XLA temporaries; set ``neighbor_capacity`` from the data (largest neighbour count
plus a margin) when memory or time matters.

Scale factors. GemNet multiplies four kinds of sums by constants fitted so that the variance
is preserved at initialisation (OCP's ``AutomaticFit``; 3 per interaction block, 1 per output
block, 17 in all). Here they are a static module field ``scale_factors`` (a tuple ordered as
:func:`scale_factor_names`), ``None`` meaning all 1.0. They are not in ``params`` (so optimisers
and weight decay never touch them; the authors' count of 1 891 025 includes them as frozen
tensors: 1 891 008 trainable + 17). Two ways to set them: :func:`fit_scale_factors` fits them
to a few frames for the current initial parameters (the authors' procedure), and
:data:`MDSIM_WATER_SCALE_FACTORS` holds the values MDsim fitted for its water model.

Examples:
  >>> import jax, jax.numpy as jnp
  >>> from stabie_jax.models import dense_edges, build_graph
  >>> from jax_md import space
  >>> model = GemNetT(num_blocks=1, emb_size_atom=16, emb_size_edge=16)
  >>> z = jnp.array([8, 1, 1]); R = jnp.array([[0., 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
  >>> s, r = dense_edges(3)
  >>> graph = build_graph(space.free()[0], R, s, r)
  >>> params = model.init(jax.random.key(0), z, graph)["params"]
  >>> model.apply({"params": params}, z, graph).shape
  (3,)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from stabie_jax.models.gemnet_basis import (
    circular_basis,
    gaussian_radial_basis,
    he_orthogonal_init,
)
from stabie_jax.models.gemnet_blocks import (
    INV_SQRT_2,
    SCALE_COLLECTION,
    AtomUpdate,
    EdgeEmbedding,
    InteractionBlock,
    OutputBlock,
    ResidualLayer,
    ScaleFactor,
    TripletInteraction,
    _dense,
)
from stabie_jax.models.gemnet_table import (
    TableStatus,
    build_neighbor_table,
    table_status,
)
from stabie_jax.models.graph import Graph, build_graph, dense_edges, edges_from_neighbor_list

__all__ = [
    "AUTHORS_PARAMETER_COUNT",
    "AtomUpdate",
    "EdgeEmbedding",
    "GemNetT",
    "INV_SQRT_2",
    "InteractionBlock",
    "MDSIM_WATER_SCALE_FACTORS",
    "OutputBlock",
    "ResidualLayer",
    "SCALE_COLLECTION",
    "ScaleFactor",
    "TripletInteraction",
    "count_parameters",
    "fit_scale_factors",
    "make_table_status_fn",
    "scale_factor_names",
    "update_neighbor_list",
]

AUTHORS_PARAMETER_COUNT = 1_891_025
"""GemNet-T water parameter count of the authors' model (docs/paper_settings.md, Water),
including the 17 frozen scale factors."""

MDSIM_WATER_SCALE_FACTORS = (
    5.5737762451171875,  # TripInteraction_1_had_rbf
    1.7056342363357544,  # TripInteraction_1_sum_cbf
    0.4618416130542755,  # AtomUpdate_1_sum
    4.484927177429199,  # TripInteraction_2_had_rbf
    1.6062310934066772,  # TripInteraction_2_sum_cbf
    0.4112415015697479,  # AtomUpdate_2_sum
    4.911035060882568,  # TripInteraction_3_had_rbf
    1.6301891803741455,  # TripInteraction_3_sum_cbf
    0.3454769253730774,  # AtomUpdate_3_sum
    5.337745666503906,  # TripInteraction_4_had_rbf
    1.6658426523208618,  # TripInteraction_4_sum_cbf
    0.32520246505737305,  # AtomUpdate_4_sum
    0.4573551118373871,  # OutBlock_0_sum
    0.514782190322876,  # OutBlock_1_sum
    0.4109618067741394,  # OutBlock_2_sum
    0.37208542227745056,  # OutBlock_3_sum
    0.3400648534297943,  # OutBlock_4_sum
)
"""Scale factors MDsim fitted for GemNet-T on water (``configs/water/gemnet-T-scale.json``),
in the order of :func:`scale_factor_names` for ``num_blocks = 4``."""


def scale_factor_names(num_blocks: int) -> tuple[str, ...]:
    """Names of the scale factors in fitting order (interaction blocks, then output blocks)."""
    names = []
    for i in range(1, num_blocks + 1):
        names += [f"TripInteraction_{i}_had_rbf", f"TripInteraction_{i}_sum_cbf"]
        names += [f"AtomUpdate_{i}_sum"]
    return tuple(names + [f"OutBlock_{i}_sum" for i in range(num_blocks + 1)])


class GemNetT(nn.Module):
    """GemNet-T potential: ``apply({"params": p}, atomic_numbers [N], graph) -> [N]`` eV.

    Defaults are the authors' water configuration (see the module docstring). Use tiny sizes
    (e.g. ``emb_size_* = 16``, ``num_blocks = 1``) for tests.

    Attributes:
      num_spherical: circular basis size (orders ``l < num_spherical``).
      num_radial: Gaussian radial basis size.
      num_blocks: interaction blocks.
      emb_size_atom, emb_size_edge: atom / edge embedding sizes.
      emb_size_trip: down-projected edge size in the triplet interaction.
      emb_size_rbf, emb_size_cbf: radial / circular basis embedding sizes.
      emb_size_bil_trip: output size of the bilinear layer.
      num_before_skip, num_after_skip, num_concat, num_atom: residual layers per stage.
      cutoff: Å.
      envelope_exponent: ``p`` of the polynomial envelope.
      neighbor_capacity: static maximum number of neighbours per atom inside the cutoff;
        exceeding it gives NaN energies and a flag (see :func:`make_table_status_fn`).
      num_elements: size of the element embedding (atomic numbers ``1..num_elements``).
      scale_factors: ``None`` (all 1.0) or ``4 * num_blocks + 1`` floats ordered as
        :func:`scale_factor_names` (a list is accepted, e.g. from a JSON checkpoint).
    """

    num_spherical: int = 7
    num_radial: int = 6
    num_blocks: int = 4
    emb_size_atom: int = 128
    emb_size_edge: int = 128
    emb_size_trip: int = 64
    emb_size_rbf: int = 16
    emb_size_cbf: int = 16
    emb_size_bil_trip: int = 64
    num_before_skip: int = 1
    num_after_skip: int = 1
    num_concat: int = 1
    num_atom: int = 2
    cutoff: float = 5.0
    envelope_exponent: int = 5
    neighbor_capacity: int = 80
    num_elements: int = 83
    scale_factors: tuple[float, ...] | None = None

    def _scales(self) -> tuple:
        n = 4 * self.num_blocks + 1
        if self.scale_factors is None:
            return (1.0,) * n
        if len(self.scale_factors) != n:
            raise ValueError(
                f"GemNetT.scale_factors must have {n} entries for num_blocks={self.num_blocks} "
                f"(order: scale_factor_names), got {len(self.scale_factors)}"
            )
        return tuple(self.scale_factors)

    @nn.compact
    def __call__(self, atomic_numbers: jax.Array, graph: Graph) -> jax.Array:
        n_atoms = atomic_numbers.shape[0]
        if not isinstance(atomic_numbers, jax.core.Tracer):
            z = np.asarray(atomic_numbers)
            if np.any((z < 1) | (z > self.num_elements)):
                raise ValueError(
                    f"GemNetT embeds atomic numbers 1..{self.num_elements}; got {sorted(set(z))}"
                )
        capacity = self.neighbor_capacity
        scales = self._scales()
        table = build_neighbor_table(graph, n_atoms, self.cutoff, capacity)
        mask = table.slot_mask
        dtype = table.vectors.dtype

        # Bases: radial per slot, circular per (atom, slot c, slot b).
        lengths = jnp.sqrt(jnp.sum(table.vectors**2, axis=-1))
        rbf = gaussian_radial_basis(lengths, self.cutoff, self.num_radial, self.envelope_exponent)
        rbf = jnp.where(mask[:, None], rbf, 0.0)
        unit = (table.vectors / lengths[:, None]).reshape(n_atoms, capacity, 3)
        cos_angle = jnp.clip(jnp.einsum("acx,abx->acb", unit, unit), -1.0, 1.0)
        mask_table = mask.reshape(n_atoms, capacity)
        trip_mask = mask_table[:, :, None] & mask_table[:, None, :] & ~jnp.eye(capacity, dtype=bool)
        sph = jnp.where(trip_mask[..., None], circular_basis(cos_angle, self.num_spherical), 0.0)
        n_per_atom = jnp.sum(mask_table, axis=1, keepdims=True)
        triplet_weights = jnp.where(mask_table, n_per_atom - 1, 0).reshape(-1)

        # Projections of the bases shared by all blocks.
        rbf3 = _dense(self.emb_size_rbf, "mlp_rbf3")(rbf)
        w_cbf3 = self.param(
            "mlp_cbf3", he_orthogonal_init, (self.num_spherical, self.num_radial, self.emb_size_cbf)
        )
        rbf_w1 = jnp.einsum("sr,lri->sli", rbf, w_cbf3.astype(dtype))
        rbf_w1 = rbf_w1.reshape(n_atoms, capacity, self.num_spherical, self.emb_size_cbf)
        rbf_h = _dense(self.emb_size_rbf, "mlp_rbf_h")(rbf)
        rbf_out = _dense(self.emb_size_rbf, "mlp_rbf_out")(rbf)

        embed_init = nn.initializers.uniform(scale=2.0 * math.sqrt(3.0))
        h = nn.Embed(
            self.num_elements,
            self.emb_size_atom,
            embedding_init=lambda k, s, d: embed_init(k, s, d) - math.sqrt(3.0),
            name="atom_emb",
        )(atomic_numbers - 1)
        h = h.astype(dtype)
        m = EdgeEmbedding(self.emb_size_edge, name="edge_emb")(h, rbf, table)

        n_int = 3 * self.num_blocks

        def output(i, m):
            return OutputBlock(
                self.emb_size_atom,
                self.num_atom,
                scales[n_int + i],
                f"OutBlock_{i}_sum",
                name=f"out_block_{i}",
            )(m, rbf_out, mask, n_atoms)

        energy = output(0, m)
        for i in range(1, self.num_blocks + 1):
            h, m = InteractionBlock(
                self.emb_size_atom,
                self.emb_size_edge,
                self.emb_size_trip,
                self.emb_size_cbf,
                self.emb_size_bil_trip,
                self.num_before_skip,
                self.num_after_skip,
                self.num_concat,
                self.num_atom,
                scales[3 * (i - 1) : 3 * i],
                i,
                name=f"int_block_{i}",
            )(h, m, rbf3, rbf_w1, sph, triplet_weights, rbf_h, table)
            energy = energy + output(i, m)

        bad_element = jnp.any((atomic_numbers < 1) | (atomic_numbers > self.num_elements))
        if self.is_initializing():
            return energy  # parameter shapes only; any example graph will do
        invalid = table.overflow | table.missing_reverse | bad_element
        # Multiply, not ``where``: a NaN chosen by ``where`` has a zero gradient, so the forces
        # would be exactly 0 and MD would integrate free flight silently. The product makes the
        # energies *and* forces NaN, and the replica engine freezes the replica as non-finite.
        return energy * jnp.where(invalid, jnp.nan, 1.0).astype(energy.dtype)


def count_parameters(params) -> int:
    """Number of scalars in a parameter pytree."""
    return int(sum(np.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(params)))


def make_table_status_fn(
    module: GemNetT, atomic_numbers, displacement_fn: Callable, *, use_neighbor_list: bool = False
) -> Callable:
    """``status_fn(positions [N,3] Å, neighbor=None, **kw) -> TableStatus``, matching
    :func:`~stabie_jax.models.potential.make_potential`'s arguments (jit-compatible).

    Check the result on the host with
    :func:`~stabie_jax.models.gemnet_table.check_table_status` (``module.neighbor_capacity``).
    """
    n_atoms = int(np.asarray(atomic_numbers).shape[0])
    static_edges = None if use_neighbor_list else dense_edges(n_atoms)

    def status_fn(positions, neighbor=None, **displacement_kwargs) -> TableStatus:
        if use_neighbor_list:
            if neighbor is None:
                raise ValueError("this status function uses a neighbour list: pass neighbor=...")
            senders, receivers = edges_from_neighbor_list(neighbor)
        else:
            senders, receivers = static_edges
        graph = build_graph(displacement_fn, positions, senders, receivers, **displacement_kwargs)
        return table_status(graph, n_atoms, module.cutoff, module.neighbor_capacity)

    return status_fn


def update_neighbor_list(neighbor_fn, positions, neighbor, **kwargs):
    """Host-side neighbour-list update that never keeps an overflowed list.

    Updates ``neighbor`` (JAX-MD ``NeighborListFns`` / ``NeighborList``); if the buffer
    overflowed, re-allocates a larger list from ``positions`` (which recompiles consumers).

    Returns:
      ``(neighbor, reallocated: bool)``.
    """
    neighbor = neighbor_fn.update(positions, neighbor, **kwargs)
    if bool(neighbor.did_buffer_overflow):
        neighbor = neighbor_fn.allocate(positions, **kwargs)
        if bool(neighbor.did_buffer_overflow):
            raise ValueError("neighbour list overflowed again right after re-allocation")
        return neighbor, True
    return neighbor, False


def fit_scale_factors(
    module: GemNetT,
    params,
    samples: Sequence[tuple[jax.Array, Graph]],
) -> tuple[GemNetT, dict[str, float]]:
    """Fit the scale factors so that each scaled sum keeps its input's variance.

    For each factor in :func:`scale_factor_names` order (earlier ones already fitted, the
    rest at their current value): run the model on all ``samples``, accumulate the mean
    per-feature variance of the reference input and of the scaled output (weighted by the
    number of output rows, as OCP's ``AutomaticFit``), and multiply the factor by
    ``sqrt(var_in / var_out)``.

    Args:
      module: a :class:`GemNetT` (its current ``scale_factors`` are the starting point).
      params: its ``params`` collection.
      samples: ``(atomic_numbers [N], graph)`` pairs, e.g. a few training frames.

    Returns:
      ``(module.clone(scale_factors=fitted), {name: value})``.
    """
    names = scale_factor_names(module.num_blocks)
    scales = np.asarray(module._scales(), dtype=np.float64)
    fields = {f: getattr(module, f) for f in module.__dataclass_fields__ if f not in _NON_FIELDS}

    def stats_fn(scale_array, atomic_numbers, graph):
        model = GemNetT(
            **{**fields, "scale_factors": tuple(scale_array[i] for i in range(len(names)))}
        )
        _, state = model.apply(
            {"params": params}, atomic_numbers, graph, mutable=[SCALE_COLLECTION]
        )
        flat = {}
        for path, value in jax.tree_util.tree_flatten_with_path(state[SCALE_COLLECTION])[0]:
            flat[path[-2].key] = value
        return jnp.stack([flat[name] for name in names])

    stats_fn = jax.jit(stats_fn)
    for index, name in enumerate(names):
        var_in = var_out = n_total = 0.0
        for atomic_numbers, graph in samples:
            stats = np.asarray(stats_fn(jnp.asarray(scales, jnp.float32), atomic_numbers, graph))
            var_in += stats[index, 0] * stats[index, 2]
            var_out += stats[index, 1] * stats[index, 2]
            n_total += stats[index, 2]
        if not (var_in > 0.0 and var_out > 0.0):
            raise ValueError(f"fit_scale_factors: zero variance for {name}; use real frames")
        scales[index] *= math.sqrt(var_in / var_out)
    fitted = tuple(float(s) for s in scales)
    return module.clone(scale_factors=fitted), dict(zip(names, fitted, strict=True))


_NON_FIELDS = ("parent", "name")
