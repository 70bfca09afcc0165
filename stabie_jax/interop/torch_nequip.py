"""Import nequip-package (v0.5) NequIP checkpoints, as trained by MDsim/StABlE, into stabie_jax.

The StABlE paper's Ac-Ala3-NHMe model is a ``best_model.pth`` (a plain ``state_dict``, every key
prefixed ``model.`` by MDsim) next to nequip's ``config.yaml``. The tensors and where they go in
:class:`stabie_jax.models.nequip.NequIP`'s ``params``:

=====================================================  ==========================================
nequip (``func`` = ``model.func``)                     stabie_jax
=====================================================  ==========================================
``scale_by`` (), ``func.per_species_rescale.{scales,    module constants ``energy_scale =
shifts}`` [T]                                          scale_by * scales``, ``energy_shift =
                                                       scale_by * shifts`` (per species, eV)
``func.radial_basis.basis.bessel_weights`` [B]         ``bessel_weights``
``func.chemical_embedding.linear.weight`` (flat)       ``chemical_embedding`` (e3nn Linear)
``func.layer{i}_convnet.conv.linear_1/linear_2``       ``layer{i}_convnet_conv/linear_1, linear_2``
``func.layer{i}_convnet.conv.fc.layer{k}.weight``      ``layer{i}_convnet_conv/fc/layer{k}``
``func.layer{i}_convnet.conv.sc.weight`` (flat FCTP    ``layer{i}_convnet_conv/sc`` (indexed
x ⊗ one-hot, ``[mul_in, T, mul_out]`` per path)         Linear, ``[T, mul_in, mul_out]``)
``func.conv_to_output_hidden``,                        same names
``func.output_hidden_to_scalar``
=====================================================  ==========================================

``*.output_mask``, empty ``bias`` tensors, ``tp.weight`` (the tensor product takes its weights
from ``fc``) and the ``_w3j`` buffers are not parameters.

Layout rules (checked against nequip 0.5.6 with e3nn 0.4.4 to ~4e-7 eV in float64):

* e3nn (torch) stores a Linear's weights flat, one ``[mul_in, mul_out]`` block per (input,
  output) irrep pair of equal type in loop order, and multiplies by ``1/sqrt(fan_in)`` in the
  forward pass. stabie_jax's e3nn-jax Linears use ``gradient_normalization="element"``, i.e.
  the factor is *in the stored weight*; the importer divides by ``sqrt(fan_in)``.
* nequip sorts irreps (e3nn-torch order: ``(l, p)`` with odd before even) where stabie_jax keeps
  the gate layout ``scalars + gates + gated``; since a Linear only mixes channels of one irrep
  type, weights are matched per type through a dense ``[channels_in, channels_out]`` matrix.
* For ``l <= 1`` e3nn 0.4 and e3nn-jax use the same real basis, spherical harmonics and
  Clebsch-Gordan coefficients, so no basis change is needed (higher ``l`` is rejected).
* The activations' ``normalize2mom`` constants are e3nn-torch's Monte-Carlo values
  (:data:`E3NN_TORCH_SILU_NORMALIZATION`, :data:`E3NN_TORCH_TANH_NORMALIZATION`).
"""

from __future__ import annotations

import hashlib
import math
import pathlib
import re

import numpy as np

__all__ = [
    "E3NN_TORCH_SILU_NORMALIZATION",
    "E3NN_TORCH_TANH_NORMALIZATION",
    "import_nequip_checkpoint",
    "nequip_hparams",
    "state_dict_to_nequip_params",
]

E3NN_TORCH_SILU_NORMALIZATION = 1.6791767923989418
"""``e3nn.math.normalize2mom(silu).cst`` of e3nn (torch) 0.4 (10^6 seeded N(0,1) samples)."""

E3NN_TORCH_TANH_NORMALIZATION = 1.5937334472592695
"""``e3nn.math.normalize2mom(tanh).cst`` of e3nn (torch) 0.4."""

_F = "model.func."
_WEIGHT_NAME = re.compile(r"w\[(\d+),(\d+)\] (\d+)x(\w+),(\d+)x(\w+)")


def _read_config(path) -> dict:
    """nequip's config.yaml; Python-object tags (tuples, torch tensors) are read as None."""
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
    with open(path) as f:
        config = yaml.load(f, Loader=_Loader)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not a nequip config (expected a YAML mapping)")
    return config


def _blocks(irreps):
    import e3nn_jax as e3nn

    return [(mul, e3nn.Irrep(ir)) for mul, ir in e3nn.Irreps(irreps)]


def _torch_sorted(irreps) -> str:
    """e3nn-torch ``Irreps.sort().irreps.simplify()`` (stable sort by ``(l, p)``)."""
    out = []
    for mul, ir in sorted(_blocks(irreps), key=lambda b: (b[1].l, b[1].p)):
        if out and out[-1][1] == ir:
            out[-1] = (out[-1][0] + mul, ir)
        else:
            out.append((mul, ir))
    return "+".join(f"{m}x{ir}" for m, ir in out)


def _type_offsets(blocks):
    seen, offsets = {}, []
    for mul, ir in blocks:
        offsets.append(seen.get(ir, 0))
        seen[ir] = seen.get(ir, 0) + mul
    return offsets, seen


def _linear_matrices(flat, irreps_in, irreps_out, name: str) -> dict:
    """Flat e3nn-torch Linear weights -> ``{irrep: [n_in, n_out] / sqrt(n_in)}``."""
    b_in, b_out = _blocks(irreps_in), _blocks(irreps_out)
    o_in, n_in = _type_offsets(b_in)
    o_out, n_out = _type_offsets(b_out)
    mats = {ir: np.zeros((n_in[ir], n_out[ir])) for ir in n_in if ir in n_out}
    pos = 0
    for a, (mi, ir_i) in enumerate(b_in):
        for b, (mo, ir_o) in enumerate(b_out):
            if ir_i == ir_o:
                block = flat[pos : pos + mi * mo].reshape(mi, mo)
                mats[ir_i][o_in[a] : o_in[a] + mi, o_out[b] : o_out[b] + mo] = block
                pos += mi * mo
    if pos != flat.size:
        raise ValueError(
            f"{name}: {flat.size} weights, expected {pos} for {irreps_in} -> {irreps_out}"
        )
    return {ir: m / math.sqrt(m.shape[0]) for ir, m in mats.items()}


def _self_connection_matrices(flat, irreps_in, n_species, irreps_out, name: str) -> dict:
    """Flat e3nn-torch FCTP(x, one-hot) weights -> ``{irrep: [T, n_in, n_out] / sqrt(n_in)}``."""
    b_in, b_out = _blocks(irreps_in), _blocks(irreps_out)
    o_in, n_in = _type_offsets(b_in)
    o_out, n_out = _type_offsets(b_out)
    mats = {ir: np.zeros((n_species, n_in[ir], n_out[ir])) for ir in n_in if ir in n_out}
    pos = 0
    for a, (mi, ir_i) in enumerate(b_in):
        for b, (mo, ir_o) in enumerate(b_out):
            if ir_i == ir_o:
                size = mi * n_species * mo
                block = flat[pos : pos + size].reshape(mi, n_species, mo).transpose(1, 0, 2)
                mats[ir_i][:, o_in[a] : o_in[a] + mi, o_out[b] : o_out[b] + mo] = block
                pos += size
    if pos != flat.size:
        raise ValueError(f"{name}: {flat.size} weights, expected {pos}")
    return {ir: m / math.sqrt(m.shape[1]) for ir, m in mats.items()}


def _fill(template: dict, mats: dict, name: str) -> dict:
    """Cut the per-type matrices into the blocks of an e3nn-jax Linear's params."""
    import e3nn_jax as e3nn

    ins, outs = {}, {}
    for key in template:
        m = _WEIGHT_NAME.fullmatch(key)
        if m is None:
            raise ValueError(f"{name}: unexpected e3nn-jax parameter {key!r}")
        i, j, mi, ir_i, mo, ir_o = m.groups()
        ins[int(i)] = (int(mi), e3nn.Irrep(ir_i))
        outs[int(j)] = (int(mo), e3nn.Irrep(ir_o))
    o_in = dict(zip(sorted(ins), _type_offsets([ins[k] for k in sorted(ins)])[0], strict=True))
    o_out = dict(zip(sorted(outs), _type_offsets([outs[k] for k in sorted(outs)])[0], strict=True))
    out = {}
    for key, leaf in template.items():
        i, j, mi, ir_i, mo, _ = _WEIGHT_NAME.fullmatch(key).groups()
        i, j, mi, mo = int(i), int(j), int(mi), int(mo)
        block = mats[e3nn.Irrep(ir_i)][..., o_in[i] : o_in[i] + mi, o_out[j] : o_out[j] + mo]
        if block.shape != tuple(leaf.shape):
            raise ValueError(f"{name}/{key}: got {block.shape}, expected {tuple(leaf.shape)}")
        out[key] = block.astype(np.float32)
    return out


def nequip_hparams(config: dict, state_dict: dict) -> dict:
    """:class:`stabie_jax.models.nequip.NequIP` keyword arguments for a nequip 0.5 config."""
    import ase.data

    required = [
        "chemical_symbols", "num_layers", "feature_irreps_hidden", "l_max", "num_basis",
        "r_max", "invariant_layers", "invariant_neurons", "avg_num_neighbors",
    ]  # fmt: skip
    missing = [k for k in required if k not in config]
    if missing:
        raise ValueError(f"nequip config lacks {missing}")
    if int(config["l_max"]) > 1:
        raise ValueError("only l_max <= 1 nequip models are supported (e3nn bases agree there)")
    if config.get("nonlinearity_type", "gate") != "gate" or config.get("resnet", False):
        raise ValueError("only gate nonlinearities without resnet are supported")
    want = {"e": "silu", "o": "tanh"}
    for key in ("nonlinearity_scalars", "nonlinearity_gates"):
        for parity in ("e", "o"):
            got = (config.get(key) or want).get(parity, want[parity])
            if got != want[parity]:
                raise ValueError(f"{key}.{parity} = {got!r}; only silu (even) / tanh (odd)")
    scale_by = float(state_dict.get("scale_by", np.float64(1.0)))
    scales = state_dict[_F + "per_species_rescale.scales"].reshape(-1)
    shifts = state_dict[_F + "per_species_rescale.shifts"].reshape(-1)
    species = tuple(int(ase.data.atomic_numbers[s]) for s in config["chemical_symbols"])
    return {
        "species": species,
        "num_layers": int(config["num_layers"]),
        "hidden_irreps": str(config["feature_irreps_hidden"]),
        "embedding_irreps": str(config.get("chemical_embedding_irreps_out", "32x0e")),
        "output_hidden_irreps": str(config.get("conv_to_output_hidden_irreps_out", "16x0e")),
        "sh_lmax": int(config["l_max"]),
        "num_bessel": int(config["num_basis"]),
        "trainable_bessel": bool(config.get("BesselBasis_trainable", True)),
        "cutoff": float(config["r_max"]),
        "cutoff_p": int(config.get("PolynomialCutoff_p", 6)),
        "radial_features": (int(config["invariant_neurons"]),) * int(config["invariant_layers"]),
        "avg_num_neighbors": float(config["avg_num_neighbors"]),
        "use_self_connection": bool(config.get("use_sc", True)),
        "silu_normalization": E3NN_TORCH_SILU_NORMALIZATION,
        "tanh_normalization": E3NN_TORCH_TANH_NORMALIZATION,
        "energy_scale": tuple(float(scale_by * s) for s in np.broadcast_to(scales, len(species))),
        "energy_shift": tuple(float(scale_by * s) for s in np.broadcast_to(shifts, len(species))),
    }


def state_dict_to_nequip_params(state_dict: dict, hparams: dict, template) -> dict:
    """Map nequip tensors onto a NequIP ``params`` tree shaped like ``template``."""
    import e3nn_jax as e3nn

    from stabie_jax.models.nequip import layer_irreps

    sd = state_dict

    def get(key):
        if key not in sd:
            raise ValueError(f"nequip state_dict lacks {key}")
        return sd[key]

    n_species = len(hparams["species"])
    sh = e3nn.Irreps.spherical_harmonics(hparams["sh_lmax"])
    params = {}
    if "bessel_weights" in template:
        params["bessel_weights"] = get(_F + "radial_basis.basis.bessel_weights").astype(np.float32)
    emb = hparams["embedding_irreps"]
    params["chemical_embedding"] = _fill(
        template["chemical_embedding"],
        _linear_matrices(
            get(_F + "chemical_embedding.linear.weight"), f"{n_species}x0e", emb, "emb"
        ),
        "chemical_embedding",
    )
    x_in = e3nn.Irreps(emb)
    for k in range(hparams["num_layers"]):
        scalars, gates, gated = layer_irreps(x_in, sh, hparams["hidden_irreps"])
        conv_out = e3nn.Irreps(scalars + gates + gated)
        mid = [
            (mul, ir_out)
            for mul, ir_in in x_in
            for _, ir_sh in sh
            for ir_out in ir_in * ir_sh
            if ir_out in conv_out
        ]
        conv_out_t, mid_t = _torch_sorted(conv_out), _torch_sorted(e3nn.Irreps(mid))
        p = _F + f"layer{k}_convnet.conv."
        name = f"layer{k}_convnet_conv"
        t = template[name]
        n_fc = len(hparams["radial_features"]) + 1
        params[name] = {
            "fc": {
                f"layer{i}": get(p + f"fc.layer{i}.weight").astype(np.float32) for i in range(n_fc)
            },
            "linear_1": _fill(
                t["linear_1"], _linear_matrices(get(p + "linear_1.weight"), x_in, x_in, p), name
            ),
            "linear_2": _fill(
                t["linear_2"],
                _linear_matrices(get(p + "linear_2.weight"), mid_t, conv_out_t, p),
                name,
            ),
        }
        if hparams["use_self_connection"]:
            params[name]["sc"] = _fill(
                t["sc"],
                _self_connection_matrices(get(p + "sc.weight"), x_in, n_species, conv_out_t, p),
                name,
            )
        x_in = e3nn.Irreps(scalars + gated)
    hid = hparams["output_hidden_irreps"]
    params["conv_to_output_hidden"] = _fill(
        template["conv_to_output_hidden"],
        _linear_matrices(get(_F + "conv_to_output_hidden.linear.weight"), x_in, hid, "hidden"),
        "conv_to_output_hidden",
    )
    params["output_hidden_to_scalar"] = _fill(
        template["output_hidden_to_scalar"],
        _linear_matrices(get(_F + "output_hidden_to_scalar.linear.weight"), hid, "1x0e", "out"),
        "output_hidden_to_scalar",
    )
    return params


def import_nequip_checkpoint(path, config_path, atomic_numbers):
    """Load a nequip 0.5 checkpoint (``best_model.pth`` + ``config.yaml``) as a stabie_jax NequIP.

    Args:
      path: the ``.pth`` state dict (keys ``model.…`` as MDsim saves them, or without prefix).
      config_path: nequip's ``config.yaml`` of the run.
      atomic_numbers: ``[N]`` atomic numbers of the system to simulate (in its atom order).

    Returns:
      ``(potential, params, metadata)`` like
      :func:`stabie_jax.interop.torch_schnet.import_torch_checkpoint` (energies eV, forces eV/Å;
      the per-species scale/shift are module constants).
    """
    import jax
    import jax.numpy as jnp
    from jax_md import space

    from stabie_jax.checkpoint import ModelMetadata, make_model_potential
    from stabie_jax.interop.torch_schnet import _torch
    from stabie_jax.models.registry import build_model, init_params

    torch = _torch()
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    blob = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(blob, dict):
        raise ValueError(f"{path}: expected a state_dict, got {type(blob).__name__}")
    # MDsim saves nequip's RescaleOutput under one more "model." than nequip itself does.
    wrapped = any(k.startswith("model.model.") for k in blob)
    sd = {
        (k[len("model.") :] if wrapped else k): t.detach().cpu().to(torch.float64).numpy()
        for k, t in blob.items()
    }
    config = _read_config(config_path)
    hparams = nequip_hparams(config, sd)
    module = build_model("nequip", **hparams)
    z = tuple(int(a) for a in np.asarray(atomic_numbers).reshape(-1))
    template = init_params(module, z, jax.random.key(0))
    params = state_dict_to_nequip_params(sd, hparams, template)
    if jax.tree_util.tree_structure(params) != jax.tree_util.tree_structure(template):
        raise ValueError(f"{path}: mapped parameters do not match the NequIP module's tree")
    params = jax.tree_util.tree_map(jnp.asarray, params)
    metadata = ModelMetadata(
        kind="nequip",
        hparams=hparams,
        atomic_numbers=z,
        cutoff_angstrom=hparams["cutoff"],
        extra={
            "imported_from": {
                "format": "nequip 0.5 state_dict",
                "file": path.name,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "nequip_version": config.get("nequip_version"),
                "e3nn_version": config.get("e3nn_version"),
            }
        },
    )
    return make_model_potential(module, metadata, space.free()[0]), params, metadata
