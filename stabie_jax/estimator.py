"""Boltzmann estimators: derivatives of ensemble averages without differentiating through MD.

For samples ``x_1..x_N`` from the canonical ensemble ``P_θ(x) ∝ exp(-U_θ(x)/kT)`` and an
observable ``g(x)`` that does not depend on θ,

.. math::

    \\frac{∂⟨g⟩}{∂θ} = -\\frac{1}{kT} \\mathrm{Cov}(g, ∇_θ U)
    ≈ -\\frac{1}{kT (N-1)} \\sum_i (g_i - \\bar g) ⊗ (∇_θ U_i - \\overline{∇_θ U})

(the paper's eq. 6, docs/method.md, Boltzmann estimator; the ``1/(N-1)`` makes the covariance,
hence the Jacobian, unbiased).
Three forms are provided (the first two take ``(params, samples, mask=None)``):

* :func:`boltzmann_jacobian` returns the full Jacobian pytree (the signature of
  ``jax.jacrev`` of the expectation). It needs per-sample gradients ``vmap(grad(U))``, so memory
  grows as ``N × n_params`` (``B × n_params`` with minibatches).
* :func:`boltzmann_expectation` returns ``⟨g⟩`` as a differentiable value. Its ``custom_vjp``
  backward rule, for an incoming cotangent ``v = ∂L/∂⟨g⟩``, is

  .. math:: ∇_θ L = -\\frac{1}{kT(N-1)} \\sum_i [(g_i - \\bar g)·v]\\, ∇_θ U(x_i)
            = ∇_θ \\sum_i c_i U_θ(x_i)

  with fixed weights ``c_i``: ONE backward pass of a weighted energy sum, no per-sample
  gradients. With ``chunk_size`` the observables and that pass run over chunks of samples, so
  memory beyond the inputs and the ``[N, n_obs]`` observable values does not grow with N.
  ``jax.grad`` / ``jax.value_and_grad`` of any loss of the expectation therefore just work.
* The localized estimator (docs/method.md, Localized estimator): the energy of a neighbourhood
  is the sum of its atoms' energies (:func:`local_energy_fn`), samples are (frame,
  neighbourhood) pairs (:func:`gather_local_samples`), chosen by binning a deviation
  (:func:`select_neighbourhoods`).
  :func:`localized_expectation` is the memory-flat form that evaluates each frame only once.

Water pipeline (localized; docs/paper_settings.md, Water)::

    neigh = molecule_neighbourhoods(atomic_numbers)                      # [64, 3] O, H, H
    dev = neighbourhood_max_deviation(frames, neigh, r0_oh, displacement_fn)   # [F, 64] Å
    sel = select_neighbourhoods(key, dev, n_bins=100, per_bin=5)
    obs = lambda s: neighbourhood_bond_lengths(s.positions, s.atoms, displacement_fn)
    expect = localized_expectation(potential.per_atom_energy_fn, obs, kT, batch_size=4)
    loss = lambda p: jnp.sum(
        (expect(p, frames, sel.frame_index, neigh[sel.neighbourhood_index], sel.mask) - g_ref)
        ** 2
    )
    grads = jax.grad(loss)(params)

**Minibatches** (``batch_size=B``; docs/method.md, Minibatches: the paper and the authors average
``N/B`` separate minibatch estimators).
Samples are cut into consecutive batches of B (shuffle time-ordered samples first); each batch
gives its own unbiased estimator with its own means and ``B/(B-1)`` factor; the estimators are
averaged with weights proportional to their number of valid samples (equal weights when all
batches are full, as in the paper). Every batch estimator is unbiased, so the average is
unbiased too. To leading order in 1/N both have the same variance; the minibatched one adds
terms of relative size ``O(1/B)`` (rather than ``O(1/N)``) from estimating the means on B
samples, which matters only for small B (the authors' water setting B = 4).
When N is not a multiple of B the last batch holds the remaining
``N mod B`` samples and enters with that smaller weight; a batch with fewer than 2 valid samples
has no covariance and is dropped (so with ``N mod B == 1`` that last sample is unused). Without
``batch_size`` the whole set is one batch.

**Masks.** ``mask`` (``[N]`` bool) excludes samples, e.g. from frozen or non-finite replicas.
Excluded samples are replaced by a valid sample *before* ``energy_fn``/``observable_fn`` are
called (a ``where`` guard on the inputs), and then given zero weight, so NaN or inf in an
excluded sample reaches neither the value nor the gradient (safe under ``jax_debug_nans``).
:func:`finite_sample_mask` builds such a mask. With no valid sample at all the result is zero.

**Authors' scale.** The reference implementation (StABlE-Training ``boltzmann_estimator.py``)
omits ``1/kT`` and ``N/(N-1)``; its learning rate α therefore corresponds to
:func:`authors_learning_rate_to_exact` ``= α·kT·(B-1)/B`` here, for the observable loss summed
over its components; :func:`authors_hyperparameters_to_exact` converts α, λ and the clip
together (and handles a mean-reduced loss).

**Global or per-batch vector.** For ``L = ‖⟨g⟩ − g_ref‖²`` the gradient is ``vᵀ J`` with
``v = 2(⟨g⟩ − g_ref)`` from all samples (:func:`boltzmann_expectation`: unbiased up to the
product of two noisy factors). The authors use each minibatch's own mean,
``v_b = 2(ḡ_b − g_ref)``, and average ``v_bᵀ J_b`` over minibatches
(:func:`boltzmann_batch_means`, :func:`localized_batch_means`): ``ḡ_b`` and ``J_b`` come from
the same B samples, an ``O(1/B)`` bias.

Units: ``energy_fn`` in eV, ``kT`` in eV (:func:`stabie_jax.units.kT`); a Jacobian has units of
``[g]/[θ]``.

Examples:
  >>> import jax, jax.numpy as jnp
  >>> energy_fn = lambda p, x: 0.5 * p["k"] * x**2        # eV, x in Å, k in eV/Å²
  >>> observable_fn = lambda x: jnp.stack([x**2])         # Å²
  >>> jac_fn = boltzmann_jacobian(energy_fn, observable_fn, kT=0.1)
  >>> x = jax.random.normal(jax.random.key(0), (100_000,)) * jnp.sqrt(0.1 / 2.0)
  >>> jac = jac_fn({"k": 2.0}, x)                       # leaves [n_obs, *param_shape]
  >>> bool(abs(jac["k"][0] - (-0.1 / 2.0**2)) < 1e-3)     # exact: -kT/k² = -0.025 Å²/(eV/Å²)
  True
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

__all__ = [
    "LocalSample",
    "NeighbourhoodSelection",
    "authors_learning_rate_to_exact",
    "authors_hyperparameters_to_exact",
    "boltzmann_batch_means",
    "boltzmann_expectation",
    "boltzmann_jacobian",
    "finite_sample_mask",
    "gather_local_samples",
    "local_energy_fn",
    "localized_batch_means",
    "localized_expectation",
    "molecule_neighbourhoods",
    "neighbourhood_bond_lengths",
    "neighbourhood_max_deviation",
    "select_neighbourhoods",
]


# ---------------------------------------------------------------------------------------------
# Shared plumbing: sample count, mask, where-guard, batching, per-sample weights c_i.


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


@jax.jit
def finite_sample_mask(samples: PyTree) -> jax.Array:
    """``[N]`` bool: True where every floating-point entry of the sample is finite.

    Args:
      samples: pytree with a leading sample axis ``[N, ...]``.

    Returns:
      ``[N]`` bool mask, e.g. to pass as ``mask=`` to the estimators.
    """
    n = _num_samples(samples)
    ok = jnp.ones((n,), dtype=bool)
    for x in jax.tree_util.tree_leaves(samples):
        x = jnp.asarray(x)
        if jnp.issubdtype(x.dtype, jnp.inexact):
            ok = ok & jnp.all(jnp.isfinite(x.reshape(n, -1)), axis=1)
    return ok


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
    pad = n_groups * size - n

    def leaf(x):
        x = jnp.asarray(x)
        if pad:
            x = jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)], axis=0)
        return x.reshape((n_groups, size) + x.shape[1:])

    return jax.tree_util.tree_map(leaf, tree), pad


def _map(fn: Callable, xs: PyTree, chunk_size: int | None):
    """``vmap(fn)(xs)``, or ``lax.map`` over chunks so intermediates stay one chunk in size."""
    if chunk_size is None or chunk_size >= _num_samples(xs):
        return jax.vmap(fn)(xs)
    return jax.lax.map(fn, xs, batch_size=chunk_size)


def _observables(
    observable_fn: Callable, samples: PyTree, chunk_size: int | None = None
) -> tuple[jax.Array, tuple]:
    g = jnp.asarray(_map(observable_fn, samples, chunk_size))
    if not jnp.issubdtype(g.dtype, jnp.inexact):
        g = g.astype(jnp.result_type(float))
    n = g.shape[0]
    return g.reshape(n, -1), g.shape[1:]


def _batch_structure(mask: jax.Array, n: int, batch_size: int | None, dtype):
    """Batch id per sample, per-batch valid counts, and each batch's weight in the average."""
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
    usable = counts >= 2
    weight = jnp.where(usable, counts, 0.0)
    weight = weight / jnp.maximum(jnp.sum(weight), 1.0)
    return batch_id, counts, weight, batch_size


def _centred_observables(g: jax.Array, mask: jax.Array, batch_id, counts, n_batches):
    """``(g_i - ḡ_batch(i)) · m_i``, ``[N, n_obs]``, in g's dtype."""
    m = mask.astype(g.dtype)
    sums = jax.ops.segment_sum(g * m[:, None], batch_id, num_segments=n_batches)
    means = sums / jnp.maximum(counts, 1.0).astype(g.dtype)[:, None]
    return (g - means[batch_id]) * m[:, None]


def _sample_coefficients(g, mask, kT, batch_size, v):
    """The weights ``c_i`` of the flat backward rule, ``[N]``: ∇L = ∇_θ Σ_i c_i U_θ(x_i)."""
    n = g.shape[0]
    batch_id, counts, weight, _ = _batch_structure(mask, n, batch_size, g.dtype)
    n_batches = counts.shape[0]
    dg = _centred_observables(g, mask, batch_id, counts, n_batches)
    scale = weight / (kT * jnp.maximum(counts - 1.0, 1.0))
    return -(dg @ v.reshape(-1).astype(g.dtype)) * scale[batch_id].astype(g.dtype)


def _batch_coefficients(g, mask, kT, batch_size, v):
    """``c_i`` for per-batch cotangents ``v [n_batches, n_obs]``: ``∇ Σ_b v_bᵀ ḡ_b``.

    ``c_i = -(g_i - ḡ_b)·v_b / (kT (n_b - 1))``: each batch mean gets its own estimator's
    vector-Jacobian product, unweighted (the loss carries the batch weights). Batches with fewer
    than 2 valid samples contribute nothing.
    """
    n = g.shape[0]
    batch_id, counts, _, _ = _batch_structure(mask, n, batch_size, g.dtype)
    n_batches = counts.shape[0]
    dg = _centred_observables(g, mask, batch_id, counts, n_batches)
    scale = jnp.where(counts >= 2, 1.0 / (kT * jnp.maximum(counts - 1.0, 1.0)), 0.0)
    v = v.reshape(n_batches, -1).astype(g.dtype)
    return -jnp.sum(dg * v[batch_id], axis=-1) * scale[batch_id].astype(g.dtype)


def _batch_means(g: jax.Array, mask: jax.Array, batch_size: int | None):
    """Per-batch masked means ``[n_batches, n_obs]`` and the batches' weights ``[n_batches]``."""
    n = g.shape[0]
    batch_id, counts, weight, _ = _batch_structure(mask, n, batch_size, g.dtype)
    n_batches = counts.shape[0]
    m = mask.astype(g.dtype)
    sums = jax.ops.segment_sum(g * m[:, None], batch_id, num_segments=n_batches)
    return sums / jnp.maximum(counts, 1.0)[:, None], weight


def _masked_mean(g: jax.Array, mask: jax.Array) -> jax.Array:
    m = mask.astype(g.dtype)
    return jnp.sum(g * m[:, None], axis=0) / jnp.maximum(jnp.sum(m), 1.0)


def _weighted_energy_grad(energy_fn, params, samples, coefficients, chunk_size):
    """``∇_θ Σ_i c_i U_θ(x_i)`` as one backward pass (or a scan over chunks of samples)."""
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


# ---------------------------------------------------------------------------------------------
# Jacobian route.


def boltzmann_jacobian(
    energy_fn: Callable,
    observable_fn: Callable,
    kT: float,
    *,
    batch_size: int | None = None,
) -> Callable:
    """Jacobian ``∂⟨g⟩/∂θ`` from canonical samples via per-sample energy gradients.

    ``J = -1/(kT (N-1)) Σ_i m_i (g_i - ḡ) ⊗ (∇_θU_i - mean ∇_θU)`` per batch, batches averaged
    (module docstring: minibatches, masks).

    Args:
      energy_fn: ``(params, sample) -> scalar`` potential energy, eV. ``params`` is any pytree
        (e.g. a Flax ``params`` collection); ``sample`` is one element of ``samples``.
      observable_fn: ``(sample) -> [*obs_shape]`` observable g, independent of params.
      kT: thermal energy of the ensemble the samples come from, eV.
      batch_size: if given (>= 2), average ceil(N/B) minibatch estimators of B consecutive
        samples; per-sample gradients (and observables) are evaluated for one batch at a time
        (``lax.scan`` / ``lax.map``), so memory is that of B samples plus the Jacobian.

    Returns:
      A jitted ``(params, samples, mask=None) -> jacobian`` where ``samples`` is a pytree with
      leading axis ``[N, ...]`` (e.g. positions ``[N, n_atoms, 3]`` Å), ``mask`` is ``[N]``
      bool, and ``jacobian`` has the structure of ``params`` with leaves
      ``[*obs_shape, *param_leaf_shape]`` (as ``jax.jacrev`` of the expectation).
    """

    def jacobian(params, samples, mask=None):
        n = _num_samples(samples)
        mask = _resolve_mask(mask, n)
        samples = _guard(samples, mask)
        g, obs_shape = _observables(observable_fn, samples, batch_size)
        batch_id, counts, weight, b = _batch_structure(mask, n, batch_size, g.dtype)
        n_batches = counts.shape[0]
        dg = _centred_observables(g, mask, batch_id, counts, n_batches)
        scale = weight / (kT * jnp.maximum(counts - 1.0, 1.0))
        per_sample_grad = jax.vmap(jax.grad(energy_fn), in_axes=(None, 0))

        xs, _ = _pad_and_split(samples, n, b)
        dgs, _ = _pad_and_split(dg, n, b)  # padded rows repeat row 0; masked below
        ms, _ = _pad_and_split(mask, n, b)
        ms = ms & (jnp.arange(n_batches * b) < n).reshape(n_batches, b)

        def batch_term(x_b, dg_b, m_b, s_b):
            grads = per_sample_grad(params, x_b)
            m_f = m_b.astype(dg_b.dtype)
            dg_b = dg_b * m_f[:, None]
            cnt = jnp.maximum(jnp.sum(m_f), 1.0)

            def leaf(gr):
                flat = gr.reshape(gr.shape[0], -1)
                centred = (flat - (m_f @ flat) / cnt) * m_f[:, None]
                return -s_b * (dg_b.T @ centred)

            return jax.tree_util.tree_map(leaf, grads)

        def body(acc, batch):
            term = batch_term(*batch)
            return jax.tree_util.tree_map(jnp.add, acc, term), None

        n_obs = g.shape[1]
        zeros = jax.tree_util.tree_map(
            lambda p: jnp.zeros((n_obs, int(np.prod(jnp.shape(p)))), jnp.result_type(p, g)),
            params,
        )
        if n_batches == 1:
            first = jax.tree_util.tree_map(lambda x: x[0], xs)
            flat_jac = batch_term(first, dgs[0], ms[0], scale[0])
        else:
            flat_jac, _ = jax.lax.scan(body, zeros, (xs, dgs, ms, scale))
        return jax.tree_util.tree_map(
            lambda j, p: j.reshape(obs_shape + jnp.shape(p)), flat_jac, params
        )

    return jax.jit(jacobian)


# ---------------------------------------------------------------------------------------------
# Memory-flat route: a differentiable expectation with the Boltzmann backward rule.


def boltzmann_expectation(
    energy_fn: Callable,
    observable_fn: Callable,
    kT: float,
    *,
    batch_size: int | None = None,
    chunk_size: int | None = None,
) -> Callable:
    """Differentiable ensemble average ``⟨g⟩`` whose gradient is the Boltzmann estimator.

    The value is the (masked) sample mean of g. Its ``custom_vjp`` turns a cotangent
    ``v = ∂L/∂⟨g⟩`` into ``∇_θ Σ_i c_i U_θ(x_i)`` with
    ``c_i = -w_b (g_i - ḡ_b)·v / (kT (n_b - 1))`` (b the batch of sample i, ``w_b`` its weight,
    module docstring), i.e. exactly ``vᵀ J`` of :func:`boltzmann_jacobian` with the same
    ``batch_size`` and mask, computed with one backward pass of a weighted energy sum.

    Samples and mask are treated as constants (their cotangents are zero) and only first-order
    reverse-mode derivatives are defined (``custom_vjp``).

    Args:
      energy_fn: ``(params, sample) -> scalar`` potential energy, eV.
      observable_fn: ``(sample) -> [*obs_shape]`` observable g, independent of params.
      kT: thermal energy of the sampled ensemble, eV.
      batch_size: minibatch size B for the gradient (the value is always the mean over all
        valid samples); None = one batch.
      chunk_size: if given, the observables and the backward pass are evaluated in chunks of
        this many samples (``lax.map`` / ``lax.scan``), so peak memory is that of one chunk's
        forward+backward whatever N is; None = one pass.

    Returns:
      A jitted ``(params, samples, mask=None) -> ⟨g⟩`` of shape ``[*obs_shape]``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> expect = boltzmann_expectation(lambda p, x: 0.5 * p * x**2, lambda x: x**2, kT=1.0)
      >>> x = jax.random.normal(jax.random.key(1), (50_000,))      # samples at p = 1
      >>> round(float(jax.grad(lambda p: expect(p, x))(1.0)), 1)   # exact: -kT/p² = -1
      -1.0
    """

    return _global(energy_fn, observable_fn, kT, batch_size, chunk_size, per_batch=False)


def boltzmann_batch_means(
    energy_fn: Callable,
    observable_fn: Callable,
    kT: float,
    *,
    batch_size: int | None = None,
    chunk_size: int | None = None,
) -> Callable:
    """Per-minibatch averages ``ḡ_b``, each differentiable with its own Boltzmann estimator.

    The form the authors' update uses: a loss ``Σ_b w_b ℓ(ḡ_b)`` of the minibatch means has the
    gradient ``Σ_b w_b (∂ℓ/∂ḡ_b)ᵀ J_b``, where ``J_b`` is batch b's estimator of
    ``∂⟨g⟩/∂θ`` (as in :func:`boltzmann_expectation`, its own means and ``1/(n_b − 1)``). With
    ``ℓ = ‖ḡ_b − g_ref‖²`` the vector of batch b is ``2(ḡ_b − g_ref)``, from that batch's
    own mean, and the result is the authors' average of per-batch vector-Jacobian products
    (StABlE-Training ``boltzmann_estimator.py``). Its expectation differs from the gradient of
    ``‖⟨g⟩ − g_ref‖²`` by ``O(1/B)``: ``ḡ_b`` is correlated with ``J_b``.

    Args:
      energy_fn, observable_fn, kT, batch_size, chunk_size: as for
        :func:`boltzmann_expectation`.

    Returns:
      A jitted ``(params, samples, mask=None) -> (means [n_batches, *obs_shape],
      weights [n_batches])``; ``weights`` (not differentiable) are proportional to the batches'
      valid-sample counts, sum to 1, and are 0 for batches with fewer than 2 valid samples.
    """

    return _global(energy_fn, observable_fn, kT, batch_size, chunk_size, per_batch=True)


def _global(energy_fn, observable_fn, kT, batch_size, chunk_size, *, per_batch: bool):
    """Shared body of :func:`boltzmann_expectation` and :func:`boltzmann_batch_means`."""

    def value(g, mask, obs_shape):
        if per_batch:
            means, _ = _batch_means(g, mask, batch_size)
            return means.reshape((-1,) + obs_shape)
        return _masked_mean(g, mask).reshape(obs_shape)

    @jax.custom_vjp
    def _value(params, samples, mask):
        g, obs_shape = _observables(observable_fn, samples, chunk_size)
        return value(g, mask, obs_shape)

    def fwd(params, samples, mask):
        g, obs_shape = _observables(observable_fn, samples, chunk_size)
        return value(g, mask, obs_shape), (params, samples, mask, g)

    def bwd(residuals, v):
        params, samples, mask, g = residuals
        coefficients = _batch_coefficients if per_batch else _sample_coefficients
        c = coefficients(g, mask, kT, batch_size, v)
        return _weighted_energy_grad(energy_fn, params, samples, c, chunk_size), None, None

    _value.defvjp(fwd, bwd)

    def expectation(params, samples, mask=None):
        n = _num_samples(samples)
        mask = _resolve_mask(mask, n)
        out = _value(params, _guard(samples, mask), mask)
        if not per_batch:
            return out
        _, _, weight, _ = _batch_structure(mask, n, batch_size, jnp.result_type(float))
        return out, weight

    return jax.jit(expectation)


def authors_learning_rate_to_exact(alpha: float, kT: float, n_samples: int) -> float:
    """Learning rate for this (exact) estimator that reproduces the authors' SGD step.

    StABlE-Training's estimator per minibatch of B states is
    ``Ê[g]Ê[∇U]ᵀ - Ê[g ∇Uᵀ] = kT·(B-1)/B · J_exact`` (no ``1/kT``, no ``B/(B-1)``;
    docs/paper_settings.md, Common to all systems), so their step ``α·J_authorsᵀ v`` equals
    ``(α·kT·(B-1)/B)·J_exactᵀ v``.

    Args:
      alpha: the authors' learning rate (e.g. 1e-3 for aspirin, 3e-3 for water).
      kT: the training temperature's kT in eV (the authors' energies are eV).
      n_samples: the number of states per authors' estimator, i.e. their minibatch size B
        (40 for aspirin/Ac-Ala3, 4 for water); the total N when they use no minibatches.

    Returns:
      The equivalent learning rate for :func:`boltzmann_jacobian` / :func:`boltzmann_expectation`
      (same ``batch_size``).

    Examples:
      >>> from stabie_jax import units
      >>> round(authors_learning_rate_to_exact(1e-3, units.kT(500.0), 40), 8)
      4.201e-05
    """
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2 (the minibatch size B), got {n_samples}")
    return float(alpha) * float(kT) * (n_samples - 1) / n_samples


class ExactHyperparameters(NamedTuple):
    """The authors' (α, λ, clip) expressed for this project's exact estimator.

    Attributes:
      learning_rate: α for the exact gradient.
      qm_weight: λ multiplying ``∇L_QM`` next to the exact ``∇L_obs``.
      grad_clip_norm: global-norm clip of the exact combined gradient (None = off).
      gradient_scale: ``s`` such that ``s·∇(L_obs + λ L_QM)`` (exact) is the authors' gradient;
        multiply logged gradient norms by it to read them in the authors' units.
    """

    learning_rate: float
    qm_weight: float
    grad_clip_norm: float | None
    gradient_scale: float


def authors_hyperparameters_to_exact(
    learning_rate: float,
    qm_weight: float,
    grad_clip_norm: float | None,
    kT: float,
    batch_size: int,
    *,
    reduction: str = "sum",
    n_observable: int | None = None,
) -> ExactHyperparameters:
    """Convert the authors' (α, λ, clip) so that the parameter update equals theirs.

    The authors' observable gradient is ``c·∇L_sum`` with ``L_sum = Σ_k (⟨g⟩_k − g_ref,k)²``
    and ``c = kT·(B−1)/B`` (their estimator omits 1/kT and B/(B−1)); their update is
    ``α·clip(c·∇L_sum + λ·∇L_QM)``. With the exact gradient of the loss used here,
    ``∇L_sum = m·∇L`` where ``m = 1`` for ``reduction="sum"`` and ``m = n_observable`` for a
    mean over the components (``reduction="mean"``). Writing ``s = c·m``, the same update is
    ``(α s)·clip'(∇L + (λ/s)·∇L_QM)`` with ``clip' = clip/s``.

    Args:
      learning_rate, qm_weight, grad_clip_norm: the authors' α, λ and clip (e.g. 1e-3, 10, 1).
      kT: eV, the training temperature.
      batch_size: their minibatch size B (aspirin 40, water 4).
      reduction: ``"sum"`` (the observable loss ``‖⟨g⟩ − g_ref‖²``) or ``"mean"``.
      n_observable: number of observable components (bins); needed for ``"mean"``.

    Returns:
      :class:`ExactHyperparameters`.

    Examples:
      >>> from stabie_jax import units
      >>> h = authors_hyperparameters_to_exact(1e-3, 10.0, 1.0, units.kT(500.0), 40)
      >>> round(h.learning_rate, 8), round(h.qm_weight, 1), round(h.grad_clip_norm, 2)
      (4.201e-05, 238.0, 23.8)
    """
    c = authors_learning_rate_to_exact(1.0, kT, batch_size)
    if reduction == "sum":
        s = c
    elif reduction == "mean":
        if not n_observable or n_observable < 1:
            raise ValueError("reduction='mean' needs n_observable, the number of components")
        s = c * n_observable
    else:
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    clip = None if grad_clip_norm is None else float(grad_clip_norm) / s
    return ExactHyperparameters(float(learning_rate) * s, float(qm_weight) / s, clip, s)


# ---------------------------------------------------------------------------------------------
# Localized estimator (docs/method.md, Localized estimator).


class LocalSample(NamedTuple):
    """One (frame, neighbourhood) sample of the localized estimator (leading ``[M]`` if batched).

    Attributes:
      positions: ``[n_atoms, 3]`` Å, the whole frame the neighbourhood lives in.
      atoms: ``[atoms_per_neighbourhood]`` int, indices of the neighbourhood's atoms (for water:
        O, H, H).
    """

    positions: jax.Array
    atoms: jax.Array


def local_energy_fn(per_atom_energy_fn: Callable) -> Callable:
    """Neighbourhood energy ``U_θ(γ) = Σ_{a∈γ} E_a`` as an ``energy_fn`` for the estimators.

    Args:
      per_atom_energy_fn: ``(params, positions [n_atoms, 3]) -> [n_atoms]`` eV, e.g.
        ``Potential.per_atom_energy_fn`` (wrap a neighbour-list variant in a closure).

    Returns:
      ``(params, sample: LocalSample) -> scalar`` eV. With ``atoms = arange(n_atoms)`` it is the
      global energy, so the localized estimator reduces to the global one.
    """

    def energy_fn(params, sample: LocalSample):
        return jnp.sum(per_atom_energy_fn(params, sample.positions)[sample.atoms])

    return energy_fn


def gather_local_samples(frames, frame_index, atoms) -> LocalSample:
    """Stack (frame, neighbourhood) pairs into samples for the generic estimators.

    Args:
      frames: ``[F, n_atoms, 3]`` Å.
      frame_index: ``[M]`` int, the frame of each sample.
      atoms: ``[M, atoms_per_neighbourhood]`` int, each sample's atom indices.

    Returns:
      :class:`LocalSample` with positions ``[M, n_atoms, 3]`` (a copy of each sample's frame) and
      atoms ``[M, k]``. :func:`localized_expectation` avoids these copies and evaluates each
      frame once.
    """
    frames = jnp.asarray(frames)
    return LocalSample(frames[jnp.asarray(frame_index)], jnp.asarray(atoms))


def molecule_neighbourhoods(atomic_numbers, pattern=(8, 1, 1)) -> np.ndarray:
    """Neighbourhoods = molecules stored contiguously, e.g. water as O, H, H, O, H, H, ...

    Args:
      atomic_numbers: ``[n_atoms]`` int.
      pattern: atomic numbers of one molecule in storage order (default water O, H, H).

    Returns:
      ``[n_molecules, len(pattern)]`` int atom indices (host numpy).

    Raises:
      ValueError: if the atoms are not the pattern repeated (then build the index array from
        your topology instead).
    """
    z = np.asarray(atomic_numbers).reshape(-1)
    k = len(pattern)
    if z.size % k or not np.array_equal(z.reshape(-1, k), np.tile(pattern, (z.size // k, 1))):
        raise ValueError(
            f"atomic_numbers are not the molecule pattern {tuple(pattern)} repeated; pass an "
            "explicit [n_molecules, atoms_per_molecule] index array built from the topology"
        )
    return np.arange(z.size).reshape(-1, k)


def neighbourhood_bond_lengths(positions, atoms, displacement_fn: Callable | None = None):
    """Lengths from a neighbourhood's first atom to each other atom (water: the two O–H bonds).

    Args:
      positions: ``[n_atoms, 3]`` Å.
      atoms: ``[..., k]`` int, centre first (O, H, H); leading axes (e.g. all molecules
        ``[n_neighbourhoods, k]``) are kept.
      displacement_fn: JAX-MD displacement ``(Ra, Rb) -> Ra - Rb`` (minimum image under PBC);
        None = free space.

    Returns:
      ``[..., k - 1]`` Å.
    """
    atoms = jnp.asarray(atoms)
    centre = positions[atoms[..., :1]]  # [..., 1, 3]
    others = positions[atoms[..., 1:]]  # [..., k-1, 3]
    if displacement_fn is None:
        d = others - centre
    else:
        flat_others = others.reshape(-1, 3)
        flat_centre = jnp.broadcast_to(centre, others.shape).reshape(-1, 3)
        d = jax.vmap(displacement_fn)(flat_others, flat_centre).reshape(others.shape)
    return jnp.sqrt(jnp.sum(d**2, axis=-1))


@functools.partial(jax.jit, static_argnames=("displacement_fn",))
def neighbourhood_max_deviation(
    frames, neighbourhoods, reference_length, displacement_fn: Callable | None = None
):
    """Max bond-length deviation of every neighbourhood of every frame (water: max |r_OH - r0|).

    Args:
      frames: ``[F, n_atoms, 3]`` Å; frames with non-finite entries (frozen replicas) give
        ``+inf``, which :func:`select_neighbourhoods` excludes.
      neighbourhoods: ``[n_neighbourhoods, k]`` int, centre atom first (e.g.
        :func:`molecule_neighbourhoods`).
      reference_length: equilibrium length(s) r0, Å: scalar or ``[k - 1]``.
      displacement_fn: JAX-MD displacement (minimum image under PBC); None = free space.

    Returns:
      ``[F, n_neighbourhoods]`` Å, ``max_b |r_b - r0_b|``.
    """
    frames = jnp.asarray(frames)
    finite = jnp.all(jnp.isfinite(frames.reshape(frames.shape[0], -1)), axis=1)
    safe = jnp.where(finite[:, None, None], frames, 0.0)
    lengths_fn = lambda x: neighbourhood_bond_lengths(x, neighbourhoods, displacement_fn)
    lengths = jax.vmap(lengths_fn)(safe)
    deviation = jnp.max(jnp.abs(lengths - jnp.asarray(reference_length)), axis=-1)
    return jnp.where(finite[:, None], deviation, jnp.inf)


class NeighbourhoodSelection(NamedTuple):
    """Fixed-size selection of (frame, neighbourhood) pairs; ``[n_bins * per_bin]`` each.

    Attributes:
      frame_index: int, frame of each slot.
      neighbourhood_index: int, neighbourhood (e.g. molecule) of each slot within its frame.
      mask: bool, False for empty slots (bins with fewer than ``per_bin`` candidates).
      bin_index: int, the deviation bin of each slot (slot ``s`` belongs to bin ``s // per_bin``).
    """

    frame_index: jax.Array
    neighbourhood_index: jax.Array
    mask: jax.Array
    bin_index: jax.Array


@functools.partial(jax.jit, static_argnames=("n_bins", "per_bin", "value_range"))
def select_neighbourhoods(
    key: jax.Array,
    deviations,
    *,
    n_bins: int = 100,
    per_bin: int = 5,
    valid=None,
    value_range: tuple[float, float] | None = None,
) -> NeighbourhoodSelection:
    """Balance neighbourhoods by their deviation: equal-width bins, up to ``per_bin`` per bin.

    docs/method.md, Localized estimator (water): each molecule's max O–H bond-length deviation
    goes into one of 100 equal-width bins and a fixed number is drawn from each bin (paper: 5;
    the authors' code 5·R = 40 with R replicas). Bins span ``[min, max]`` of the valid
    deviations unless ``value_range`` is given (values outside it go to the end bins). Within a
    bin the draw is uniform without replacement, seeded by ``key``; bins with fewer candidates
    give all of them and leave masked-out slots.

    Args:
      key: PRNG key.
      deviations: ``[F, n_neighbourhoods]`` Å (e.g. max |r_OH - r_eq| per molecule).
      n_bins: number of equal-width bins.
      per_bin: maximum samples per bin.
      valid: optional ``[F, n_neighbourhoods]`` bool; False (or a non-finite deviation, e.g.
        from a frozen replica) excludes a candidate.
      value_range: optional ``(low, high)`` Å bin range.

    Returns:
      :class:`NeighbourhoodSelection` of static size ``n_bins * per_bin``; pass its ``mask`` to
      the estimators.
    """
    deviations = jnp.asarray(deviations)
    if deviations.ndim != 2:
        raise ValueError(
            f"deviations must be [n_frames, n_neighbourhoods], got shape {deviations.shape}"
        )
    n_per_frame = deviations.shape[1]
    d = deviations.reshape(-1)
    ok = jnp.isfinite(d)
    if valid is not None:
        ok = ok & jnp.asarray(valid, dtype=bool).reshape(-1)
    d = jnp.where(ok, d, 0.0)
    any_ok = jnp.any(ok)
    if value_range is None:
        lo = jnp.where(any_ok, jnp.min(jnp.where(ok, d, jnp.inf)), 0.0)
        hi = jnp.where(any_ok, jnp.max(jnp.where(ok, d, -jnp.inf)), 0.0)
    else:
        lo, hi = (jnp.asarray(v, d.dtype) for v in value_range)
    width = (hi - lo) / n_bins
    width = jnp.where(width > 0, width, 1.0)
    bins = jnp.clip(jnp.floor((d - lo) / width).astype(jnp.int32), 0, n_bins - 1)
    bins = jnp.where(ok, bins, n_bins)

    priority = jax.random.uniform(key, d.shape)
    order = jnp.lexsort((priority, bins))
    sorted_bins = bins[order]
    rank = jnp.arange(d.size) - jnp.searchsorted(sorted_bins, sorted_bins, side="left")
    take = (rank < per_bin) & (sorted_bins < n_bins)
    n_slots = n_bins * per_bin
    slot = jnp.where(take, sorted_bins * per_bin + rank, n_slots)
    chosen = jnp.zeros((n_slots,), jnp.int32).at[slot].set(order.astype(jnp.int32), mode="drop")
    mask = jnp.zeros((n_slots,), bool).at[slot].set(True, mode="drop")
    return NeighbourhoodSelection(
        frame_index=chosen // n_per_frame,
        neighbourhood_index=chosen % n_per_frame,
        mask=mask,
        bin_index=jnp.arange(n_slots) // per_bin,
    )


def localized_expectation(
    per_atom_energy_fn: Callable,
    observable_fn: Callable,
    kT: float,
    *,
    batch_size: int | None = None,
    chunk_size: int | None = None,
) -> Callable:
    """Memory-flat localized estimator that evaluates each frame once, not once per sample.

    Same value and gradient as :func:`boltzmann_expectation` with
    ``energy_fn = local_energy_fn(per_atom_energy_fn)`` on
    ``gather_local_samples(frames, frame_index, atoms)``. Since
    ``Σ_i c_i Σ_{a∈γ_i} E_a(x_{f_i}) = Σ_f Σ_a W_fa E_a(x_f)`` with ``W_fa`` = the sum of the
    ``c_i`` of samples in frame f whose neighbourhood contains atom a, the backward pass is one
    vjp of per-atom energies over the F frames (water: 64 molecules per frame share one pass).

    Args:
      per_atom_energy_fn: ``(params, positions [n_atoms, 3]) -> [n_atoms]`` eV.
      observable_fn: ``(sample: LocalSample) -> [*obs_shape]``, e.g.
        ``lambda s: neighbourhood_bond_lengths(s.positions, s.atoms)``.
      kT: eV.
      batch_size: minibatch size over the M samples (as in :func:`boltzmann_expectation`).
      chunk_size: if given, the backward pass scans over chunks of this many frames and the
        observables are evaluated in chunks of this many samples.

    Returns:
      A jitted ``(params, frames [F, n_atoms, 3], frame_index [M], atoms [M, k], mask=None) ->
      ⟨g⟩``. Frames referenced by no valid sample are never evaluated on their own values (they
      may hold NaN).
    """

    return _localized(per_atom_energy_fn, observable_fn, kT, batch_size, chunk_size, False)


def localized_batch_means(
    per_atom_energy_fn: Callable,
    observable_fn: Callable,
    kT: float,
    *,
    batch_size: int | None = None,
    chunk_size: int | None = None,
) -> Callable:
    """Per-minibatch means of the localized estimator (the authors' form for water).

    :func:`boltzmann_batch_means` for (frame, neighbourhood) samples, evaluated as
    :func:`localized_expectation` does (each frame's per-atom energies once).

    Returns:
      A jitted ``(params, frames [F, n_atoms, 3], frame_index [M], atoms [M, k], mask=None) ->
      (means [n_batches, *obs_shape], weights [n_batches])``.
    """
    return _localized(per_atom_energy_fn, observable_fn, kT, batch_size, chunk_size, True)


def _localized(per_atom_energy_fn, observable_fn, kT, batch_size, chunk_size, per_batch: bool):
    """Shared body of :func:`localized_expectation` and :func:`localized_batch_means`."""

    def weighted_frame_energy(params, frame_and_weights):
        frame, weights = frame_and_weights
        return jnp.sum(weights * per_atom_energy_fn(params, frame))

    def observables(frames, frame_index, atoms):
        sample_fn = lambda fa: observable_fn(LocalSample(frames[fa[0]], fa[1]))
        g = jnp.asarray(_map(sample_fn, (frame_index, atoms), chunk_size))
        return g.reshape(g.shape[0], -1), g.shape[1:]

    def value(g, mask, obs_shape):
        if per_batch:
            means, _ = _batch_means(g, mask, batch_size)
            return means.reshape((-1,) + obs_shape)
        return _masked_mean(g, mask).reshape(obs_shape)

    @jax.custom_vjp
    def _value(params, frames, frame_index, atoms, mask):
        g, obs_shape = observables(frames, frame_index, atoms)
        return value(g, mask, obs_shape)

    def fwd(params, frames, frame_index, atoms, mask):
        g, obs_shape = observables(frames, frame_index, atoms)
        return value(g, mask, obs_shape), (params, frames, frame_index, atoms, mask, g)

    def bwd(residuals, v):
        params, frames, frame_index, atoms, mask, g = residuals
        coefficients = _batch_coefficients if per_batch else _sample_coefficients
        c = coefficients(g, mask, kT, batch_size, v)
        n_frames, n_atoms = frames.shape[0], frames.shape[1]
        weights = jnp.zeros((n_frames, n_atoms), c.dtype)
        rows = jnp.broadcast_to(frame_index[:, None], atoms.shape)
        weights = weights.at[rows, atoms].add(jnp.broadcast_to(c[:, None], atoms.shape))
        grad = _weighted_energy_grad(
            weighted_frame_energy,
            params,
            (frames, weights),
            jnp.ones((n_frames,), c.dtype),
            chunk_size,
        )
        return grad, None, None, None, None

    _value.defvjp(fwd, bwd)

    def expectation(params, frames, frame_index, atoms, mask=None):
        frames = jnp.asarray(frames)
        frame_index = jnp.asarray(frame_index)
        atoms = jnp.asarray(atoms)
        if frames.ndim != 3 or atoms.ndim != 2 or frame_index.shape != atoms.shape[:1]:
            raise ValueError(
                "expected frames [F, n_atoms, 3], frame_index [M], atoms [M, k]; got "
                f"{frames.shape}, {frame_index.shape}, {atoms.shape}"
            )
        mask = _resolve_mask(mask, atoms.shape[0])
        # Redirect excluded samples to a valid one, then keep only frames some valid sample uses.
        frame_index = _guard(frame_index, mask)
        atoms = _guard(atoms, mask)
        used = jnp.zeros((frames.shape[0],), bool).at[frame_index].max(mask)
        frames = _guard(frames, used)
        out = _value(params, frames, frame_index, atoms, mask)
        if not per_batch:
            return out
        n = atoms.shape[0]
        _, _, weight, _ = _batch_structure(mask, n, batch_size, jnp.result_type(float))
        return out, weight

    return jax.jit(expectation)
