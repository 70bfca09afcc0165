"""NequIP: an E(3)-equivariant message-passing potential, built on e3nn-jax.

The layout follows the ``nequip`` package (v0.5, the version of the StABlE paper's Ac-Ala3-NHMe
checkpoint) module by module, so that its weights can be mapped onto these parameters:

=============================  ===============================================================
nequip (torch)                 here (Flax ``params`` names)
=============================  ===============================================================
OneHotAtomEncoding             one-hot of the element's position in ``species`` (no params)
SphericalHarmonicEdgeAttrs     ``Y(r_src - r_dst)``, ``1x0e+1x1o`` for ``l_max = 1``,
                               normalised vectors, "component" normalisation
RadialBasisEdgeEncoding        ``bessel_weights`` [8] (trainable ``w_k``, init ``k pi``) times
                               the polynomial cutoff ``p = 6``
chemical_embedding             ``chemical_embedding`` e3nn Linear, one-hot -> ``32x0e``
layer{i}_convnet.conv          ``layer{i}_convnet/conv/{linear_1, fc, linear_2, sc}``
layer{i}_convnet.equivariant   gate (no params): SiLU on even scalars, tanh on odd scalars,
_nonlin                        SiLU on the gates (each activation normalised to unit second
                               moment on N(0, 1), e3nn's ``normalize2mom``)
conv_to_output_hidden          ``conv_to_output_hidden`` Linear -> ``16x0e``
output_hidden_to_scalar        ``output_hidden_to_scalar`` Linear -> ``1x0e``
PerSpeciesScaleShift           ``energy_scale`` / ``energy_shift`` fields (constants)
=============================  ===============================================================

One interaction (nequip ``InteractionBlock``), for node features ``x``, edge ``j -> i``:

* ``sc = FCTP(x, onehot)`` (self-connection; an element-indexed linear map, normalised by
  ``1 / sqrt(mul_in * num_species)`` as e3nn's ``FullyConnectedTensorProduct``);
* ``x' = Linear_1(x)``; per edge the "uvu" tensor product
  ``m_ij = sum_paths R_path(r_ij) (x'_j ⊗ Y_ij)_path`` with one weight per path and channel from
  the radial MLP ``R`` (``8 -> 64 -> 64 -> n_paths * mul``, SiLU, no biases, weights divided by
  ``sqrt(fan_in)``: e3nn's ``FullyConnectedNet``); paths are the (input irrep, SH irrep, output
  irrep) triples allowed by the layer's output, in nequip's order;
* ``y_i = Linear_2(sum_j m_ij / sqrt(avg_num_neighbors)) + sc_i``, then the gate.

The layer's output irreps follow nequip's ``ConvNetLayer``: the hidden irreps reachable from the
input, scalars first, then as many gate scalars as gated irreps, then the gated irreps. With the
paper's Ac-Ala3-NHMe settings (3 layers, ``l_max = 1``, ``32x0e+32x1e+32x0o+32x1o``, 8 Bessel
functions, ``r_max = 5`` Å, radial MLP 2 x 64, ``avg_num_neighbors = 21.3525``) the model has
120,984 parameters, the trainable count of the published checkpoint (paper: 0.12M).

Mapping notes for an importer of nequip checkpoints (e3nn 0.4 torch -> e3nn-jax 0.21):

* normalisations agree: weights N(0, 1) divided by ``sqrt(fan_in)`` (Linear, FullyConnectedNet),
  "component" spherical harmonics and tensor products; the self-connection's
  ``FullyConnectedTensorProduct`` weight ``[mul_in, num_species, mul_out]`` becomes the indexed
  Linear weight ``[num_species, mul_in, mul_out]`` (the ``1 / sqrt(num_species)`` is applied here);
* e3nn-jax simplifies a Linear's irreps (one block per input and output irrep type, e.g.
  ``linear_2`` ``64x0e -> 96x0e`` holds nequip's ``32x0e`` scalar and ``64x0e`` gate blocks) and
  sorts the tensor-product output by its own irrep order: map blocks by irrep type;
* the uvu weights produced by ``fc`` are laid out path by path in nequip's instruction order
  (input irrep, then SH irrep, then output irrep), channels within a path; the same here;
* the real bases and signs of the l >= 1 components and Clebsch-Gordan coefficients should be
  checked numerically (e.g. one layer at a time) rather than assumed;
* torch's ``normalize2mom`` constants are Monte-Carlo estimates (1e6 samples); here they are
  Gauss-Hermite values, and ``silu_normalization`` / ``tanh_normalization`` take torch's numbers;
* MDsim's ASE calculator caps the NequIP graph at 32 neighbours per atom; this model keeps every
  pair within ``cutoff`` (the nequip package itself does not cap either).

Energy normalisation: ``energy_scale`` and ``energy_shift`` are module fields (constants, never
optimised), floats or tuples aligned with ``species``: ``e_i = scale[Z_i] * u_i + shift[Z_i]``
(nequip ``PerSpeciesScaleShift``; a global ``RescaleOutput`` scale ``s`` folds in as
``scale = s * scales``, ``shift = s * shifts``). Change them with ``module.clone(...)``.

Intermediate features of each layer are sown into the ``"intermediates"`` collection
(``layer{i}_features``, e3nn ``IrrepsArray``) for equivariance checks:
``module.apply({"params": p}, z, graph, mutable=["intermediates"])``.

References:
  S. Batzner et al., Nat. Commun. 13, 2453 (2022); github.com/mir-group/nequip (v0.5.4).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from numpy.polynomial.hermite_e import hermegauss

from stabie_jax.models.graph import Graph
from stabie_jax.models.potential import atomwise_scale_shift, nan_unless, species_index
from stabie_jax.models.radial import bessel_basis, bessel_frequencies, polynomial_cutoff

__all__ = [
    "InteractionBlock",
    "NequIP",
    "RadialMLP",
    "gate",
    "layer_irreps",
    "second_moment_normalization",
    "tp_path_exists",
]

_QUADRATURE_POINTS = 150


@functools.cache
def second_moment_normalization(name: str) -> float:
    """Constant ``c`` such that ``c * f(z)`` has unit second moment for ``z ~ N(0, 1)``.

    This is e3nn's ``normalize2mom`` constant, evaluated by Gauss-Hermite quadrature
    (150 nodes, accurate to ~1e-12) instead of torch's Monte-Carlo average.

    Args:
      name: ``"silu"`` or ``"tanh"``.

    Returns:
      ``c = E[f(z)^2]^(-1/2)`` (silu: 1.6765, tanh: 1.5925).
    """
    functions = {"silu": lambda x: x / (1.0 + np.exp(-x)), "tanh": np.tanh}
    if name not in functions:
        raise ValueError(f"no normalisation constant for activation {name!r}")
    nodes, weights = hermegauss(_QUADRATURE_POINTS)
    second_moment = np.sum(weights * functions[name](nodes) ** 2) / math.sqrt(2.0 * math.pi)
    return float(1.0 / math.sqrt(second_moment))


def tp_path_exists(irreps_in1, irreps_in2, ir_out) -> bool:
    """Whether an irrep of ``irreps_in1`` times one of ``irreps_in2`` contains ``ir_out``."""
    ir_out = e3nn.Irrep(ir_out)
    return any(
        ir_out in ir1 * ir2
        for _, ir1 in e3nn.Irreps(irreps_in1)
        for _, ir2 in e3nn.Irreps(irreps_in2)
    )


def layer_irreps(
    irreps_in, irreps_sh, hidden_irreps
) -> tuple[e3nn.Irreps, e3nn.Irreps, e3nn.Irreps]:
    """Gate input irreps of a nequip ``ConvNetLayer``: ``(scalars, gates, gated)``.

    Args:
      irreps_in: the layer's input feature irreps.
      irreps_sh: edge spherical-harmonic irreps.
      hidden_irreps: the requested hidden feature irreps.

    Returns:
      Scalars and gated irreps of ``hidden_irreps`` reachable by one tensor product with the
      edge harmonics (in the order of ``hidden_irreps``), and one gate scalar per gated irrep
      (``0e`` when reachable, else ``0o``).
    """
    hidden = e3nn.Irreps(hidden_irreps)
    scalars = e3nn.Irreps(
        [(m, ir) for m, ir in hidden if ir.l == 0 and tp_path_exists(irreps_in, irreps_sh, ir)]
    )
    gated = e3nn.Irreps(
        [(m, ir) for m, ir in hidden if ir.l > 0 and tp_path_exists(irreps_in, irreps_sh, ir)]
    )
    gate_ir = "0e" if tp_path_exists(irreps_in, irreps_sh, "0e") else "0o"
    gates = e3nn.Irreps([(m, gate_ir) for m, _ in gated])
    return scalars, gates, gated


def _linear(irreps_out, name: str, **kwargs) -> e3nn.flax.Linear:
    """e3nn Linear with e3nn (torch)'s normalisation, independent of e3nn-jax's global config."""
    return e3nn.flax.Linear(
        irreps_out,
        path_normalization="element",
        gradient_normalization="element",
        force_irreps_out=True,
        name=name,
        **kwargs,
    )


class RadialMLP(nn.Module):
    """e3nn ``FullyConnectedNet``: bias-free layers ``x @ W / sqrt(fan_in)``, activation between.

    Params ``layer{k}`` ``[fan_in, fan_out]`` are initialised N(0, 1), as in e3nn.

    Attributes:
      features: output widths of the layers, e.g. ``(64, 64, n_weights)``.
      activation: normalised activation applied after every layer but the last.
    """

    features: Sequence[int]
    activation: Callable[[jax.Array], jax.Array]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``[..., fan_in] -> [..., features[-1]]``."""
        for k, width in enumerate(self.features):
            fan_in = x.shape[-1]
            w = self.param(f"layer{k}", nn.initializers.normal(1.0), (fan_in, width))
            x = x @ (w.astype(x.dtype) / math.sqrt(fan_in))
            if k < len(self.features) - 1:
                x = self.activation(x)
        return x


class InteractionBlock(nn.Module):
    """nequip ``InteractionBlock``: self-connection, Linear, uvu TP with radial weights, Linear.

    Attributes:
      irreps_out: output irreps (the gate's input: scalars + gates + gated).
      num_species: number of elements (one-hot width).
      radial_features: radial MLP hidden widths, e.g. ``(64, 64)``.
      avg_num_neighbors: divisor ``sqrt(avg_num_neighbors)`` of the aggregated messages.
      activation: normalised SiLU for the radial MLP.
      use_self_connection: add the element-indexed self-connection.
    """

    irreps_out: e3nn.Irreps
    num_species: int
    radial_features: Sequence[int]
    avg_num_neighbors: float
    activation: Callable[[jax.Array], jax.Array]
    use_self_connection: bool = True

    @nn.compact
    def __call__(
        self,
        x: e3nn.IrrepsArray,
        species: jax.Array,
        edge_sh: e3nn.IrrepsArray,
        edge_embedding: jax.Array,
        graph: Graph,
    ) -> e3nn.IrrepsArray:
        """Node features ``[N, irreps_in] -> [N, irreps_out]``."""
        n_atoms = x.shape[0]
        irreps_out = e3nn.Irreps(self.irreps_out)

        sc = None
        if self.use_self_connection:
            sc = _linear(irreps_out, "sc", num_indexed_weights=self.num_species)(species, x)
            sc = sc * (1.0 / math.sqrt(self.num_species))

        x = _linear(x.irreps, "linear_1")(x)

        # nequip's instructions: (input irrep, SH irrep, output irrep) in loop order, "uvu".
        paths = [
            (i, j, ir_out)
            for i, (_, ir_in) in enumerate(x.irreps)
            for j, (_, ir_sh) in enumerate(edge_sh.irreps)
            for ir_out in ir_in * ir_sh
            if ir_out in irreps_out
        ]
        num_weights = sum(x.irreps[i].mul for i, _, _ in paths)
        weights = RadialMLP((*self.radial_features, num_weights), self.activation, name="fc")(
            edge_embedding
        )

        x_src = jnp.take(x.array, graph.senders, axis=0, mode="clip")
        x_src = e3nn.IrrepsArray(x.irreps, x_src)
        chunks, irreps_mid, offset = [], [], 0
        for i, j, ir_out in paths:
            mul, ir_in = x.irreps[i]
            ir_sh = edge_sh.irreps[j].ir
            cg = e3nn.clebsch_gordan(ir_in.l, ir_sh.l, ir_out.l) * math.sqrt(ir_out.dim)
            w = weights[:, offset : offset + mul]
            offset += mul
            chunk = jnp.einsum(
                "eui,ej,ijk,eu->euk",
                x_src.chunks[i],
                edge_sh.chunks[j][:, 0, :],
                jnp.asarray(cg, x.dtype),
                w,
            )
            chunks.append(chunk)
            irreps_mid.append((mul, ir_out))
        messages = e3nn.from_chunks(irreps_mid, chunks, (graph.senders.shape[0],), x.dtype)
        messages = jnp.where(graph.edge_mask[:, None], messages.array, 0.0)
        aggregated = jax.ops.segment_sum(messages, graph.receivers, num_segments=n_atoms)
        aggregated = e3nn.IrrepsArray(irreps_mid, aggregated / math.sqrt(self.avg_num_neighbors))

        y = _linear(irreps_out, "linear_2")(aggregated.regroup())
        if sc is not None:
            y = y + sc
        return y


def gate(
    y: e3nn.IrrepsArray,
    scalars: e3nn.Irreps,
    gates: e3nn.Irreps,
    silu: Callable,
    tanh: Callable,
) -> e3nn.IrrepsArray:
    """e3nn ``Gate``: ``[scalars | gates | gated]`` -> ``[act(scalars) | act(gates) * gated]``.

    Even scalars use ``silu``, odd ones ``tanh`` (keeping odd parity); the gates likewise.

    Args:
      y: ``[..., scalars + gates + gated]`` features.
      scalars, gates: irreps of the leading blocks (the rest of ``y`` is gated).
      silu, tanh: normalised activations.

    Returns:
      ``[..., scalars + gated']`` (gated parity times the gates' parity).
    """
    n_s, n_g = e3nn.Irreps(scalars).dim, e3nn.Irreps(gates).dim
    s = e3nn.IrrepsArray(scalars, y.array[..., :n_s])
    g = e3nn.IrrepsArray(gates, y.array[..., n_s : n_s + n_g])
    rest = e3nn.IrrepsArray(
        e3nn.Irreps(y.irreps[len(scalars) + len(gates) :]), y.array[..., n_s + n_g :]
    )

    def activate(x: e3nn.IrrepsArray) -> e3nn.IrrepsArray:
        acts = [silu if ir.p == 1 else tanh for _, ir in x.irreps]
        return e3nn.scalar_activation(x, acts, normalize_act=False)

    out = [activate(s)] if n_s else []
    if rest.irreps.dim:
        out.append(
            e3nn.elementwise_tensor_product(activate(g), rest, irrep_normalization="component")
        )
    return e3nn.concatenate(out, axis=-1)


class NequIP(nn.Module):
    """NequIP returning per-atom energies (eV); defaults are the paper's Ac-Ala3-NHMe model.

    Attributes:
      species: atomic numbers of the model's element types, in type order (default H, C, N, O).
      num_layers: interaction layers, default 3.
      hidden_irreps: feature irreps of each layer, default ``32x0e+32x1e+32x0o+32x1o``.
      embedding_irreps: chemical embedding irreps, default ``32x0e``.
      output_hidden_irreps: irreps of the readout's hidden layer, default ``16x0e``.
      sh_lmax: maximum degree of edge spherical harmonics (irreps ``0e+1o+2e+...``), default 1.
      num_bessel: Bessel basis functions, default 8.
      trainable_bessel: whether the Bessel frequencies are parameters, default True.
      cutoff: ``r_max`` in Å, default 5.0.
      cutoff_p: polynomial cutoff degree, default 6.
      radial_features: radial MLP hidden widths, default ``(64, 64)``.
      avg_num_neighbors: message normalisation, default 21.352514266967773 (the checkpoint's).
      use_self_connection: element-indexed self-connection, default True.
      resnet: add the input to a layer's output when their irreps agree, default False.
      silu_normalization, tanh_normalization: override the activation normalisation constants
        (None: Gauss-Hermite values of :func:`second_moment_normalization`).
      energy_scale: eV per output unit; float or tuple aligned with ``species``.
      energy_shift: eV per atom; float or tuple aligned with ``species``.
    """

    species: Sequence[int] = (1, 6, 7, 8)
    num_layers: int = 3
    hidden_irreps: str = "32x0e+32x1e+32x0o+32x1o"
    embedding_irreps: str = "32x0e"
    output_hidden_irreps: str = "16x0e"
    sh_lmax: int = 1
    num_bessel: int = 8
    trainable_bessel: bool = True
    cutoff: float = 5.0
    cutoff_p: int = 6
    radial_features: Sequence[int] = (64, 64)
    avg_num_neighbors: float = 21.352514266967773
    use_self_connection: bool = True
    resnet: bool = False
    silu_normalization: float | None = None
    tanh_normalization: float | None = None
    energy_scale: float | Sequence[float] = 1.0
    energy_shift: float | Sequence[float] = 0.0

    @nn.compact
    def __call__(self, atomic_numbers: jax.Array, graph: Graph) -> jax.Array:
        """Per-atom energies.

        Args:
          atomic_numbers: ``[N]`` int atomic numbers, each in ``species``.
          graph: :class:`~stabie_jax.models.graph.Graph` (edge vectors in Å).

        Returns:
          ``[N]`` per-atom energies in eV (float64 when the edge vectors are float64). Atoms of
          an element outside ``species`` get NaN when the atomic numbers are traced (a
          ``ValueError`` is raised when they are concrete).
        """
        num_species = len(self.species)
        c_silu = self.silu_normalization or second_moment_normalization("silu")
        c_tanh = self.tanh_normalization or second_moment_normalization("tanh")

        def silu(x):
            return c_silu * jax.nn.silu(x)

        def tanh(x):
            return c_tanh * jnp.tanh(x)

        dtype = graph.edge_vectors.dtype
        index = species_index(atomic_numbers, self.species)
        node_attrs = e3nn.IrrepsArray(
            f"{num_species}x0e", jax.nn.one_hot(index, num_species, dtype=dtype)
        )

        # nequip's edge vectors point from the centre (receiver) to the neighbour (sender).
        irreps_sh = e3nn.Irreps.spherical_harmonics(self.sh_lmax)
        edge_sh = e3nn.spherical_harmonics(
            irreps_sh, -graph.edge_vectors, normalize=True, normalization="component"
        )
        lengths = graph.edge_lengths
        if self.trainable_bessel:
            frequencies = self.param(
                "bessel_weights",
                lambda key, shape: jnp.asarray(bessel_frequencies(shape[0]), jnp.float32),
                (self.num_bessel,),
            )
        else:
            frequencies = bessel_frequencies(self.num_bessel)
        frequencies = jnp.asarray(frequencies, dtype)
        edge_embedding = bessel_basis(lengths, self.cutoff, frequencies)
        edge_embedding = (
            edge_embedding * polynomial_cutoff(lengths, self.cutoff, self.cutoff_p)[:, None]
        )

        x = _linear(self.embedding_irreps, "chemical_embedding")(node_attrs)
        for i in range(self.num_layers):
            scalars, gates, gated = layer_irreps(x.irreps, irreps_sh, self.hidden_irreps)
            conv = InteractionBlock(
                irreps_out=scalars + gates + gated,
                num_species=num_species,
                radial_features=tuple(self.radial_features),
                avg_num_neighbors=self.avg_num_neighbors,
                activation=silu,
                use_self_connection=self.use_self_connection,
                name=f"layer{i}_convnet_conv",
            )
            y = conv(x, index, edge_sh, edge_embedding, graph)
            y = gate(y, scalars, gates, silu, tanh)
            if self.resnet and y.irreps == x.irreps:
                y = x + y
            x = y
            self.sow("intermediates", f"layer{i}_features", x)

        x = _linear(self.output_hidden_irreps, "conv_to_output_hidden")(x)
        u = _linear("1x0e", "output_hidden_to_scalar")(x).array[:, 0]
        u = nan_unless(u, index < num_species)
        return atomwise_scale_shift(
            u, atomic_numbers, self.species, self.energy_scale, self.energy_shift
        )
