"""Build a model from ``(kind, hyperparameters)``, the form stored in model checkpoints.

A model checkpoint records only a *kind* string (``"schnet"``, ``"nequip"``, ``"gemnet_t"``)
and a JSON dict of the Flax module's fields. :func:`build_model` turns that pair back into the
module. The built-in kinds are imported lazily by module path, so importing this registry never
imports e3nn-jax or any model that is not used; extra kinds (e.g. tiny test models) are added
with :func:`register_model`.

Examples:
  >>> module = build_model("schnet", cutoff=5.0, num_interactions=3)
  >>> hparams = model_hparams(module)                     # JSON-ready dict of fields
  >>> hparams["cutoff"], hparams["num_interactions"]
  (5.0, 3)
  >>> build_model("schnet", **hparams) == module
  True
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax_md import space

from stabie_jax.models.graph import build_graph, dense_edges

__all__ = [
    "abstract_params",
    "available_models",
    "build_model",
    "example_graph",
    "frames_fault_check",
    "init_params",
    "model_factory",
    "model_hparams",
    "register_model",
    "replica_fault_check",
]

_BUILTIN: dict[str, tuple[str, str]] = {
    "schnet": ("stabie_jax.models.schnet", "SchNet"),
    "nequip": ("stabie_jax.models.nequip", "NequIP"),
    "gemnet_t": ("stabie_jax.models.gemnet_t", "GemNetT"),
}
_REGISTERED: dict[str, Callable] = {}


def register_model(kind: str, factory: Callable) -> None:
    """Make ``build_model(kind, **hparams)`` call ``factory(**hparams)``.

    Args:
      kind: a new name (built-in kinds cannot be overridden).
      factory: usually a Flax module class.
    """
    if kind in _BUILTIN:
        raise ValueError(f"model kind {kind!r} is built in and cannot be re-registered")
    _REGISTERED[kind] = factory


def available_models() -> list[str]:
    """All kind names known to :func:`build_model` (built-in ones may still fail to import)."""
    return sorted({*_BUILTIN, *_REGISTERED})


def model_factory(kind: str) -> Callable:
    """The class (or factory) registered for ``kind``, importing a built-in module on demand."""
    if kind in _REGISTERED:
        return _REGISTERED[kind]
    if kind not in _BUILTIN:
        raise ValueError(
            f"unknown model kind {kind!r}; known kinds: {available_models()} "
            "(register new ones with stabie_jax.models.registry.register_model)"
        )
    module_path, class_name = _BUILTIN[kind]
    try:
        module = importlib.import_module(module_path)
    except ImportError as err:
        raise ValueError(f"model kind {kind!r} needs {module_path}, which failed: {err}") from err
    return getattr(module, class_name)


def build_model(kind: str, **hparams):
    """Construct the Flax module of ``kind`` with hyperparameters ``hparams``.

    Raises:
      ValueError: for an unknown kind or hyperparameters the module does not accept.
    """
    factory = model_factory(kind)
    # JSON has no tuples; module fields that are sequences must stay hashable.
    hparams = {k: tuple(v) if isinstance(v, list) else v for k, v in hparams.items()}
    try:
        return factory(**hparams)
    except TypeError as err:
        raise ValueError(f"bad hyperparameters for model kind {kind!r}: {err}") from err


def model_hparams(module) -> dict:
    """JSON-ready dict of a Flax module's dataclass fields (without ``parent``/``name``).

    Tuples become lists; the result round-trips through :func:`build_model` for modules whose
    fields are numbers, strings, booleans, or sequences of those.
    """
    out = {}
    for field in dataclasses.fields(module):
        if field.name in ("parent", "name"):
            continue
        value = getattr(module, field.name)
        if isinstance(value, tuple):
            value = list(value)
        out[field.name] = value
    return out


def example_graph(atomic_numbers, spacing: float = 1.5):
    """A dense free-space graph of the right size for initialising a model.

    Atoms sit on a cubic grid ``spacing`` Å apart (all pairs within a few Å).

    Returns:
      ``(atomic_numbers [N] int32, Graph)``.
    """
    z = jnp.asarray(np.asarray(atomic_numbers), dtype=jnp.int32)
    n = int(z.shape[0])
    side = int(np.ceil(n ** (1.0 / 3.0)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    positions = jnp.asarray(spacing * grid[:n], dtype=jnp.float32)
    senders, receivers = dense_edges(n)
    displacement_fn, _ = space.free()
    return z, build_graph(displacement_fn, positions, senders, receivers)


def init_params(module, atomic_numbers, key: jax.Array):
    """Initial Flax ``params`` collection of ``module`` for a system with ``atomic_numbers``."""
    z, graph = example_graph(atomic_numbers)
    return jax.jit(module.init)(key, z, graph)["params"]


def abstract_params(module, atomic_numbers):
    """``jax.ShapeDtypeStruct`` tree of ``module``'s params (no computation, for restoring)."""
    return jax.eval_shape(lambda k: init_params(module, atomic_numbers, k), jax.random.key(0))


def replica_fault_check(module, displacement_fn, dt: float, masses) -> Callable | None:
    """The model's host check for MD replicas that turned non-finite, or None.

    Models that produce NaN on purpose when a static buffer is exhausted return a check that
    raises with the fix (GemNet-T: :func:`~stabie_jax.models.gemnet_table.\
make_replica_overflow_check`); models that cannot overflow return None. Pass the result to
    :func:`stabie_jax.md.with_nonfinite_check`.

    Args:
      module: the Flax module.
      displacement_fn: JAX-MD displacement of the simulated system.
      dt: timestep, internal time units (:attr:`stabie_jax.md.Simulator.dt`).
      masses: ``[N]`` amu (:attr:`stabie_jax.md.Simulator.masses`).
    """
    capacity = getattr(module, "neighbor_capacity", None)
    if capacity is None:
        return None
    from stabie_jax.models.gemnet_table import make_replica_overflow_check

    return make_replica_overflow_check(
        displacement_fn, float(module.cutoff), int(capacity), float(dt), masses
    )


def frames_fault_check(module, displacement_fn) -> Callable | None:
    """The model's host check of fixed frames before training on them, or None.

    Models with a static neighbour buffer (GemNet-T) return
    :func:`~stabie_jax.models.gemnet_table.make_frames_overflow_check` for their capacity,
    raising with the value to set; models that cannot overflow return None. Pass the result
    to :func:`stabie_jax.pretrain.pretrain` as ``fault_check``.
    """
    capacity = getattr(module, "neighbor_capacity", None)
    if capacity is None:
        return None
    from stabie_jax.models.gemnet_table import make_frames_overflow_check

    return make_frames_overflow_check(
        displacement_fn,
        float(module.cutoff),
        int(capacity),
        fix="--config.model.hparams.neighbor_capacity={n} (GemNetT(..., neighbor_capacity={n}))",
    )
