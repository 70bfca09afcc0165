"""The :class:`Observable` type and the registry that a config's ``observable.kind`` names.

An observable is built for one system (:class:`ObservableSystem`: species, cell, reference
frames, temperature) with its options (the config's ``observable`` section) into a
:class:`BuiltObservable`: the function StABlE differentiates, the reference it is fitted to, the
grid it lives on, its error metric and its plot label. Pipelines look observables up by name
(:func:`get`) and use only these fields, so adding one means writing its module and one
:func:`register` call (see ``docs/architecture.md``, How to add an observable):

  >>> import jax
  >>> import jax.numpy as jnp
  >>> import numpy as np
  >>> from stabie_jax import observables
  >>> def build(system, options):  # the radius of gyration, Å
  ...     def radius(positions):  # [N, 3] -> [1]
  ...         d = positions - positions.mean(axis=0)
  ...         return jnp.sqrt(jnp.mean(jnp.sum(d**2, axis=-1)))[None]
  ...     return observables.BuiltObservable(
  ...         name="radius_of_gyration", label="R_g (Å)", grid=np.zeros(1), grid_label="",
  ...         reference=np.asarray(jnp.mean(jax.vmap(radius)(system.reference_positions), 0)),
  ...         frame_fn=radius, error_fn=observables.mean_absolute_error)
  >>> observables.register(observables.Observable("radius_of_gyration", "R_g", build))
  Observable(name='radius_of_gyration', ...)
  >>> system = observables.ObservableSystem(
  ...     np.array([1, 1]), np.array([[[0.0, 0, 0], [2.0, 0, 0]]]), temperature_kelvin=300.0)
  >>> observables.get("radius_of_gyration").build(system, {}).reference
  array([1.], dtype=float32)
  >>> observables.unregister("radius_of_gyration")

Kinds of observable (``Observable.trainable``):

* *frame* observables (trainable): ``frame_fn(positions [N, 3]) -> [K]`` of one configuration;
  their ensemble average is what the Boltzmann estimator differentiates. ``estimator`` says how:
  ``"global"`` (the whole system's energy) or ``"localized"`` (per-neighbourhood energies,
  ``neighbourhoods [M, k]`` atom indices; the frame function then returns ``[M, k - 1]``).
* *trajectory* observables (evaluation only, e.g. VACF and MSD): time correlations,
  ``trajectory_fn(x [F, ..., N, 3]) -> [K]`` with time on the first axis.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

__all__ = [
    "BuiltObservable",
    "ESTIMATORS",
    "Observable",
    "ObservableSystem",
    "get",
    "mean_absolute_error",
    "names",
    "over_frames",
    "register",
    "unregister",
]

ESTIMATORS = ("global", "localized")


class ObservableSystem(NamedTuple):
    """What a system offers its observables (Å, eV, K, fs).

    Attributes:
      atomic_numbers: ``[N]`` int.
      reference_positions: ``[F, N, 3]`` Å, canonical frames at ``reference_temperature_kelvin``
        (never the held-out test frames).
      temperature_kelvin: the temperature at which the observable is wanted (the simulation's).
      reference_energies: ``[F]`` eV, potential energies of the reference frames (reweighting
        to another temperature), or None.
      reference_temperature_kelvin: where the reference frames were sampled; None = at
        ``temperature_kelvin``.
      box: periodic box (``[3]`` or ``[3, 3]`` lattice vectors as columns, Å), None = free space.
      displacement_fn: JAX-MD displacement ``(Ra, Rb) -> Ra − Rb`` (minimum image under PBC);
        None = free space.
      neighbourhoods: ``[M, k]`` atom indices, centre first (water: O, H, H), or None.
      reference_velocities: ``[F, N, 3]`` velocities of consecutive reference frames (VACF), or
        None.
      frame_interval_fs: time between consecutive reference frames (VACF/MSD lags), fs.
    """

    atomic_numbers: np.ndarray
    reference_positions: np.ndarray
    temperature_kelvin: float
    reference_energies: np.ndarray | None = None
    reference_temperature_kelvin: float | None = None
    box: np.ndarray | None = None
    displacement_fn: Callable | None = None
    neighbourhoods: np.ndarray | None = None
    reference_velocities: np.ndarray | None = None
    frame_interval_fs: float | None = None


class BuiltObservable(NamedTuple):
    """An observable built for one system.

    Attributes:
      name: the registry name (the key of its results).
      label: the y-axis label of its plots, with units.
      grid: ``[K]`` x values (Å for distributions, ps for lags, an index otherwise).
      grid_label: the x-axis label, with units.
      reference: ``[K]`` the reference values (``[M, k − 1]`` for a localized observable), or
        None when the data hold none (e.g. a VACF from frames without velocities).
      frame_fn: ``positions [N, 3] -> [K]`` (trainable observables), else None.
      error_fn: ``(value, reference) -> {metric: float}``, host float64.
      trajectory_fn: ``x [F, ..., N, 3] -> [K]`` (trajectory observables), else None.
      estimator: ``"global"`` or ``"localized"`` (see the module docstring).
      neighbourhoods: ``[M, k]`` atom indices of a localized observable, else None.
    """

    name: str
    label: str
    grid: np.ndarray
    grid_label: str
    reference: np.ndarray | None
    frame_fn: Callable | None
    error_fn: Callable[[Any, Any], dict]
    trajectory_fn: Callable | None = None
    estimator: str = "global"
    neighbourhoods: np.ndarray | None = None

    @property
    def size(self) -> int:
        """Number of components of the observable (the sum of the summed loss runs over them)."""
        return int(np.size(self.reference)) if self.reference is not None else len(self.grid)


class Observable(NamedTuple):
    """A registered observable: a name, one line of description, and its builder.

    Attributes:
      name: what ``config.observable.kind`` says.
      description: one line for listings and error messages.
      build: ``(ObservableSystem, options: Mapping) -> BuiltObservable``; ``options`` is the
        config's ``observable`` section as a mapping (each observable documents its keys and
        defaults). Raises ``ValueError`` naming the key or data it lacks.
      trainable: a frame observable StABlE can train on (else evaluation only).
    """

    name: str
    description: str
    build: Callable[[ObservableSystem, Mapping[str, Any]], BuiltObservable]
    trainable: bool = True


_REGISTRY: dict[str, Observable] = {}


def register(observable: Observable, *, replace: bool = False) -> Observable:
    """Add ``observable`` under its name; refuses to shadow one unless ``replace``."""
    if not isinstance(observable, Observable):
        raise TypeError(f"register() takes an Observable, got {type(observable).__name__}")
    if observable.name in _REGISTRY and not replace:
        raise ValueError(
            f"an observable named {observable.name!r} is already registered; choose another "
            "name or pass replace=True"
        )
    _REGISTRY[observable.name] = observable
    return observable


def unregister(name: str) -> None:
    """Remove a registered observable (tests; a no-op for unknown names)."""
    _REGISTRY.pop(name, None)


def names(trainable: bool | None = None) -> tuple[str, ...]:
    """Registered names, sorted; only the (non-)trainable ones when ``trainable`` is given."""
    return tuple(
        sorted(n for n, o in _REGISTRY.items() if trainable is None or o.trainable == trainable)
    )


def get(name: str, *, key: str = "observable.kind", trainable: bool | None = None) -> Observable:
    """The observable registered as ``name``; a ``ValueError`` naming ``key`` and the choices.

    Args:
      name: registry name.
      key: the config key the name came from (for the message).
      trainable: when True, refuse an evaluation-only observable.
    """
    if name not in _REGISTRY:
        raise ValueError(
            f"config.{key} = {name!r} is not a registered observable; choose one of "
            f"{names(trainable)} or register yours with stabie_jax.observables.register"
        )
    observable = _REGISTRY[name]
    if trainable and not observable.trainable:
        raise ValueError(
            f"config.{key} = {name!r} is an evaluation-only observable ({observable.description}); "
            f"StABlE trains on one of {names(trainable=True)}"
        )
    return observable


def mean_absolute_error(value, reference) -> dict:
    """``{"mae": mean |value − reference|}`` in float64 (NaN when the value is NaN)."""
    a, b = np.asarray(value, np.float64), np.asarray(reference, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"observable shapes differ: {a.shape} vs {b.shape}")
    return {"mae": float(np.mean(np.abs(a - b)))}


def over_frames(frame_fn: Callable) -> Callable:
    """``positions [N, 3] -> [K]`` as ``positions [..., N, 3] -> [..., K]`` (vmapped over the
    flattened leading axes), the form :func:`stabie_jax.evaluation.evaluate_stability` takes."""

    def batched(positions):
        flat = positions.reshape((-1, *positions.shape[-2:]))
        out = jax.vmap(frame_fn)(flat)
        return out.reshape(positions.shape[:-2] + out.shape[1:])

    return batched
