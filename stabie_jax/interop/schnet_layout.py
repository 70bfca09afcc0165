"""The torch_geometric SchNet <-> stabie_jax SchNet layout: sizes, names and weights.

Pure numpy (no torch): the hyperparameters of a torch_geometric ``SchNet`` plus MDsim's energy
normaliser (:class:`SchNetConfig`), the state-dict names and shapes such a model has (checked
before anything is converted), and the conversion of its tensors to and from the ``params`` of
:class:`stabie_jax.models.schnet.SchNet`. Reading and writing the ``.pt`` files is
:mod:`stabie_jax.interop.torch_schnet`.

Mapping onto :class:`stabie_jax.models.schnet.SchNet` (torch ``Linear.weight`` is ``[out, in]``,
a Flax ``Dense`` kernel is ``[in, out]``, so every weight matrix is transposed):

==============================================  ==================================================
torch_geometric                                 stabie_jax params
==============================================  ==================================================
``embedding.weight`` [100, H]                   ``embedding/embedding`` [100, H]
``interactions.{i}.mlp.0.{weight,bias}``        ``interaction_{i}/filter_0/{kernel,bias}``
``interactions.{i}.mlp.2.{weight,bias}``        ``interaction_{i}/filter_1/{kernel,bias}``
``interactions.{i}.conv.lin1.weight``           ``interaction_{i}/conv_in/kernel`` (no bias)
``interactions.{i}.conv.lin2.{weight,bias}``    ``interaction_{i}/conv_out/{kernel,bias}``
``interactions.{i}.lin.{weight,bias}``          ``interaction_{i}/dense/{kernel,bias}``
``lin1.{weight,bias}`` / ``lin2.{weight,bias}``  ``readout_0`` / ``readout_1``
==============================================  ==================================================

``interactions.{i}.conv.nn.*`` is the same tensor as ``interactions.{i}.mlp.*`` (torch_geometric
shares the filter network between the block and its convolution); the importer checks that
they are equal. ``distance_expansion.offset`` is the fixed grid ``linspace(0, cutoff, G)`` and
``atomic_mass`` an unused buffer; both are checked, not imported.

:func:`schnet_hparams` gives the SchNet module's keyword arguments for a :class:`SchNetConfig`;
:func:`config_from_metadata` goes back from a stabie_jax model checkpoint's metadata (MDsim's
normaliser: std and *total* mean in eV).

Examples:
  >>> import numpy as np
  >>> cfg = SchNetConfig(hidden_channels=8, num_filters=4, num_interactions=1, num_gaussians=5)
  >>> zeros = {name: np.zeros(shape) for name, shape in _expected_shapes(cfg).items()}
  >>> params = state_dict_to_params(zeros, cfg)
  >>> params["interaction_0"]["conv_in"]["kernel"].shape  # torch [out, in] -> Flax [in, out]
  (8, 4)
  >>> extra = set(params_to_state_dict(params, cfg)) - set(zeros)  # shared filter net + grid
  >>> len(extra), "distance_expansion.offset" in extra
  (5, True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

__all__ = [
    "SchNetConfig",
    "config_from_metadata",
    "params_to_state_dict",
    "schnet_hparams",
    "state_dict_to_params",
]


@dataclasses.dataclass(frozen=True)
class SchNetConfig:
    """Hyperparameters of a torch_geometric SchNet plus MDsim's energy normaliser.

    Attributes:
      hidden_channels: atom feature width ``H``.
      num_filters: filter width ``F``.
      num_interactions: number of interaction blocks.
      num_gaussians: number of Gaussians ``G`` on ``[0, cutoff]``.
      cutoff: cutoff radius, Å.
      energy_scale: normaliser std, eV per model output unit.
      energy_shift: normaliser mean, eV per molecule (total, not per atom).
      gaussian_offsets: the Gaussian centres (Å) exactly as stored in the checkpoint's
        ``distance_expansion.offset`` buffer; ``None`` for float32 ``linspace(0, cutoff, G)``.
        (torch and numpy round ``linspace`` differently in the last bit of float32, which moves
        float64 energies by ~1e-6 eV, so the stored values are carried over.)
    """

    hidden_channels: int = 64
    num_filters: int = 64
    num_interactions: int = 6
    num_gaussians: int = 25
    cutoff: float = 5.0
    energy_scale: float = 1.0
    energy_shift: float = 0.0
    gaussian_offsets: tuple[float, ...] | None = None


def _expected_shapes(config: SchNetConfig) -> dict[str, tuple[int, ...]]:
    h, f, g = config.hidden_channels, config.num_filters, config.num_gaussians
    shapes = {"embedding.weight": (100, h)}
    for i in range(config.num_interactions):
        p = f"interactions.{i}."
        shapes.update(
            {
                p + "mlp.0.weight": (f, g),
                p + "mlp.0.bias": (f,),
                p + "mlp.2.weight": (f, f),
                p + "mlp.2.bias": (f,),
                p + "conv.lin1.weight": (f, h),
                p + "conv.lin2.weight": (h, f),
                p + "conv.lin2.bias": (h,),
                p + "lin.weight": (h, h),
                p + "lin.bias": (h,),
            }
        )
    shapes.update(
        {
            "lin1.weight": (h // 2, h),
            "lin1.bias": (h // 2,),
            "lin2.weight": (1, h // 2),
            "lin2.bias": (1,),
        }
    )
    return shapes


def _check_state_dict(state_dict: Mapping[str, np.ndarray], config: SchNetConfig, path) -> None:
    expected = _expected_shapes(config)
    missing = sorted(set(expected) - set(state_dict))
    if missing:
        raise ValueError(
            f"{path}: state_dict lacks {missing[:5]}{'...' if len(missing) > 5 else ''}"
        )
    for name, shape in expected.items():
        if tuple(state_dict[name].shape) != shape:
            raise ValueError(
                f"{path}: {name} has shape {tuple(state_dict[name].shape)}, expected {shape} "
                f"for {config}"
            )
    known = set(expected) | {"distance_expansion.offset", "atomic_mass"}
    for i in range(config.num_interactions):
        for layer in ("0.weight", "0.bias", "2.weight", "2.bias"):
            shared = f"interactions.{i}.conv.nn.{layer}"
            known.add(shared)
            if shared in state_dict and not np.array_equal(
                state_dict[shared], state_dict[f"interactions.{i}.mlp.{layer}"]
            ):
                raise ValueError(
                    f"{path}: {shared} differs from interactions.{i}.mlp.{layer}; torch_geometric "
                    "shares them, so this is not a torch_geometric SchNet"
                )
    unknown = sorted(set(state_dict) - known)
    if unknown:
        raise ValueError(
            f"{path}: state_dict has tensors this importer does not understand: {unknown[:5]} "
            "(atomref/dipole/other SchNet variants are not supported)"
        )
    if "distance_expansion.offset" in state_dict:
        offsets = state_dict["distance_expansion.offset"]
        grid = np.linspace(0.0, config.cutoff, config.num_gaussians)
        if offsets.shape != grid.shape or not np.allclose(offsets, grid, rtol=0, atol=1e-6):
            raise ValueError(
                f"{path}: distance_expansion.offset is not linspace(0, {config.cutoff}, "
                f"{config.num_gaussians}); custom Gaussian grids are not supported"
            )


def _dense(kernel_from_weight: np.ndarray, bias: np.ndarray | None, dtype) -> dict:
    layer = {"kernel": np.asarray(kernel_from_weight, dtype=np.float64).T.astype(dtype)}
    if bias is not None:
        layer["bias"] = np.asarray(bias, dtype=np.float64).astype(dtype)
    return layer


def state_dict_to_params(
    state_dict: Mapping[str, np.ndarray], config: SchNetConfig, dtype=np.float32
) -> dict:
    """torch_geometric SchNet tensors -> stabie_jax SchNet ``params`` (Flax collection).

    Args:
      state_dict: ``{torch_geometric name: array}`` without the ``module.`` prefix.
      config: hyperparameters (sizes are checked).
      dtype: numpy dtype of the returned leaves (the checkpoints are float32).

    Returns:
      A nested dict with the structure of ``SchNet(...).init(...)["params"]``.
    """
    _check_state_dict(state_dict, config, "state_dict")
    sd = state_dict
    params: dict = {"embedding": {"embedding": np.asarray(sd["embedding.weight"]).astype(dtype)}}
    for i in range(config.num_interactions):
        p = f"interactions.{i}."
        params[f"interaction_{i}"] = {
            "filter_0": _dense(sd[p + "mlp.0.weight"], sd[p + "mlp.0.bias"], dtype),
            "filter_1": _dense(sd[p + "mlp.2.weight"], sd[p + "mlp.2.bias"], dtype),
            "conv_in": _dense(sd[p + "conv.lin1.weight"], None, dtype),
            "conv_out": _dense(sd[p + "conv.lin2.weight"], sd[p + "conv.lin2.bias"], dtype),
            "dense": _dense(sd[p + "lin.weight"], sd[p + "lin.bias"], dtype),
        }
    params["readout_0"] = _dense(sd["lin1.weight"], sd["lin1.bias"], dtype)
    params["readout_1"] = _dense(sd["lin2.weight"], sd["lin2.bias"], dtype)
    return params


def params_to_state_dict(params, config: SchNetConfig) -> dict[str, np.ndarray]:
    """stabie_jax SchNet ``params`` -> torch_geometric SchNet tensors (inverse of the import).

    The filter network is written under both ``interactions.{i}.mlp`` and
    ``interactions.{i}.conv.nn`` (torch_geometric shares it), and the Gaussian centres as the
    ``distance_expansion.offset`` buffer, so ``torch_geometric.nn.SchNet.load_state_dict``
    accepts the result with ``strict=True``.

    Args:
      params: Flax ``params`` of :class:`stabie_jax.models.schnet.SchNet` (leaves: any arrays).
      config: hyperparameters.

    Returns:
      ``{name: float32 numpy array}`` (no ``module.`` prefix).
    """

    def weight(layer) -> np.ndarray:
        return np.asarray(layer["kernel"], dtype=np.float32).T.copy()

    def bias(layer) -> np.ndarray:
        return np.asarray(layer["bias"], dtype=np.float32).copy()

    try:
        sd = {"embedding.weight": np.asarray(params["embedding"]["embedding"], dtype=np.float32)}
        sd["distance_expansion.offset"] = _offsets(config).astype(np.float32)
        for i in range(config.num_interactions):
            block = params[f"interaction_{i}"]
            p = f"interactions.{i}."
            for torch_name, flax_name in (("0", "filter_0"), ("2", "filter_1")):
                for prefix in ("mlp.", "conv.nn."):
                    sd[p + prefix + torch_name + ".weight"] = weight(block[flax_name])
                    sd[p + prefix + torch_name + ".bias"] = bias(block[flax_name])
            sd[p + "conv.lin1.weight"] = weight(block["conv_in"])
            sd[p + "conv.lin2.weight"] = weight(block["conv_out"])
            sd[p + "conv.lin2.bias"] = bias(block["conv_out"])
            sd[p + "lin.weight"] = weight(block["dense"])
            sd[p + "lin.bias"] = bias(block["dense"])
        sd["lin1.weight"] = weight(params["readout_0"])
        sd["lin1.bias"] = bias(params["readout_0"])
        sd["lin2.weight"] = weight(params["readout_1"])
        sd["lin2.bias"] = bias(params["readout_1"])
    except KeyError as err:
        raise ValueError(
            f"params lack {err}: not a stabie_jax SchNet with {config.num_interactions} "
            "interactions"
        ) from err
    _check_state_dict(sd, config, "params")
    return sd


def _offsets(config: SchNetConfig) -> np.ndarray:
    from stabie_jax.models.radial import gaussian_offsets

    if config.gaussian_offsets is not None:
        return np.asarray(config.gaussian_offsets, dtype=np.float64)
    return gaussian_offsets(0.0, config.cutoff, config.num_gaussians)


def schnet_hparams(config: SchNetConfig) -> dict:
    """Keyword arguments of :class:`stabie_jax.models.schnet.SchNet` for ``config``.

    Sizes, cutoff, Gaussian grid and the undirected (each pair once) edge list; the energy
    normaliser (``energy_scale``, ``energy_shift`` per atom) depends on the molecule and is added by
    :func:`import_torch_checkpoint`.
    """
    return {
        "hidden": config.hidden_channels,
        "num_filters": config.num_filters,
        "num_interactions": config.num_interactions,
        "num_gaussians": config.num_gaussians,
        "cutoff": config.cutoff,
        "gaussian_offsets": (
            None if config.gaussian_offsets is None else tuple(config.gaussian_offsets)
        ),
        # Same energies as torch_geometric's directed radius graph, half the filter work.
        "undirected_edges": True,
    }


def config_from_metadata(metadata) -> SchNetConfig:
    """:class:`SchNetConfig` of a stabie_jax SchNet model checkpoint.

    Needs a *total* energy shift: the per-species shifts are summed over the metadata's atoms.

    Raises:
      ValueError: not a SchNet, or a per-species energy scale the MDsim format cannot express.
    """
    if metadata.kind != "schnet":
        raise ValueError(f"model kind is {metadata.kind!r}; only 'schnet' exports to PyTorch")
    hp = metadata.hparams
    if np.ndim(hp.get("energy_scale", 1.0)) or np.ndim(hp.get("energy_shift", 0.0)):
        raise ValueError("per-species SchNet energy_scale/energy_shift fields cannot be exported")
    # E = s_meta (sum_i (s_mod u_i + shift_mod)) + sum_i mu_Zi  (module inside, metadata outside)
    module_scale = float(hp.get("energy_scale", 1.0))
    n_atoms = len(metadata.atomic_numbers)
    shift = sum(float(metadata.energy_shift.get(int(z), 0.0)) for z in metadata.atomic_numbers)
    shift += float(metadata.energy_scale) * float(hp.get("energy_shift", 0.0)) * n_atoms
    return SchNetConfig(
        hidden_channels=int(hp.get("hidden", 64)),
        num_filters=int(hp.get("num_filters", 64)),
        num_interactions=int(hp.get("num_interactions", 6)),
        num_gaussians=int(hp.get("num_gaussians", 25)),
        cutoff=float(hp.get("cutoff", 5.0)),
        energy_scale=float(metadata.energy_scale) * module_scale,
        energy_shift=shift,
        gaussian_offsets=(
            None if hp.get("gaussian_offsets") is None else tuple(hp["gaussian_offsets"])
        ),
    )
