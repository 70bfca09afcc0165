"""Private plumbing shared by the global and the localized Boltzmann estimators.

Sample count and mask checks, the ``where`` guard that replaces excluded samples before any user
function sees them, padding/chunking, the minibatch structure (batch id, valid counts, batch
weights), and the per-sample weights ``c_i`` of the memory-flat backward rule
``∇_θ L = ∇_θ Σ_i c_i U_θ(x_i)``. The maths and conventions (minibatches, masks, units) are in
the docstring of :mod:`stabie_jax.estimator`; :mod:`stabie_jax.estimator` and
:mod:`stabie_jax.localized_estimator` import these helpers by name.

Shapes: ``N`` samples, ``n_obs`` flattened observable components, ``n_batches = ceil(N/B)``.
Energies are eV and ``kT`` is eV.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any

# Private helpers only: nothing here is public API (import the underscored names explicitly).
__all__: list[str] = []


def _num_samples(samples: PyTree) -> int:
    leaves = jax.tree_util.tree_leaves(samples)
    if not leaves:
        raise ValueError("samples is an empty pytree; pass arrays with a leading sample axis")
    sizes = {int(jnp.shape(x)[0]) if jnp.ndim(x) else -1 for x in leaves}
    if len(sizes) != 1 or -1 in sizes:
        raise ValueError(
            "every leaf of samples needs the same leading sample axis [N, ...]; got leading "
            f"sizes {sorted(sizes)}"
        )
    return sizes.pop()


def _resolve_mask(mask, n: int) -> jax.Array:
    if mask is None:
        return jnp.ones((n,), dtype=bool)
    mask = jnp.asarray(mask)
    if mask.shape != (n,):
        raise ValueError(f"mask must have shape ({n},) to match the samples, got {mask.shape}")
    return mask.astype(bool)


def _guard(samples: PyTree, mask: jax.Array) -> PyTree:
    """Replace excluded samples by the first valid one (finite inputs for the user's fns)."""
    safe_index = jnp.argmax(mask)

    def leaf(x):
        x = jnp.asarray(x)
        safe = x[safe_index]
        if jnp.issubdtype(x.dtype, jnp.inexact):
            # If no sample is valid the "safe" one may itself be non-finite: zero it.
            safe = jnp.where(jnp.isfinite(safe), safe, jnp.zeros_like(safe))
        keep = mask.reshape((-1,) + (1,) * (x.ndim - 1))
        return jnp.where(keep, x, safe[None])

    return jax.tree_util.tree_map(leaf, samples)


def _pad_and_split(tree: PyTree, n: int, size: int) -> tuple[PyTree, int]:
    """Pad the leading axis to a multiple of ``size`` (repeating sample 0) and reshape."""
    n_groups = -(-n // size)
    padded = _pad_to(tree, n, n_groups * size)
    split = lambda x: jnp.asarray(x).reshape((n_groups, size) + jnp.shape(x)[1:])  # noqa: E731
    return jax.tree_util.tree_map(split, padded), n_groups * size - n


def _map(fn: Callable, xs: PyTree, chunk_size: int | None, mesh=None):
    """``vmap(fn)(xs)``, or ``lax.map`` over chunks so intermediates stay one chunk in size;
    with a ``mesh`` of several devices, each device maps its share of ``xs`` (padded)."""
    n = _num_samples(xs)
    if mesh is not None and mesh.devices.size > 1:
        axes = tuple(mesh.axis_names)
        padded = -(-n // mesh.devices.size) * mesh.devices.size
        split = jax.sharding.PartitionSpec(axes)
        out = jax.shard_map(
            lambda x: _map(fn, x, chunk_size),
            mesh=mesh,
            in_specs=(split,),
            out_specs=split,
            check_vma=False,  # samples are independent; not differentiated
        )(_pad_to(xs, n, padded))
        return jax.tree_util.tree_map(lambda a: a[:n], out)
    if chunk_size is None or chunk_size >= n:
        return jax.vmap(fn)(xs)
    return jax.lax.map(fn, xs, batch_size=chunk_size)


def _observables(
    observable_fn: Callable, samples: PyTree, chunk_size: int | None = None, mesh=None
) -> tuple[jax.Array, tuple]:
    g = jnp.asarray(_map(observable_fn, samples, chunk_size, mesh))
    if not jnp.issubdtype(g.dtype, jnp.inexact):
        g = g.astype(jnp.result_type(float))
    n = g.shape[0]
    return g.reshape(n, -1), g.shape[1:]


def _sample_weights(mask: jax.Array, log_weights, dtype) -> jax.Array | None:
    """``[N]`` importance weights ``w_i ∝ exp(ℓ_i)`` of valid samples (0 elsewhere), or None.

    None without ``log_weights``: every helper below then uses ``w_i = m_i`` (the plain
    estimator, bit for bit). The largest valid log weight is subtracted before ``exp``; all
    estimators normalise the weights per batch, so that shift cancels.
    """
    if log_weights is None:
        return None
    lw = jnp.asarray(log_weights).astype(dtype)
    if lw.shape != mask.shape:
        raise ValueError(
            f"log_weights must have shape {mask.shape} to match the samples, got {lw.shape}"
        )
    ok = mask & jnp.isfinite(lw)
    top = jnp.max(jnp.where(ok, lw, -jnp.inf))
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    return jnp.where(ok, jnp.exp(jnp.where(ok, lw - top, 0.0)), 0.0)


def _batch_structure(mask: jax.Array, n: int, batch_size: int | None, dtype, w=None):
    """Batch id per sample, per-batch weight sums, each batch's weight in the average, B, and
    the per-batch covariance denominators.

    With sample weights ``w`` (None = ``w_i = m_i``), batch b has ``S_b = Σ w_i``,
    ``S2_b = Σ w_i²`` and denominator ``S_b − S2_b/S_b`` (the unbiased weighted covariance;
    ``n_b − 1`` for equal weights). A batch is used when it has >= 2 valid samples and
    ``S_b > 0``; its weight in the average is ``S_b`` over the used batches' sum (the valid
    count for equal weights).
    """
    if batch_size is None:
        batch_size = n
    if batch_size < 2:
        raise ValueError(
            f"batch_size must be >= 2 (a covariance needs 2 samples), got {batch_size}"
        )
    n_batches = -(-n // batch_size)
    batch_id = jnp.arange(n) // batch_size
    m = mask.astype(dtype)
    counts = jax.ops.segment_sum(m, batch_id, num_segments=n_batches)
    if w is None:
        sums, squares = counts, counts
    else:
        w = w.astype(dtype)
        sums = jax.ops.segment_sum(w, batch_id, num_segments=n_batches)
        squares = jax.ops.segment_sum(w * w, batch_id, num_segments=n_batches)
    usable = (counts >= 2) & (sums > 0)
    weight = jnp.where(usable, sums, 0.0)
    total = jnp.sum(weight)
    weight = jnp.where(total > 0, weight / jnp.where(total > 0, total, 1.0), 0.0)
    safe = jnp.where(sums > 0, sums, 1.0)
    denominator = jnp.where(usable, sums - squares / safe, 1.0)
    return batch_id, sums, weight, batch_size, denominator


def _centred_observables(g: jax.Array, mask: jax.Array, batch_id, sums, n_batches, w=None):
    """``(g_i - ḡ_batch(i)) · m_i``, ``[N, n_obs]``, in g's dtype; ``ḡ`` weighted by ``w``."""
    m = mask.astype(g.dtype)
    w = m if w is None else w.astype(g.dtype)
    totals = jax.ops.segment_sum(g * w[:, None], batch_id, num_segments=n_batches)
    means = totals / jnp.where(sums > 0, sums, 1.0).astype(g.dtype)[:, None]
    return (g - means[batch_id]) * m[:, None]


def _sample_coefficients(g, mask, kT, batch_size, v, w=None):
    """The weights ``c_i`` of the flat backward rule, ``[N]``: ∇L = ∇_θ Σ_i c_i U_θ(x_i)."""
    n = g.shape[0]
    batch_id, sums, weight, _, denominator = _batch_structure(mask, n, batch_size, g.dtype, w)
    dg = _centred_observables(g, mask, batch_id, sums, sums.shape[0], w)
    scale = weight / (kT * denominator)
    c = -(dg @ v.reshape(-1).astype(g.dtype)) * scale[batch_id].astype(g.dtype)
    return c if w is None else c * w.astype(g.dtype)


def _batch_coefficients(g, mask, kT, batch_size, v, w=None):
    """``c_i`` for per-batch cotangents ``v [n_batches, n_obs]``: ``∇ Σ_b v_bᵀ ḡ_b``.

    ``c_i = -w_i (g_i - ḡ_b)·v_b / (kT (S_b − S2_b/S_b))`` (``-(g_i - ḡ_b)·v_b/(kT (n_b - 1))``
    for equal weights): each batch mean gets its own estimator's vector-Jacobian product,
    unweighted (the loss carries the batch weights). Batches with fewer than 2 valid samples
    contribute nothing.
    """
    n = g.shape[0]
    batch_id, sums, weight, _, denominator = _batch_structure(mask, n, batch_size, g.dtype, w)
    n_batches = sums.shape[0]
    dg = _centred_observables(g, mask, batch_id, sums, n_batches, w)
    scale = jnp.where(weight > 0, 1.0 / (kT * denominator), 0.0)
    v = v.reshape(n_batches, -1).astype(g.dtype)
    c = -jnp.sum(dg * v[batch_id], axis=-1) * scale[batch_id].astype(g.dtype)
    return c if w is None else c * w.astype(g.dtype)


def _batch_means(g: jax.Array, mask: jax.Array, batch_size: int | None, w=None):
    """Per-batch (weighted) means ``[n_batches, n_obs]`` and the batches' weights."""
    n = g.shape[0]
    batch_id, sums, weight, _, _ = _batch_structure(mask, n, batch_size, g.dtype, w)
    w = mask.astype(g.dtype) if w is None else w.astype(g.dtype)
    totals = jax.ops.segment_sum(g * w[:, None], batch_id, num_segments=sums.shape[0])
    return totals / jnp.where(sums > 0, sums, 1.0)[:, None], weight


def _masked_mean(g: jax.Array, mask: jax.Array, w=None) -> jax.Array:
    w = mask.astype(g.dtype) if w is None else w.astype(g.dtype)
    return jnp.sum(g * w[:, None], axis=0) / jnp.maximum(jnp.sum(w), jnp.finfo(g.dtype).tiny)


def _weighted_energy_grad(energy_fn, params, samples, coefficients, chunk_size, mesh=None):
    """``∇_θ Σ_i c_i U_θ(x_i)`` as one backward pass (or a scan over chunks of samples).

    With a ``mesh``, the samples are split evenly over its devices (padded with weight-0 copies
    of sample 0), each device takes the gradient of its share and the shares are summed
    (``psum``): the same sum, computed in parallel.
    """
    if mesh is None or mesh.devices.size < 2:
        return _local_weighted_energy_grad(energy_fn, params, samples, coefficients, chunk_size)
    axes = tuple(mesh.axis_names)
    n_devices = mesh.devices.size
    n = coefficients.shape[0]
    padded = -(-n // n_devices) * n_devices
    samples = _pad_to(samples, n, padded)
    cs = _pad_to(coefficients, n, padded) * (jnp.arange(padded) < n).astype(coefficients.dtype)
    split = jax.sharding.PartitionSpec(axes)

    def local(p, xs, c):
        grad = _local_weighted_energy_grad(energy_fn, p, xs, c, chunk_size)
        return jax.lax.psum(grad, axes)

    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(jax.sharding.PartitionSpec(), split, split),
        out_specs=jax.sharding.PartitionSpec(),
        check_vma=False,  # not differentiated: the result is summed explicitly
    )(params, samples, cs)


def _pad_to(tree: PyTree, n: int, size: int) -> PyTree:
    """Leading axis padded from ``n`` to ``size`` by repeating entry 0."""
    if size == n:
        return tree

    def leaf(x):
        x = jnp.asarray(x)
        return jnp.concatenate([x, jnp.repeat(x[:1], size - n, axis=0)], axis=0)

    return jax.tree_util.tree_map(leaf, tree)


def _local_weighted_energy_grad(energy_fn, params, samples, coefficients, chunk_size):
    n = coefficients.shape[0]

    def weighted_sum(p, xs, cs):
        energies = jax.vmap(energy_fn, in_axes=(None, 0))(p, xs)
        return jnp.sum(jax.lax.stop_gradient(cs).astype(energies.dtype) * energies)

    if chunk_size is None or chunk_size >= n:
        return jax.grad(weighted_sum)(params, samples, coefficients)
    xs, _ = _pad_and_split(samples, n, chunk_size)
    # Padded samples repeat sample 0 (finite after guarding) and get weight 0.
    cs, _ = _pad_and_split(coefficients, n, chunk_size)
    cs = cs * (jnp.arange(cs.size) < n).reshape(cs.shape).astype(cs.dtype)

    def body(acc, chunk):
        grad = jax.grad(weighted_sum)(params, *chunk)
        return jax.tree_util.tree_map(jnp.add, acc, grad), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    total, _ = jax.lax.scan(body, zeros, (xs, cs))
    return total


def _estimate_value(g, mask, obs_shape, batch_size, per_batch: bool, w=None):
    """Forward value of the differentiable estimators.

    ``per_batch=False``: the masked (weighted) mean over all samples, ``[*obs_shape]``.
    ``per_batch=True``: the per-minibatch masked (weighted) means, ``[n_batches, *obs_shape]``.
    """
    if per_batch:
        means, _ = _batch_means(g, mask, batch_size, w)
        return means.reshape((-1,) + obs_shape)
    return _masked_mean(g, mask, w).reshape(obs_shape)


def _batch_weights(mask: jax.Array, n: int, batch_size: int | None, w=None) -> jax.Array:
    """``[n_batches]`` weights of the minibatch estimators (sum 1; 0 below 2 valid samples)."""
    _, _, weight, _, _ = _batch_structure(mask, n, batch_size, jnp.result_type(float), w)
    return weight
