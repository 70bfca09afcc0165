"""The layers of GemNet-T: triplet interaction, interaction block, atom update, output block.

Building blocks of :class:`stabie_jax.models.gemnet_t.GemNetT` (see that module for the
architecture, the authors' configuration and the scale factors). All of them work on *slots*:
the ``n_slots = n_atoms * K`` entries of the :class:`~stabie_jax.models.gemnet_table.NeighborTable`
(``K`` = ``neighbor_capacity``), ordered by receiving atom, with ``slot_mask`` marking the real
edges; an edge message ``m [n_slots, emb_edge]`` lives on the slots.

* :class:`EdgeEmbedding` - ``act(W [h_s, h_t, features_st])`` per slot, without the concatenation;
* :class:`TripletInteraction` - the two-hop message ``b -> a -> c`` through the circular basis of
  the angle at ``a`` and an efficient bilinear layer;
* :class:`InteractionBlock` - triplet interaction, residual layers, :class:`AtomUpdate` and
  re-embedding of the edges;
* :class:`AtomUpdate` / :class:`OutputBlock` - rbf-gated sum of the messages into the atom, an MLP
  (and for the output block a linear map to one energy per atom, eV);
* :class:`ResidualLayer` - ``(x + act(W2 act(W1 x))) / sqrt(2)``;
* :class:`ScaleFactor` - multiplication by a fixed scale factor that also records, in the
  :data:`SCALE_COLLECTION` collection when it is mutable, the variances used to fit it.

Dense layers have no bias and the "He-orthogonal" initialiser; the activation is the scaled SiLU
(:mod:`stabie_jax.models.gemnet_basis`). Flax module names here are the parameter paths of
GemNet-T checkpoints: changing one breaks them.

Examples:
  >>> import jax, jax.numpy as jnp
  >>> layer = ResidualLayer(4)
  >>> x = jnp.ones((3, 4))
  >>> layer.apply(layer.init(jax.random.key(0), x), x).shape
  (3, 4)
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from stabie_jax.models.gemnet_basis import he_orthogonal_init, scaled_silu
from stabie_jax.models.gemnet_table import NeighborTable

__all__ = [
    "AtomUpdate",
    "EdgeEmbedding",
    "INV_SQRT_2",
    "InteractionBlock",
    "OutputBlock",
    "ResidualLayer",
    "SCALE_COLLECTION",
    "ScaleFactor",
    "TripletInteraction",
]

INV_SQRT_2 = 1.0 / math.sqrt(2.0)

SCALE_COLLECTION = "scale_stats"


def _dense(features: int, name: str) -> nn.Dense:
    return nn.Dense(features, use_bias=False, kernel_init=he_orthogonal_init, name=name)


def _weighted_variance(x: jax.Array, weights: jax.Array) -> jax.Array:
    """Mean over features of the weighted variance over rows of ``x [rows, features]``."""
    w = weights.astype(x.dtype)[:, None]
    total = jnp.maximum(jnp.sum(w), 1.0)
    mean = jnp.sum(w * x, axis=0) / total
    return jnp.mean(jnp.sum(w * (x - mean) ** 2, axis=0) / total)


class ScaleFactor(nn.Module):
    """Multiply by a fixed scale; when the ``scale_stats`` collection is mutable, record the
    variances needed to fit it (reference input vs scaled output, as OCP's ``AutomaticFit``)."""

    scale: float
    stat_name: str

    def __call__(self, y, y_weights, ref, ref_weights):
        y = y * self.scale
        if self.is_mutable_collection(SCALE_COLLECTION):
            stats = jnp.stack(
                [
                    _weighted_variance(jax.lax.stop_gradient(ref), ref_weights),
                    _weighted_variance(jax.lax.stop_gradient(y), y_weights),
                    jnp.sum(y_weights).astype(y.dtype),
                ]
            )
            self.sow(SCALE_COLLECTION, self.stat_name, stats)
        return y


class ResidualLayer(nn.Module):
    """``(x + act(W2 act(W1 x))) / sqrt(2)``."""

    units: int

    @nn.compact
    def __call__(self, x):
        y = scaled_silu(_dense(self.units, "dense_0")(x))
        y = scaled_silu(_dense(self.units, "dense_1")(y))
        return (x + y) * INV_SQRT_2


class AtomUpdate(nn.Module):
    """Sum of rbf-gated edge messages into their receiving atom, then an MLP.

    Inputs: ``m [n_slots, emb_edge]``, ``rbf_emb [n_slots, emb_rbf]``, ``slot_mask [n_slots]``;
    output ``[n_atoms, emb_atom]``. Slots are ordered by receiving atom.
    """

    emb_size_atom: int
    num_atom: int
    scale: float
    stat_name: str

    @nn.compact
    def __call__(self, m, rbf_emb, slot_mask, n_atoms):
        x = m * _dense(m.shape[-1], "dense_rbf")(rbf_emb)
        x = jnp.where(slot_mask[:, None], x, 0.0)
        x = jnp.sum(x.reshape(n_atoms, -1, x.shape[-1]), axis=1)
        x = ScaleFactor(self.scale, self.stat_name, name="scale_sum")(
            x, jnp.ones(n_atoms, bool), m, slot_mask
        )
        x = scaled_silu(_dense(self.emb_size_atom, "dense_in")(x))
        for i in range(self.num_atom):
            x = ResidualLayer(self.emb_size_atom, name=f"residual_{i}")(x)
        return x


class OutputBlock(nn.Module):
    """:class:`AtomUpdate` followed by a linear map to one energy per atom (eV)."""

    emb_size_atom: int
    num_atom: int
    scale: float
    stat_name: str

    @nn.compact
    def __call__(self, m, rbf_emb, slot_mask, n_atoms):
        x = AtomUpdate(self.emb_size_atom, self.num_atom, self.scale, self.stat_name, name="atom")(
            m, rbf_emb, slot_mask, n_atoms
        )
        return _dense(1, "out_energy")(x)[:, 0]


class TripletInteraction(nn.Module):
    """Message ``c -> a`` (and ``a -> c``) from all ``b -> a`` with the angle at ``a``.

    Inputs per slot (``n_slots = n_atoms * K``): ``m [n_slots, emb_edge]``, ``rbf3
    [n_slots, emb_rbf]``; ``rbf_w1 [n_atoms, K, num_spherical, emb_cbf]`` (radial part of the
    output edge, down-projected); ``sph [n_atoms, K(c), K(b), num_spherical]`` the masked
    circular basis of the triplets; ``triplet_weights [n_slots]`` the number of triplets each
    slot feeds (for the scale statistics); ``table`` the :class:`NeighborTable`.
    """

    emb_size_edge: int
    emb_size_trip: int
    emb_size_cbf: int
    emb_size_bil_trip: int
    scale_rbf: float
    scale_cbf: float
    block: int

    @nn.compact
    def __call__(self, m, rbf3, rbf_w1, sph, triplet_weights, table: NeighborTable):
        n_atoms, capacity = sph.shape[:2]
        mask = table.slot_mask
        x_ba = scaled_silu(_dense(self.emb_size_edge, "dense_ba")(m))
        x_had = x_ba * _dense(self.emb_size_edge, "mlp_rbf")(rbf3)
        x_ba = ScaleFactor(
            self.scale_rbf, f"TripInteraction_{self.block}_had_rbf", name="scale_rbf"
        )(x_had, mask, x_ba, mask)
        x_ba = scaled_silu(_dense(self.emb_size_trip, "down_projection")(x_ba))
        x_ba = jnp.where(mask[:, None], x_ba, 0.0)
        x_table = x_ba.reshape(n_atoms, capacity, self.emb_size_trip)

        # Efficient bilinear form (GemNet appendix): sum over neighbours b first, then the
        # radial part of c -> a, then the bilinear weight; never a [triplets, emb] tensor.
        sum_b = jnp.einsum("acbl,abt->aclt", sph, x_table)
        rbf_sum = jnp.einsum("acli,aclt->acit", rbf_w1, sum_b)
        w_bil = self.param(
            "bilinear",
            he_orthogonal_init,
            (self.emb_size_trip, self.emb_size_cbf, self.emb_size_bil_trip),
        )
        x = jnp.einsum("acit,tio->aco", rbf_sum, w_bil.astype(rbf_sum.dtype))
        x = x.reshape(n_atoms * capacity, self.emb_size_bil_trip)
        x = ScaleFactor(
            self.scale_cbf, f"TripInteraction_{self.block}_sum_cbf", name="scale_cbf_sum"
        )(x, mask, x_ba, triplet_weights)

        x_ca = scaled_silu(_dense(self.emb_size_edge, "up_projection_ca")(x))
        x_ac = scaled_silu(_dense(self.emb_size_edge, "up_projection_ac")(x))
        # Row n_slots of the padded array is zero: edges without a reverse get nothing.
        x_ac = jnp.concatenate([x_ac, jnp.zeros_like(x_ac[:1])], axis=0)[table.swap]
        return (x_ca + x_ac) * INV_SQRT_2


class InteractionBlock(nn.Module):
    """One GemNet-T interaction block: triplet interaction, edge and atom updates."""

    emb_size_atom: int
    emb_size_edge: int
    emb_size_trip: int
    emb_size_cbf: int
    emb_size_bil_trip: int
    num_before_skip: int
    num_after_skip: int
    num_concat: int
    num_atom: int
    scales: tuple[float, float, float]
    block: int

    @nn.compact
    def __call__(self, h, m, rbf3, rbf_w1, sph, triplet_weights, rbf_h, table: NeighborTable):
        n_atoms = h.shape[0]
        x_skip = scaled_silu(_dense(self.emb_size_edge, "dense_ca")(m))
        x3 = TripletInteraction(
            self.emb_size_edge,
            self.emb_size_trip,
            self.emb_size_cbf,
            self.emb_size_bil_trip,
            self.scales[0],
            self.scales[1],
            self.block,
            name="trip_interaction",
        )(m, rbf3, rbf_w1, sph, triplet_weights, table)
        x = (x_skip + x3) * INV_SQRT_2
        for i in range(self.num_before_skip):
            x = ResidualLayer(self.emb_size_edge, name=f"before_skip_{i}")(x)
        m = (m + x) * INV_SQRT_2
        for i in range(self.num_after_skip):
            m = ResidualLayer(self.emb_size_edge, name=f"after_skip_{i}")(m)

        h2 = AtomUpdate(
            self.emb_size_atom,
            self.num_atom,
            self.scales[2],
            f"AtomUpdate_{self.block}_sum",
            name="atom_update",
        )(m, rbf_h, table.slot_mask, n_atoms)
        h = (h + h2) * INV_SQRT_2

        m2 = EdgeEmbedding(self.emb_size_edge, name="concat_layer")(h, m, table)
        for i in range(self.num_concat):
            m2 = ResidualLayer(self.emb_size_edge, name=f"residual_m_{i}")(m2)
        m = (m + m2) * INV_SQRT_2
        return h, m


class EdgeEmbedding(nn.Module):
    """``act(W [h_source, h_target, edge_features])`` per slot, without the concatenation.

    The kernel ``[2 emb_atom + n_features, features]`` is split into its source, target and
    edge blocks; the atom blocks are applied once per atom and then gathered, which saves the
    ``[n_slots, 2 emb_atom + n_features]`` tensor (memory) and most of the multiply-adds.
    Slots are ordered by target atom.
    """

    features: int

    @nn.compact
    def __call__(self, h, edge_features, table: NeighborTable):
        n_atoms, emb_atom = h.shape
        capacity = table.slot_mask.shape[0] // n_atoms
        kernel = self.param(
            "kernel",
            he_orthogonal_init,
            (2 * emb_atom + edge_features.shape[-1], self.features),
        ).astype(h.dtype)
        from_source = jnp.take(h @ kernel[:emb_atom], table.senders, axis=0, mode="clip")
        from_target = jnp.repeat(h @ kernel[emb_atom : 2 * emb_atom], capacity, axis=0)
        return scaled_silu(from_source + from_target + edge_features @ kernel[2 * emb_atom :])
