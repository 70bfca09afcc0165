"""Import (and export) MDsim / torch_geometric SchNet checkpoints.

The StABlE paper's SchNet models were trained with MDsim (a fork of the Open Catalyst Project
trainer) around torch_geometric's ``SchNet``. A checkpoint is a ``torch.save`` pickle::

    {"state_dict": {"module.embedding.weight": [100, H], ...},    # DataParallel prefix
     "normalizers": {"target": {"mean": <eV>, "std": <eV>}, ...},
     "config": {"model": {"hidden_channels", "num_filters", "num_interactions",
                          "num_gaussians", "cutoff", ...},
                "dataset": {"molecule": "aspirin", ...} (or a list of such dicts), ...},
     ...}

and the energy of a structure is ``E = std * sum_i out_i + mean`` in eV (MDsim normalises the
*total* energy), forces ``F = -dE/dR`` in eV/Å.

The name mapping, the shape checks and the weight conversion (torch ``[out, in]`` weights ->
Flax ``[in, out]`` kernels) are :mod:`stabie_jax.interop.schnet_layout`; this module reads and
writes the files and builds the potential.

The normaliser goes into the SchNet module's constant fields: ``energy_scale = std`` and
``energy_shift = mean / N`` per atom for the ``N``-atom molecule, so that
``E = sum_i (std u_i + mean / N) = std sum_i u_i + mean`` exactly as in MDsim. These are Python
floats, so they are applied in the precision of the positions (float64 under x64, where the
imported model matches torch_geometric to ~1e-12 eV), and the model checkpoint's own
``energy_scale``/``energy_shift`` metadata stay at 1 and ``{}``.

:func:`export_torch_checkpoint` writes the inverse: an MDsim-style pickle that
``torch_geometric.nn.SchNet`` (and MDsim's ``SchNetWrap``) loads, so a model trained with
stabie_jax can go back to PyTorch.

torch is needed only here, at import time (``pip install stabie-jax[torch]``); the imported
model runs on JAX alone.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from stabie_jax.interop.schnet_layout import (
    SchNetConfig,
    _check_state_dict,
    config_from_metadata,
    params_to_state_dict,
    schnet_hparams,
    state_dict_to_params,
)

__all__ = [
    "MD17_ATOMIC_NUMBERS",
    "SchNetConfig",
    "TorchCheckpoint",
    "config_from_metadata",
    "export_torch_checkpoint",
    "import_torch_checkpoint",
    "params_to_state_dict",
    "read_torch_checkpoint",
    "schnet_hparams",
    "state_dict_to_params",
    "torch_geometric_reference",
]

MD17_ATOMIC_NUMBERS: dict[str, tuple[int, ...]] = {
    # Atom order of the MD17 / rMD17 aspirin files (C9H8O4), which MDsim's datasets keep.
    "aspirin": (6, 6, 6, 6, 6, 6, 6, 8, 8, 8, 6, 6, 8, 1, 1, 1, 1, 1, 1, 1, 1),
}
"""Atomic numbers (in dataset order) of the MD17 molecules whose checkpoints we have checked."""


class TorchCheckpoint(NamedTuple):
    """An MDsim checkpoint read into numpy.

    Attributes:
      state_dict: ``{name: float64 array}`` without the ``module.`` prefix.
      config: the hyperparameters and normaliser.
      molecule: dataset molecule name from the checkpoint config (``None`` if absent).
      raw_config: the checkpoint's ``config`` dict as stored.
      path: where it was read from.
    """

    state_dict: dict[str, np.ndarray]
    config: SchNetConfig
    molecule: str | None
    raw_config: dict
    path: str


def _torch():
    try:
        import torch
    except ImportError as err:  # pragma: no cover - exercised where torch is absent
        raise ImportError(
            "reading PyTorch checkpoints needs torch: pip install 'stabie-jax[torch]' "
            "(torch==2.13.0)"
        ) from err
    return torch


def _to_float(value, what: str, path) -> float:
    if hasattr(value, "item"):
        value = value.item()
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {what} is not a number: {value!r}") from err


def read_torch_checkpoint(path) -> TorchCheckpoint:
    """Read an MDsim / torch_geometric SchNet checkpoint (needs torch).

    The file is a pickle of Python objects and tensors, so it is loaded with
    ``weights_only=False``: only read checkpoints you trust.

    Args:
      path: ``.pt`` file written by MDsim (``best_checkpoint.pt``, StABlE's ``ckpt.pt``).

    Returns:
      A :class:`TorchCheckpoint`.

    Raises:
      ValueError: the file lacks ``state_dict``/``normalizers``/``config`` or the model section.
    """
    torch = _torch()
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    blob = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(blob, Mapping):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(blob).__name__}")
    missing = [k for k in ("state_dict", "normalizers", "config") if k not in blob]
    if missing:
        raise ValueError(
            f"{path}: not an MDsim checkpoint, missing keys {missing} (have {sorted(blob)})"
        )
    state_dict = {}
    for name, tensor in blob["state_dict"].items():
        key = name[len("module.") :] if name.startswith("module.") else name
        state_dict[key] = tensor.detach().cpu().to(torch.float64).numpy()

    raw_config = dict(blob["config"])
    # MDsim writes either OCP's layout (model: "schnet", model_attributes: {...}) or the
    # YAML layout (model: {...}, name optional).
    model = raw_config.get("model")
    if isinstance(model, str):
        name, model = model, raw_config.get("model_attributes")
    else:
        name = model.get("name", "schnet") if isinstance(model, Mapping) else None
    if not isinstance(model, Mapping):
        raise ValueError(
            f"{path}: config has neither a 'model' dict nor 'model_attributes' with the SchNet "
            "hyperparameters"
        )
    if name != "schnet":
        raise ValueError(f"{path}: the model is {name!r}; this importer reads 'schnet'")
    sizes = ("hidden_channels", "num_filters", "num_interactions", "num_gaussians", "cutoff")
    missing = [k for k in sizes if k not in model]
    if missing:
        raise ValueError(f"{path}: model config lacks {missing}")
    try:
        target = blob["normalizers"]["target"]
        mean = _to_float(target["mean"], "normalizers.target.mean", path)
        std = _to_float(target["std"], "normalizers.target.std", path)
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: normalizers.target.mean/std missing: {err}") from err
    grad = blob["normalizers"].get("grad_target")
    if grad is not None:
        grad_std = _to_float(grad["std"], "normalizers.grad_target.std", path)
        if not np.isclose(grad_std, std):
            raise ValueError(
                f"{path}: force normaliser std {grad_std} differs from the energy std {std}; "
                "such a model's forces are not -dE/dR of its energy and cannot be imported"
            )
    config = SchNetConfig(
        hidden_channels=int(model["hidden_channels"]),
        num_filters=int(model["num_filters"]),
        num_interactions=int(model["num_interactions"]),
        num_gaussians=int(model["num_gaussians"]),
        cutoff=float(model["cutoff"]),
        energy_scale=std,
        energy_shift=mean,
        gaussian_offsets=(
            tuple(float(x) for x in state_dict["distance_expansion.offset"])
            if "distance_expansion.offset" in state_dict
            else None
        ),
    )
    if model.get("use_pbc", False):
        raise ValueError(
            f"{path}: config.model.use_pbc is true; only free-space (molecular) SchNet "
            "checkpoints are supported"
        )
    dataset = raw_config.get("dataset")
    if isinstance(dataset, list):
        dataset = dataset[0] if dataset else None
    molecule = dataset.get("molecule") if isinstance(dataset, Mapping) else None
    _check_state_dict(state_dict, config, path)
    return TorchCheckpoint(state_dict, config, molecule, raw_config, str(path))


def torch_geometric_reference(checkpoint: TorchCheckpoint, dtype: str = "float64"):
    """The checkpoint as the original torch_geometric ``SchNet`` (needs torch_geometric).

    This is the reference the importer is tested against. Edges are all ordered pairs of one
    molecule closer than the cutoff, passed through SchNet's ``interaction_graph`` hook, so
    neither pyg-lib nor torch-cluster (needed by torch_geometric's own ``radius_graph``) is
    required; for molecules with fewer than ``max_num_neighbors = 32`` atoms within the cutoff
    (aspirin has 21 atoms) this is the same graph.

    Args:
      checkpoint: from :func:`read_torch_checkpoint`.
      dtype: ``"float64"`` or ``"float32"``.

    Returns:
      ``energy_and_forces(atomic_numbers [N], positions [N, 3] Å) -> (E eV, F [N, 3] eV/Å)``,
      numpy in and out, with MDsim's normaliser applied.
    """
    torch = _torch()
    try:
        from torch_geometric.nn import SchNet as TorchGeometricSchNet
    except ImportError as err:  # pragma: no cover - exercised where torch_geometric is absent
        raise ImportError(
            "the reference model needs torch_geometric: pip install torch_geometric"
        ) from err

    cfg = checkpoint.config
    torch_dtype = {"float64": torch.float64, "float32": torch.float32}[dtype]

    class AllPairsWithinCutoff(torch.nn.Module):
        def forward(self, pos, batch):
            with torch.no_grad():
                dist = torch.cdist(pos, pos)
                keep = (batch[:, None] == batch[None, :]) & (dist < cfg.cutoff)
                keep.fill_diagonal_(False)
                row, col = keep.nonzero(as_tuple=True)
            return torch.stack([row, col]), (pos[row] - pos[col]).norm(dim=-1)

    model = TorchGeometricSchNet(
        hidden_channels=cfg.hidden_channels,
        num_filters=cfg.num_filters,
        num_interactions=cfg.num_interactions,
        num_gaussians=cfg.num_gaussians,
        cutoff=cfg.cutoff,
        interaction_graph=AllPairsWithinCutoff(),
    )
    wanted = model.state_dict()
    tensors = {
        k: torch.as_tensor(v, dtype=wanted[k].dtype)
        for k, v in checkpoint.state_dict.items()
        if k in wanted
    }
    model.load_state_dict(tensors, strict=True)
    model = model.to(torch_dtype).eval()

    def energy_and_forces(atomic_numbers, positions):
        z = torch.as_tensor(np.asarray(atomic_numbers), dtype=torch.long)
        pos = torch.tensor(np.asarray(positions), dtype=torch_dtype, requires_grad=True)
        out = model(z, pos).sum()
        (grad,) = torch.autograd.grad(out, pos)
        energy = cfg.energy_scale * out.item() + cfg.energy_shift
        return energy, -cfg.energy_scale * grad.numpy().astype(np.float64)

    return energy_and_forces


def _resolve_atomic_numbers(atomic_numbers, ckpt: TorchCheckpoint) -> tuple[int, ...]:
    molecule, path = ckpt.molecule, ckpt.path
    dataset = ckpt.raw_config.get("dataset")
    if isinstance(dataset, list):
        dataset = dataset[0] if dataset else None
    if atomic_numbers is None and isinstance(dataset, Mapping) and "atomic_numbers" in dataset:
        atomic_numbers = dataset["atomic_numbers"]  # written by export_torch_checkpoint
    if atomic_numbers is not None:
        z = tuple(int(a) for a in np.asarray(atomic_numbers).reshape(-1))
        if not z:
            raise ValueError("atomic_numbers is empty")
        return z
    if molecule in MD17_ATOMIC_NUMBERS:
        return MD17_ATOMIC_NUMBERS[molecule]
    raise ValueError(
        f"{path}: cannot tell the atoms of molecule {molecule!r} from the checkpoint; pass "
        "atomic_numbers=[...] (in the dataset's atom order), e.g. the dataset's nuclear charges"
    )


def import_torch_checkpoint(path, atomic_numbers=None, dtype=np.float32):
    """Load an MDsim / torch_geometric SchNet checkpoint as a stabie_jax potential.

    Args:
      path: the ``.pt`` checkpoint (e.g. the StABlE paper's aspirin ``best_checkpoint.pt``).
      atomic_numbers: ``[N]`` atomic numbers of the molecule in dataset order; default taken
        from the checkpoint's ``config.dataset.molecule`` for known MD17 molecules (aspirin).
      dtype: dtype of the returned parameters (positions decide the compute precision).

    Returns:
      ``(potential, params, metadata)``: a free-space
      :class:`~stabie_jax.models.potential.Potential` (energies eV incl. the normaliser, forces
      eV/Å), the SchNet ``params`` and a :class:`stabie_jax.checkpoint.ModelMetadata`
      (write both with :func:`stabie_jax.checkpoint.save_model_checkpoint`).

    Examples:
      >>> pot, params, meta = import_torch_checkpoint("pretrained_1k.pt")   # doctest: +SKIP
      >>> pot.energy_fn(params, positions)                                  # doctest: +SKIP
    """
    import hashlib

    from jax_md import space

    from stabie_jax.checkpoint import ModelMetadata, make_model_potential
    from stabie_jax.models.registry import build_model

    ckpt = read_torch_checkpoint(path)
    z = _resolve_atomic_numbers(atomic_numbers, ckpt)
    cfg = ckpt.config
    params = state_dict_to_params(ckpt.state_dict, cfg, dtype=dtype)
    params = _to_jax(params)
    hparams = schnet_hparams(cfg)
    hparams["energy_scale"] = cfg.energy_scale
    hparams["energy_shift"] = cfg.energy_shift / len(z)
    module = build_model("schnet", **hparams)
    digest = hashlib.sha256(pathlib.Path(ckpt.path).read_bytes()).hexdigest()
    metadata = ModelMetadata(
        kind="schnet",
        hparams=hparams,
        atomic_numbers=z,
        cutoff_angstrom=cfg.cutoff,
        energy_scale=1.0,
        energy_shift={},
        extra={
            "imported_from": {
                "format": "MDsim/torch_geometric SchNet",
                "file": pathlib.Path(ckpt.path).name,
                "sha256": digest,
                "molecule": ckpt.molecule,
                "normalizer_mean_ev": cfg.energy_shift,
                "normalizer_std_ev": cfg.energy_scale,
            }
        },
    )
    potential = make_model_potential(module, metadata, space.free()[0])
    return potential, params, metadata


def _to_jax(tree):
    import jax
    import jax.numpy as jnp

    return jax.tree_util.tree_map(jnp.asarray, tree)


def export_torch_checkpoint(params, metadata, path) -> pathlib.Path:
    """Write a stabie_jax SchNet as an MDsim-style PyTorch checkpoint (needs torch).

    The file holds ``state_dict`` (``module.``-prefixed torch_geometric names), ``normalizers``
    (``target`` mean/std from the metadata's energy scale and total shift) and ``config``
    (``model`` hyperparameters), so :func:`import_torch_checkpoint` and torch_geometric's
    ``SchNet`` read it back.

    Args:
      params: SchNet ``params``.
      metadata: its :class:`stabie_jax.checkpoint.ModelMetadata`.
      path: output ``.pt`` file.

    Returns:
      The written path.
    """
    torch = _torch()
    cfg = config_from_metadata(metadata)
    sd = params_to_state_dict(params, cfg)
    blob = {
        "state_dict": {"module." + k: torch.tensor(np.array(v)) for k, v in sd.items()},
        "normalizers": {
            "target": {
                "mean": torch.tensor(cfg.energy_shift, dtype=torch.float64),
                "std": torch.tensor(cfg.energy_scale, dtype=torch.float64),
            },
            "grad_target": {
                "mean": torch.tensor(0.0, dtype=torch.float64),
                "std": torch.tensor(cfg.energy_scale, dtype=torch.float64),
            },
        },
        "config": {
            "model": {
                "name": "schnet",
                "hidden_channels": cfg.hidden_channels,
                "num_filters": cfg.num_filters,
                "num_interactions": cfg.num_interactions,
                "num_gaussians": cfg.num_gaussians,
                "cutoff": cfg.cutoff,
                "otf_graph": True,
                "use_pbc": False,
            },
            "dataset": {"molecule": None, "atomic_numbers": list(metadata.atomic_numbers)},
            "exported_by": "stabie_jax",
        },
    }
    path = pathlib.Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, path)
    return path
