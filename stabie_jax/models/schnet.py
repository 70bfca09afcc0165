"""SchNet: continuous-filter convolutions on interatomic distances, as in torch_geometric.

This is torch_geometric's ``SchNet`` (the architecture of the StABlE paper's aspirin model,
trained with MDsim) layer for layer, so that published checkpoints map onto it weight for
weight. With ``h`` the atom features, ``r_ij`` edge lengths, ``ssp(x) = softplus(x) - log 2``:

* embedding: ``h_i = E[Z_i]``, a ``[max_atomic_number, hidden]`` table (row 0 unused);
* edges: ``e_ij = exp(coeff (r_ij - mu_k)^2)``, ``num_gaussians`` centres on ``[0, cutoff]``,
  ``coeff = -0.5 / (mu_1 - mu_0)^2``;
* interaction block (``num_interactions`` of them, residual ``h <- h + block(h)``):

  - filter ``W_ij = Dense(ssp(Dense(e_ij))) * C(r_ij)``, ``C(r) = 0.5 (cos(pi r / r_c) + 1)``
    for ``r < r_c`` and 0 beyond (torch_geometric drops those edges in its radius graph);
  - CFConv ``m_i = Dense_out(sum_j Dense_in(h)_j * W_ij)`` (``Dense_in`` has no bias);
  - ``block(h) = Dense(ssp(m))``;

* readout: ``u_i = Dense(ssp(Dense(h_i)))`` with ``hidden -> hidden // 2 -> 1``;
* per-atom energy ``e_i = scale * u_i + shift``
  (:func:`~stabie_jax.models.potential.atomwise_scale_shift`).

Parameter names and the torch_geometric ``state_dict`` keys they hold (a Flax ``Dense``
``kernel`` is the transpose of a torch ``Linear.weight``):

=====================================  =================================================
stabie_jax ``params``                  torch_geometric
=====================================  =================================================
``embedding/embedding`` [100, H]       ``embedding.weight``
``interaction_{i}/filter_0``           ``interactions.{i}.mlp.0`` (= ``conv.nn.0``)
``interaction_{i}/filter_1``           ``interactions.{i}.mlp.2`` (= ``conv.nn.2``)
``interaction_{i}/conv_in`` (kernel)   ``interactions.{i}.conv.lin1`` (no bias)
``interaction_{i}/conv_out``           ``interactions.{i}.conv.lin2``
``interaction_{i}/dense``              ``interactions.{i}.lin``
``readout_0`` / ``readout_1``          ``lin1`` / ``lin2``
=====================================  =================================================

At hidden 64, filters 64, 6 interactions and 25 Gaussians this has exactly 117,953 parameters,
the count MDsim reports. Differences from torch_geometric, none of which changes a result for
molecules of up to 33 atoms: its radius graph keeps at most 32 neighbours per atom (in index
order, not by distance), which makes energies discontinuous in dense systems; here every pair
within the cutoff interacts. The Gaussian centres are rounded to float32 and ``log 2`` is the
float32 value, as torch_geometric's buffers are, so float64 evaluation matches torch in float64.

Energy normalisation: ``energy_scale`` (eV per output unit) and ``energy_shift`` (eV per atom)
are module fields, i.e. constants that optimisers never touch, either floats or tuples aligned
with ``species`` (per element). MDsim's normaliser (``E = std * sum_i u_i + mean``) for an
``N``-atom molecule is ``energy_scale=std, energy_shift=mean / N`` (or any per-species split of
``mean``). Change them with ``module.clone(energy_shift=...)``; the params stay valid. When the
scale/shift is applied around the potential instead
(:func:`stabie_jax.models.scale_shift.scale_shift_potential`), keep the defaults (1, 0).

Examples:
  >>> model = SchNet()                      # the paper's aspirin configuration
  >>> model.hidden, model.num_interactions, model.cutoff
  (64, 6, 5.0)
  >>> params = model.init(key, atomic_numbers, graph)["params"]       # doctest: +SKIP
  >>> per_atom_ev = model.apply({"params": params}, atomic_numbers, graph)  # doctest: +SKIP

References:
  K. T. Schütt et al., J. Chem. Phys. 148, 241722 (2018);
  torch_geometric.nn.models.SchNet (PyG 2.x).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from stabie_jax.models.graph import Graph
from stabie_jax.models.potential import atomwise_scale_shift
from stabie_jax.models.radial import (
    cosine_cutoff,
    gaussian_coefficient,
    gaussian_offsets,
    gaussian_smearing,
)

__all__ = [
    "LOG2_FLOAT32",
    "SchNet",
    "SchNetInteraction",
    "shifted_softplus",
]

LOG2_FLOAT32 = float(np.log(np.float32(2.0)))
"""``log 2`` rounded to float32, the shift torch_geometric's ``ShiftedSoftplus`` subtracts."""


@jax.custom_jvp
def shifted_softplus(x: jax.Array) -> jax.Array:
    """``ssp(x) = softplus(x) - log 2`` (zero at the origin up to float32 rounding of log 2).

    Computed as ``max(x, 0) + log1p(exp(-|x|)) - log 2`` (the value of ``jax.nn.softplus``),
    with a JVP rule that reuses ``exp(-|x|)`` for the derivative ``sigmoid(x)``: two
    transcendentals per element for value and force instead of three. The rule is made of
    differentiable ``jnp`` operations, so higher derivatives (force-matching gradients) work.
    """
    return _shifted_softplus_and_sigmoid(x)[0]


def _shifted_softplus_and_sigmoid(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    decay = jnp.exp(-jnp.abs(x))
    value = jnp.maximum(x, 0.0) + jnp.log1p(decay) - LOG2_FLOAT32
    inverse = 1.0 / (1.0 + decay)
    return value, jnp.where(x >= 0.0, inverse, decay * inverse)


@shifted_softplus.defjvp
def _shifted_softplus_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    value, sigmoid = _shifted_softplus_and_sigmoid(x)
    return value, sigmoid * dx


class SchNetInteraction(nn.Module):
    """One interaction block: filter network, CFConv, ssp, dense (returns the residual update).

    Attributes:
      hidden: feature width ``H``.
      num_filters: filter width ``F``.
      cutoff: cutoff radius, Å.
    """

    hidden: int
    num_filters: int
    cutoff: float
    undirected_edges: bool = False

    @nn.compact
    def __call__(
        self,
        h: jax.Array,
        expansion: jax.Array,
        lengths: jax.Array,
        graph: Graph,
    ) -> jax.Array:
        """Residual update ``[N, H]`` from features ``h [N, H]`` and ``expansion [E, G]``."""
        n_atoms = h.shape[0]
        w = nn.Dense(self.num_filters, name="filter_0")(expansion)
        w = nn.Dense(self.num_filters, name="filter_1")(shifted_softplus(w))
        weight = cosine_cutoff(lengths, self.cutoff) * graph.edge_mask.astype(lengths.dtype)
        w = w * weight[:, None]
        x = nn.Dense(self.num_filters, use_bias=False, name="conv_in")(h)
        x_j = jnp.take(x, graph.senders, axis=0, mode="clip")
        messages = jnp.where(graph.edge_mask[:, None], x_j * w, 0.0)
        m = jax.ops.segment_sum(messages, graph.receivers, num_segments=n_atoms)
        if self.undirected_edges:
            # Each edge stands for both directions; the filter depends on |r| only, so the
            # reverse message reuses it (half the filter-network work of a directed list).
            x_i = jnp.take(x, graph.receivers, axis=0, mode="clip")
            reverse = jnp.where(graph.edge_mask[:, None], x_i * w, 0.0)
            m = m + jax.ops.segment_sum(reverse, graph.senders, num_segments=n_atoms)
        m = nn.Dense(self.hidden, name="conv_out")(m)
        return nn.Dense(self.hidden, name="dense")(shifted_softplus(m))


class SchNet(nn.Module):
    """torch_geometric SchNet returning per-atom energies (eV).

    Attributes:
      hidden: feature width (``hidden_channels``), default 64.
      num_filters: filter width, default 64.
      num_interactions: number of interaction blocks, default 6.
      num_gaussians: Gaussians on ``[0, cutoff]``, default 25.
      cutoff: cutoff radius in Å, default 5.0.
      max_atomic_number: rows of the embedding table (valid ``Z < max_atomic_number``),
        default 100 as in torch_geometric.
      gaussian_offsets: optional explicit Gaussian centres (Å), e.g. a checkpoint's
        ``distance_expansion.offset`` buffer; default float32 ``linspace(0, cutoff, G)``.
      species: atomic numbers that per-species ``energy_scale``/``energy_shift`` refer to.
      energy_scale: eV per output unit; float or tuple aligned with ``species``.
      energy_shift: eV per atom; float or tuple aligned with ``species``.
      undirected_edges: the graph lists every interacting pair once (``i < j``, e.g.
        :func:`~stabie_jax.models.graph.dense_pairs` or a JAX-MD ``OrderedSparse`` neighbour
        list) and messages flow both ways along each edge. Same energies as the directed
        graph, half the filter-network FLOPs. :func:`~stabie_jax.models.make_potential` picks
        the matching edge list; a directed graph given to such a module counts pairs twice.
    """

    hidden: int = 64
    num_filters: int = 64
    num_interactions: int = 6
    num_gaussians: int = 25
    cutoff: float = 5.0
    max_atomic_number: int = 100
    gaussian_offsets: Sequence[float] | None = None
    species: Sequence[int] | None = None
    energy_scale: float | Sequence[float] = 1.0
    energy_shift: float | Sequence[float] = 0.0
    undirected_edges: bool = False

    @nn.compact
    def __call__(self, atomic_numbers: jax.Array, graph: Graph) -> jax.Array:
        """Per-atom energies.

        Args:
          atomic_numbers: ``[N]`` int atomic numbers (``0 < Z < max_atomic_number``).
          graph: :class:`~stabie_jax.models.graph.Graph` with ``E`` edges (vectors in Å).

        Returns:
          ``[N]`` per-atom energies in eV (float64 when the edge vectors are float64).
        """
        _check_atomic_numbers(atomic_numbers, self.max_atomic_number)
        offsets = (
            gaussian_offsets(0.0, self.cutoff, self.num_gaussians)
            if self.gaussian_offsets is None
            else np.asarray(self.gaussian_offsets, dtype=np.float64)
        )
        if offsets.shape != (self.num_gaussians,):
            raise ValueError(
                f"SchNet.gaussian_offsets has {offsets.shape[0]} entries but "
                f"num_gaussians={self.num_gaussians}"
            )
        lengths = graph.edge_lengths
        dtype = lengths.dtype
        expansion = gaussian_smearing(lengths, offsets, gaussian_coefficient(offsets))

        z = jnp.asarray(atomic_numbers, dtype=jnp.int32)
        h = nn.Embed(self.max_atomic_number, self.hidden, name="embedding")(z).astype(dtype)
        for i in range(self.num_interactions):
            block = SchNetInteraction(
                self.hidden,
                self.num_filters,
                self.cutoff,
                self.undirected_edges,
                name=f"interaction_{i}",
            )
            h = h + block(h, expansion, lengths, graph)
        h = nn.Dense(self.hidden // 2, name="readout_0")(h)
        u = nn.Dense(1, name="readout_1")(shifted_softplus(h))[:, 0]
        return atomwise_scale_shift(
            u, atomic_numbers, self.species, self.energy_scale, self.energy_shift
        )


def _check_atomic_numbers(atomic_numbers, max_atomic_number: int) -> None:
    """Host-side range check of concrete atomic numbers (skipped under tracing)."""
    if isinstance(atomic_numbers, jax.core.Tracer):
        return
    z = np.asarray(atomic_numbers)
    if z.ndim != 1:
        raise ValueError(f"atomic_numbers must be [n_atoms], got shape {z.shape}")
    if z.size and (z.min() < 1 or z.max() >= max_atomic_number):
        raise ValueError(
            f"atomic numbers must lie in [1, {max_atomic_number - 1}] for this SchNet "
            f"(got {z.min()}..{z.max()}); raise max_atomic_number"
        )
