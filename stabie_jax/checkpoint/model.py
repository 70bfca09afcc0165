"""Model checkpoints: a directory with ``model.json`` (:class:`ModelMetadata`: kind,
hyperparameters, species, cutoff, energy scale and shift) and ``params/`` (orbax); saved after
pretraining and StABlE, loaded by the entry points and the ASE calculator."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import orbax.checkpoint as ocp

from stabie_jax.checkpoint.training import (
    _CHECKSUM_KEY,
    _keep_nonfinite,
    _on_this_device,
    state_checksum,
)
from stabie_jax.models.potential import Potential, make_potential
from stabie_jax.models.registry import abstract_params, build_model
from stabie_jax.models.scale_shift import scale_shift_potential

__all__ = [
    "LoadedModel",
    "MODEL_FORMAT_VERSION",
    "MODEL_JSON",
    "MODEL_PARAMS",
    "ModelMetadata",
    "load_model_checkpoint",
    "make_model_potential",
    "model_params_checksum",
    "read_model_metadata",
    "save_model_checkpoint",
]


MODEL_JSON = "model.json"


MODEL_PARAMS = "params"


MODEL_FORMAT_VERSION = 1


class ModelMetadata(NamedTuple):
    """Everything besides the parameters needed to rebuild a trained potential.

    Attributes:
      kind: model kind for :func:`stabie_jax.models.registry.build_model` (e.g. ``"schnet"``).
      hparams: keyword arguments of the model constructor (JSON-able).
      atomic_numbers: ``[N]`` atomic numbers of the system it was trained on.
      cutoff_angstrom: interaction cutoff of the model, Å (sizes neighbour lists).
      energy_scale: ``s`` in ``e_i = s·u_i + μ_Z``, eV per model unit.
      energy_shift: ``{Z: μ_Z}`` per-species shifts, eV.
      extra: free-form JSON (training report, dataset, versions, ...).
    """

    kind: str
    hparams: dict
    atomic_numbers: tuple[int, ...]
    cutoff_angstrom: float
    energy_scale: float = 1.0
    energy_shift: dict = {}
    extra: dict = {}

    def to_json(self) -> dict:
        """JSON-ready dict (the content of ``model.json`` minus the format version)."""
        return _keep_nonfinite(
            {
                "kind": self.kind,
                "hparams": self.hparams,
                "atomic_numbers": [int(z) for z in self.atomic_numbers],
                "cutoff_angstrom": float(self.cutoff_angstrom),
                "energy_scale": float(self.energy_scale),
                "energy_shift": {str(int(z)): float(v) for z, v in self.energy_shift.items()},
                "extra": self.extra,
            }
        )

    @classmethod
    def from_json(cls, blob: Mapping, source: str = "model.json") -> ModelMetadata:
        """Inverse of :meth:`to_json`; ``source`` names the file in error messages."""
        required = ("kind", "hparams", "atomic_numbers", "cutoff_angstrom")
        missing = [k for k in required if k not in blob]
        if missing:
            raise ValueError(f"{source} lacks required keys {missing}; re-save the model")
        return cls(
            kind=str(blob["kind"]),
            hparams=dict(blob["hparams"]),
            atomic_numbers=tuple(int(z) for z in blob["atomic_numbers"]),
            cutoff_angstrom=float(blob["cutoff_angstrom"]),
            energy_scale=float(blob.get("energy_scale", 1.0)),
            energy_shift={int(z): float(v) for z, v in blob.get("energy_shift", {}).items()},
            extra=dict(blob.get("extra", {})),
        )


class LoadedModel(NamedTuple):
    """A model checkpoint in memory: ``module`` (Flax), ``params``, ``metadata``."""

    module: Any
    params: Any
    metadata: ModelMetadata


def save_model_checkpoint(
    directory, params, metadata: ModelMetadata, *, overwrite: bool = False
) -> pathlib.Path:
    """Write ``model.json`` and ``params/`` under ``directory`` (synchronously).

    Args:
      directory: target directory (created).
      params: Flax ``params`` collection of ``build_model(metadata.kind, **metadata.hparams)``.
      metadata: see :class:`ModelMetadata`.
      overwrite: replace an existing model checkpoint.

    Returns:
      The absolute directory.
    """
    path = pathlib.Path(directory).expanduser().resolve()
    if (path / MODEL_JSON).exists() and not overwrite:
        raise ValueError(f"a model checkpoint already exists in {path}; pass overwrite=True")
    path.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path / MODEL_PARAMS, params, force=True)
        checkpointer.wait_until_finished()
    blob = {"format_version": MODEL_FORMAT_VERSION, **metadata.to_json()}
    blob["extra"][_CHECKSUM_KEY] = state_checksum(params)
    tmp = path / (MODEL_JSON + ".tmp")
    tmp.write_text(json.dumps(blob, indent=2, sort_keys=True))
    os.replace(tmp, path / MODEL_JSON)
    return path


def read_model_metadata(directory) -> ModelMetadata:
    """Parse ``model.json`` of a model checkpoint without loading the parameters."""
    path = pathlib.Path(directory).expanduser().resolve()
    json_path = path / MODEL_JSON
    if not json_path.is_file():
        raise ValueError(
            f"{json_path} not found: {path} is not a model checkpoint (write one with "
            "stabie_jax.checkpoint.save_model_checkpoint, e.g. by running the pretrain stage)"
        )
    try:
        blob = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{json_path} is not valid JSON ({err}): the model file is truncated or corrupt; "
            "re-save the model (rerun its stage with --config.overwrite_stages) or restore it"
        ) from err
    if not isinstance(blob, dict):
        raise ValueError(f"{json_path} holds a {type(blob).__name__}, not a model description")
    version = blob.get("format_version")
    if version != MODEL_FORMAT_VERSION:
        raise ValueError(
            f"{json_path} has format_version {version}, expected {MODEL_FORMAT_VERSION}"
        )
    return ModelMetadata.from_json(blob, source=os.fspath(json_path))


def model_params_checksum(directory) -> str | None:
    """sha256 of the parameters of the model checkpoint in ``directory`` (from its model.json;
    None for a model saved without one)."""
    return read_model_metadata(directory).extra.get(_CHECKSUM_KEY)


def load_model_checkpoint(directory) -> LoadedModel:
    """Load a model checkpoint: ``(module, params, metadata)``.

    The params are restored into the abstract tree of ``module.init`` (shapes checked) and
    verified against the checksum in ``model.json``.

    Raises:
      ValueError: missing directory/files, unknown model kind, or corrupt parameters.
    """
    metadata = read_model_metadata(directory)
    path = pathlib.Path(directory).expanduser().resolve()
    module = build_model(metadata.kind, **metadata.hparams)
    abstract = _on_this_device(abstract_params(module, metadata.atomic_numbers))
    with ocp.StandardCheckpointer() as checkpointer:
        try:
            params = checkpointer.restore(path / MODEL_PARAMS, abstract)
        except Exception as err:
            raise ValueError(f"cannot read parameters in {path / MODEL_PARAMS}: {err}") from err
    expected = metadata.extra.get(_CHECKSUM_KEY)
    if expected is not None and state_checksum(params) != expected:
        raise ValueError(f"parameters in {path / MODEL_PARAMS} fail their checksum (corrupt)")
    extra = {k: v for k, v in metadata.extra.items() if k != _CHECKSUM_KEY}
    return LoadedModel(module, params, metadata._replace(extra=extra))


def make_model_potential(
    module, metadata: ModelMetadata, displacement_fn, *, use_neighbor_list: bool = False
) -> Potential:
    """The physical (scaled and shifted) :class:`Potential` of a checkpointed model.

    Args:
      module: the Flax module (``LoadedModel.module``).
      metadata: its :class:`ModelMetadata`.
      displacement_fn: JAX-MD displacement of the space to simulate in.
      use_neighbor_list: see :func:`stabie_jax.models.potential.make_potential`.
    """
    bare = make_potential(
        module, metadata.atomic_numbers, displacement_fn, use_neighbor_list=use_neighbor_list
    )
    return scale_shift_potential(
        bare,
        metadata.atomic_numbers,
        energy_scale=metadata.energy_scale,
        energy_shift=metadata.energy_shift,
    )
