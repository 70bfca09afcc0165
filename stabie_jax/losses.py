"""Losses: the quantum-mechanical energy/force loss L_QM and the observable loss L_obs.

**L_QM** (paper eq. 3) over a batch of reference frames ``(R_b, U_b, F_b)``:

.. math::

   L_{QM}(θ) = λ_U \\, \\overline{ℓ_U(U_b − U_θ(R_b))} + λ_F \\, \\overline{ℓ_F(F_b + ∇U_θ(R_b))}

averaged over frames (weighted by an optional mask for padded batches). Choices, matching the
authors' training codes (docs/method.md, Pretraining recipes):

* energy term ``"mse"`` (squared error, SchNet/NequIP) or ``"mae"`` (absolute error, GemNet);
  ``per_atom_energy=True`` divides the energy error by the number of atoms first (NequIP's
  per-atom energy MSE);
* force term ``"mse"``: mean over the ``3N`` components of the squared error (the paper's
  ``‖F_ref + ∇U‖²`` divided by ``3N``; the constant is absorbed in ``λ_F``), or ``"l2mae"``:
  mean over atoms of the Euclidean norm of the per-atom error (GemNet / OCP).

Energies and forces of a frame come from one ``jax.value_and_grad`` pass.

**L_obs**: ``‖⟨g⟩ − g_ref‖² = Σ_k (⟨g⟩_k − g_ref,k)²``, summed over the components of g (the
h(r) bins, the two O–H lengths). This is the loss whose gradient the authors' update follows
(their vector ``2(ḡ − g_ref)`` has no division by the number of bins; the MSE they print is only
a log). :func:`observable_loss` offers ``reduction="mean"`` as an explicitly named option: its
gradient is smaller by the number of components, so hyperparameters tuned for the sum must be
converted (:func:`stabie_jax.hyperparameters.authors_hyperparameters_to_exact`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from stabie_jax.models.potential import Potential

__all__ = [
    "ENERGY_LOSSES",
    "FORCE_LOSSES",
    "LabelledFrames",
    "NeighborIndices",
    "OBSERVABLE_REDUCTIONS",
    "QMErrors",
    "check_loss_names",
    "make_qm_loss_fn",
    "make_training_set_qm_loss",
    "observable_loss",
    "predict_energy_forces",
    "qm_errors",
    "qm_loss",
    "qm_loss_from_errors",
]

ENERGY_LOSSES = ("mse", "mae")
FORCE_LOSSES = ("mse", "l2mae")


class NeighborIndices(NamedTuple):
    """Stand-in for a JAX-MD ``partition.Sparse`` neighbour list holding only its ``idx``.

    That is all :func:`~stabie_jax.models.potential.make_potential` reads, so per-frame
    neighbour indices stored with the data can be ``vmap``-ed like any array. It carries no
    format: the indices must match the model (``OrderedSparse`` pairs for a SchNet with
    ``undirected_edges=True``, ``Sparse`` otherwise).

    Attributes:
      idx: ``[2, capacity]`` int32, (receivers, senders), padded with ``n_atoms``.
    """

    idx: jax.Array


class LabelledFrames(NamedTuple):
    """Reference frames of one system (fixed atom count and order).

    Attributes:
      positions: ``[F, N, 3]`` Å.
      energies: ``[F]`` eV.
      forces: ``[F, N, 3]`` eV/Å.
      neighbor_idx: optional ``[F, 2, capacity]`` sparse neighbour indices of each frame, for
        potentials built with ``use_neighbor_list=True``; ``None`` for dense (all-pairs) ones.
    """

    positions: jax.Array
    energies: jax.Array
    forces: jax.Array
    neighbor_idx: jax.Array | None = None

    @classmethod
    def from_dataset(cls, dataset) -> LabelledFrames:
        """float32 device copies of a dataset's ``positions``, ``energies`` and ``forces``
        (a :class:`stabie_jax.data.Dataset` or anything with those arrays; eV, Å)."""
        return cls(
            jnp.asarray(dataset.positions, jnp.float32),
            jnp.asarray(dataset.energies, jnp.float32),
            jnp.asarray(dataset.forces, jnp.float32),
        )


class QMErrors(NamedTuple):
    """Per-frame prediction errors, ``prediction − reference``.

    Attributes:
      energy: ``[F]`` eV.
      forces: ``[F, N, 3]`` eV/Å.
    """

    energy: jax.Array
    forces: jax.Array


def predict_energy_forces(potential: Potential, params, positions, neighbor=None):
    """Energy and forces of one frame from a single backward pass.

    Args:
      potential: a :class:`Potential`.
      params: its parameters.
      positions: ``[N, 3]`` Å.
      neighbor: optional JAX-MD neighbour list.

    Returns:
      ``(energy [] eV, forces [N, 3] eV/Å)``.
    """
    energy, grad = jax.value_and_grad(potential.energy_fn, argnums=1)(params, positions, neighbor)
    return energy, -grad


def qm_errors(potential: Potential, params, frames: LabelledFrames) -> QMErrors:
    """Energy and force errors over a batch of frames (``vmap``), eV and eV/Å."""
    if frames.neighbor_idx is None:
        energy, forces = jax.vmap(lambda r: predict_energy_forces(potential, params, r))(
            frames.positions
        )
    else:
        energy, forces = jax.vmap(
            lambda r, idx: predict_energy_forces(potential, params, r, NeighborIndices(idx))
        )(frames.positions, frames.neighbor_idx)
    return QMErrors(energy - frames.energies, forces - frames.forces)


def check_loss_names(energy_loss: str, force_loss: str) -> None:
    if energy_loss not in ENERGY_LOSSES:
        raise ValueError(f"energy_loss must be one of {ENERGY_LOSSES}, got {energy_loss!r}")
    if force_loss not in FORCE_LOSSES:
        raise ValueError(f"force_loss must be one of {FORCE_LOSSES}, got {force_loss!r}")


def _safe_norm(x: jax.Array) -> jax.Array:
    sq = jnp.sum(x**2, axis=-1)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def qm_loss_from_errors(
    errors: QMErrors,
    *,
    energy_weight: float,
    force_weight: float,
    weights: jax.Array | None = None,
    per_atom_energy: bool = False,
    energy_loss: str = "mse",
    force_loss: str = "mse",
) -> jax.Array:
    """``λ_U·mean ℓ_U + λ_F·mean ℓ_F`` from errors; see the module docstring.

    Args:
      errors: :class:`QMErrors` for ``F`` frames.
      energy_weight: ``λ_U`` (1/eV² for ``"mse"``).
      force_weight: ``λ_F`` (Å²/eV² for ``"mse"``).
      weights: ``[F]`` non-negative frame weights (0 for padding); default all 1.
      per_atom_energy: divide energy errors by ``N`` first.
      energy_loss: ``"mse"`` or ``"mae"``.
      force_loss: ``"mse"`` or ``"l2mae"``.

    Returns:
      Scalar loss.
    """
    check_loss_names(energy_loss, force_loss)
    n_atoms = errors.forces.shape[-2]
    de = errors.energy / n_atoms if per_atom_energy else errors.energy
    e_term = de**2 if energy_loss == "mse" else jnp.abs(de)
    if force_loss == "mse":
        f_term = jnp.mean(errors.forces**2, axis=(-1, -2))
    else:
        f_term = jnp.mean(_safe_norm(errors.forces), axis=-1)
    if weights is None:
        weights = jnp.ones_like(e_term)
    norm = jnp.maximum(jnp.sum(weights), 1e-12)
    return (
        energy_weight * jnp.sum(weights * e_term) + force_weight * jnp.sum(weights * f_term)
    ) / norm


def qm_loss(
    potential: Potential,
    params,
    frames: LabelledFrames,
    *,
    energy_weight: float,
    force_weight: float,
    weights: jax.Array | None = None,
    per_atom_energy: bool = False,
    energy_loss: str = "mse",
    force_loss: str = "mse",
) -> jax.Array:
    """L_QM of ``params`` on a batch of frames (differentiable in ``params``).

    Examples:
      >>> kw = dict(energy_weight=0.05, force_weight=0.95)               # doctest: +SKIP
      >>> loss = qm_loss(pot, params, frames, **kw)                       # doctest: +SKIP
      >>> grads = jax.grad(lambda p: qm_loss(pot, p, frames, **kw))(params)  # doctest: +SKIP
    """
    check_loss_names(energy_loss, force_loss)
    return qm_loss_from_errors(
        qm_errors(potential, params, frames),
        energy_weight=energy_weight,
        force_weight=force_weight,
        weights=weights,
        per_atom_energy=per_atom_energy,
        energy_loss=energy_loss,
        force_loss=force_loss,
    )


def make_qm_loss_fn(
    potential: Potential,
    *,
    energy_weight: float,
    force_weight: float,
    per_atom_energy: bool = False,
    energy_loss: str = "mse",
    force_loss: str = "mse",
) -> Callable:
    """``loss_fn(params, frames, weights=None) -> (loss, QMErrors)`` with fixed settings.

    Use with ``jax.value_and_grad(loss_fn, has_aux=True)``.
    """
    check_loss_names(energy_loss, force_loss)

    def loss_fn(params, frames: LabelledFrames, weights=None):
        errors = qm_errors(potential, params, frames)
        loss = qm_loss_from_errors(
            errors,
            energy_weight=energy_weight,
            force_weight=force_weight,
            weights=weights,
            per_atom_energy=per_atom_energy,
            energy_loss=energy_loss,
            force_loss=force_loss,
        )
        return loss, errors

    return loss_fn


def make_training_set_qm_loss(
    potential: Potential,
    frames: LabelledFrames,
    *,
    batch_size: int,
    batches_per_step: int,
    energy_weight: float,
    force_weight: float,
    chunk_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> Callable:
    """``(params, key) -> L_QM``: the QM term of a StABlE step on the training frames.

    The mean of :func:`qm_loss` over batches of ``batch_size`` frames: ``batches_per_step``
    batches drawn at random (without replacement) with ``key`` in every step, or, with
    ``batches_per_step <= 0``, every whole batch of the training set in order (the authors':
    the mean over all training batches; ``key`` unused). All batches are full, so this is the
    mean of the per-frame losses over the frames of the step's batches.

    How it is computed does not change the value beyond round-off: the frames are evaluated in
    chunks of ``chunk_size`` (default ``batch_size``) with ``lax.map`` and, with a ``mesh`` of
    several devices, split evenly over its devices (``shard_map``; padding frames get weight
    0), each device summing its share's per-frame losses (``psum``). Differentiable in
    ``params`` (``jax.grad`` through the ``shard_map`` sums the devices' gradients).

    Args:
      potential: the model's :class:`~stabie_jax.models.potential.Potential`.
      frames: ``[F, ...]`` labelled training frames (eV, Å).
      batch_size: frames per batch (at most ``F``).
      batches_per_step: random batches per step, or ``<= 0`` for all ``F // batch_size``.
      energy_weight, force_weight: ``λ_U``, ``λ_F`` of :func:`qm_loss`.
      chunk_size: frames evaluated together (memory and cache use; default ``batch_size``).
      mesh: devices to split the frames over (a 1-D mesh such as the simulator's); None = one.
    """
    n = frames.positions.shape[0]
    if not 0 < batch_size <= n:
        raise ValueError(f"batch_size={batch_size} must lie in [1, {n}] (the training frames)")
    if batches_per_step > 0 and batches_per_step * batch_size > n:
        raise ValueError(
            f"batches_per_step * batch_size = {batches_per_step * batch_size} exceeds the {n} "
            "training frames (batches are drawn without replacement)"
        )
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (frames per chunk), got {chunk_size}")
    kw = dict(energy_weight=energy_weight, force_weight=force_weight)
    n_used = (n // batch_size if batches_per_step <= 0 else batches_per_step) * batch_size
    n_devices = 1 if mesh is None else int(mesh.devices.size)
    chunk = min(chunk_size or batch_size, -(-n_used // n_devices))
    n_chunks = -(-n_used // (chunk * n_devices)) * n_devices
    padded = n_chunks * chunk

    def local_sum(params, idx, weights):
        """``Σ_f w_f ℓ_f`` over ``idx [k, chunk]`` frame indices (weights ``[k, chunk]``)."""

        def chunk_sum(args):
            i, w = args
            batch = jax.tree.map(lambda x: x[i], frames)
            return qm_loss(potential, params, batch, weights=w, **kw) * jnp.sum(w)

        return jnp.sum(jax.lax.map(chunk_sum, (idx, weights)))

    summed = local_sum
    if n_devices > 1:
        axes = tuple(mesh.axis_names)
        split = jax.sharding.PartitionSpec(axes)
        summed = jax.shard_map(
            lambda p, i, w: jax.lax.psum(local_sum(p, i, w), axes),
            mesh=mesh,
            in_specs=(jax.sharding.PartitionSpec(), split, split),
            out_specs=jax.sharding.PartitionSpec(),
        )

    def frame_indices(key):
        if batches_per_step <= 0:
            return jnp.arange(n_used)
        return jax.random.choice(key, n, (n_used,), replace=False)

    def loss_fn(params, key):
        idx = jnp.zeros((padded,), jnp.int32).at[:n_used].set(frame_indices(key))
        weights = (jnp.arange(padded) < n_used).astype(frames.positions.dtype)
        total = summed(params, idx.reshape(n_chunks, chunk), weights.reshape(n_chunks, chunk))
        return total / n_used

    return loss_fn


OBSERVABLE_REDUCTIONS = ("sum", "mean")


def observable_loss(
    observable_mean: jax.Array, observable_ref: jax.Array, *, reduction: str = "sum"
) -> jax.Array:
    """``L_obs = ‖⟨g⟩ − g_ref‖²``, summed over components (default) or their mean.

    Args:
      observable_mean: ``[..., *obs_shape]`` ensemble average(s) ``⟨g⟩``; leading axes (e.g.
        minibatch means ``[n_batches, *obs_shape]``) are kept.
      observable_ref: ``[*obs_shape]`` reference ``g_ref``.
      reduction: ``"sum"`` (the squared norm) or ``"mean"`` (divided by the number of
        components).

    Returns:
      ``[...]``: one loss per leading index (a scalar for a single average).
    """
    ref_ndim = jnp.ndim(observable_ref)
    if jnp.shape(observable_mean)[jnp.ndim(observable_mean) - ref_ndim :] != jnp.shape(
        observable_ref
    ):
        raise ValueError(
            f"observable shapes differ: {observable_mean.shape} vs {observable_ref.shape}"
        )
    axes = tuple(range(jnp.ndim(observable_mean) - ref_ndim, jnp.ndim(observable_mean)))
    sq = (observable_mean - observable_ref) ** 2
    if reduction == "sum":
        return jnp.sum(sq, axis=axes)
    if reduction == "mean":
        return jnp.mean(sq, axis=axes)
    raise ValueError(f"reduction must be one of {OBSERVABLE_REDUCTIONS}, got {reduction!r}")
