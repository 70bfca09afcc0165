"""Boltzmann estimators: derivatives of ensemble averages without differentiating through MD.

For samples ``x_1..x_N`` from the canonical ensemble ``P_θ(x) ∝ exp(-U_θ(x)/kT)`` and an
observable ``g(x)`` that does not depend on θ,

.. math::

    \\frac{∂⟨g⟩}{∂θ} = -\\frac{1}{kT} \\mathrm{Cov}(g, ∇_θ U)
    ≈ -\\frac{1}{kT (N-1)} \\sum_i (g_i - \\bar g) ⊗ (∇_θ U_i - \\overline{∇_θ U})

(the paper's eq. 6, docs/method.md, Boltzmann estimator; the ``1/(N-1)`` makes the covariance,
hence the Jacobian, unbiased).
Two forms are provided, both taking ``(params, samples, mask=None, log_weights=None)``:

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

This module holds the global estimator. The localized variant (neighbourhood energies,
(frame, neighbourhood) samples) is :mod:`stabie_jax.localized_estimator`, the conversion of the
authors' hyperparameters to this estimator's scale is :mod:`stabie_jax.hyperparameters`, and
the private plumbing both estimators share is :mod:`stabie_jax._estimator_core`. Every public
name of those two modules is re-exported here, so ``from stabie_jax.estimator import
localized_expectation`` keeps working.

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

**Weighted samples (reweighting).** ``log_weights`` (``[N]``, any additive constant) gives
sample i the importance weight ``w_i ∝ exp(ℓ_i)``: samples drawn at ``θ`` then estimate the
ensemble at ``θ′`` with ``ℓ_i = -(U_θ′(x_i) - U_θ(x_i))/kT`` (params = θ′). Every mean becomes a
weighted mean with ``w̃_i = w_i / Σ_b w`` in its batch b, and the covariance the unbiased
weighted one,

.. math:: J_b = -\\frac{1}{kT\\,(1 - Σ_{i∈b} w̃_i^2)} \\sum_{i∈b} w̃_i (g_i - \\bar g_w)
          ⊗ (∇_θ U_i - \\overline{∇_θ U}_w),

i.e. the derivative of the self-normalised estimate ``Σ w̃_i(θ′) g_i`` times the unbiasing
factor ``1/(1 - Σw̃²)`` (``B/(B-1)`` for equal weights). Batches enter the average with weight
``Σ_b w``.
``log_weights=None`` or all equal is the plain estimator (bit for bit for ``None``).
:func:`stabie_jax.reweighting.kish_effective_sample_size` says how many samples remain.

**Authors' scale.** The reference implementation (StABlE-Training ``boltzmann_estimator.py``)
omits ``1/kT`` and ``N/(N-1)``; its learning rate α therefore corresponds to
:func:`~stabie_jax.hyperparameters.authors_learning_rate_to_exact` ``= α·kT·(B-1)/B`` here, for
the observable loss summed over its components;
:func:`~stabie_jax.hyperparameters.authors_hyperparameters_to_exact` converts α, λ and the clip
together (and handles a mean-reduced loss).

**Global or per-batch vector.** For ``L = ‖⟨g⟩ − g_ref‖²`` the gradient is ``vᵀ J`` with
``v = 2(⟨g⟩ − g_ref)`` from all samples (:func:`boltzmann_expectation`: unbiased up to the
product of two noisy factors). The authors use each minibatch's own mean,
``v_b = 2(ḡ_b − g_ref)``, and average ``v_bᵀ J_b`` over minibatches
(:func:`boltzmann_batch_means`,
:func:`~stabie_jax.localized_estimator.localized_batch_means`): ``ḡ_b`` and ``J_b`` come from
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

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from stabie_jax._estimator_core import (
    PyTree,
    _batch_coefficients,
    _batch_structure,
    _batch_weights,
    _centred_observables,
    _estimate_value,
    _guard,
    _num_samples,
    _observables,
    _pad_and_split,
    _resolve_mask,
    _sample_coefficients,
    _sample_weights,
    _weighted_energy_grad,
)
from stabie_jax.hyperparameters import (
    CONVENTIONS,
    ExactHyperparameters,
    authors_hyperparameters_to_exact,
    authors_learning_rate_to_exact,
    exact_hyperparameters,
)
from stabie_jax.localized_estimator import (
    LocalSample,
    NeighbourhoodSelection,
    gather_local_samples,
    local_energy_fn,
    localized_batch_means,
    localized_expectation,
    molecule_neighbourhoods,
    neighbourhood_bond_lengths,
    neighbourhood_max_deviation,
    neighbourhoods_from_bonds,
    select_neighbourhoods,
)

__all__ = [
    # Global estimator (this module).
    "boltzmann_batch_means",
    "boltzmann_expectation",
    "boltzmann_jacobian",
    "finite_sample_mask",
    # Re-exported from stabie_jax.hyperparameters.
    "CONVENTIONS",
    "ExactHyperparameters",
    "authors_hyperparameters_to_exact",
    "authors_learning_rate_to_exact",
    "exact_hyperparameters",
    # Re-exported from stabie_jax.localized_estimator.
    "LocalSample",
    "NeighbourhoodSelection",
    "gather_local_samples",
    "local_energy_fn",
    "localized_batch_means",
    "localized_expectation",
    "molecule_neighbourhoods",
    "neighbourhood_bond_lengths",
    "neighbourhood_max_deviation",
    "neighbourhoods_from_bonds",
    "select_neighbourhoods",
]


# ---------------------------------------------------------------------------------------------
# Mask of finite samples.


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
      A jitted ``(params, samples, mask=None, log_weights=None) -> jacobian`` where
      ``samples`` is a pytree with leading axis ``[N, ...]`` (e.g. positions
      ``[N, n_atoms, 3]`` Å), ``mask`` is ``[N]`` bool, ``log_weights`` ``[N]`` (module
      docstring, Weighted samples), and ``jacobian`` has the structure of ``params`` with leaves
      ``[*obs_shape, *param_leaf_shape]`` (as ``jax.jacrev`` of the expectation).
    """

    def jacobian(params, samples, mask=None, log_weights=None):
        n = _num_samples(samples)
        mask = _resolve_mask(mask, n)
        samples = _guard(samples, mask)
        g, obs_shape = _observables(observable_fn, samples, batch_size)
        w = _sample_weights(mask, log_weights, g.dtype)
        batch_id, sums, weight, b, denominator = _batch_structure(mask, n, batch_size, g.dtype, w)
        n_batches = sums.shape[0]
        dg = _centred_observables(g, mask, batch_id, sums, n_batches, w)
        scale = weight / (kT * denominator)
        per_sample_grad = jax.vmap(jax.grad(energy_fn), in_axes=(None, 0))

        xs, _ = _pad_and_split(samples, n, b)
        dgs, _ = _pad_and_split(dg, n, b)  # padded rows repeat row 0; masked below
        ms, _ = _pad_and_split(mask, n, b)
        ms = ms & (jnp.arange(n_batches * b) < n).reshape(n_batches, b)
        ws, _ = _pad_and_split(mask.astype(g.dtype) if w is None else w, n, b)

        def batch_term(x_b, dg_b, m_b, w_b, s_b):
            grads = per_sample_grad(params, x_b)
            m_f = m_b.astype(dg_b.dtype)
            w_f = w_b * m_f
            dg_b = dg_b * w_f[:, None]
            total = jnp.sum(w_f)
            total = jnp.where(total > 0, total, 1.0)

            def leaf(gr):
                flat = gr.reshape(gr.shape[0], -1)
                centred = (flat - (w_f @ flat) / total) * m_f[:, None]
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
            flat_jac = batch_term(first, dgs[0], ms[0], ws[0], scale[0])
        else:
            flat_jac, _ = jax.lax.scan(body, zeros, (xs, dgs, ms, ws, scale))
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
    mesh: jax.sharding.Mesh | None = None,
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
      mesh: if given (several devices), the samples are split over its devices: each computes
        the observables of its share and ``∇_θ Σ c_i U_θ(x_i)`` over it (in ``chunk_size``
        chunks), and the shares' gradients are summed. The result is the same up to round-off.

    Returns:
      A jitted ``(params, samples, mask=None, log_weights=None) -> ⟨g⟩`` of shape
      ``[*obs_shape]`` (with ``log_weights``, the self-normalised weighted mean).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> expect = boltzmann_expectation(lambda p, x: 0.5 * p * x**2, lambda x: x**2, kT=1.0)
      >>> x = jax.random.normal(jax.random.key(1), (50_000,))      # samples at p = 1
      >>> round(float(jax.grad(lambda p: expect(p, x))(1.0)), 1)   # exact: -kT/p² = -1
      -1.0
    """

    return _global(energy_fn, observable_fn, kT, batch_size, chunk_size, mesh, per_batch=False)


def boltzmann_batch_means(
    energy_fn: Callable,
    observable_fn: Callable,
    kT: float,
    *,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
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
      energy_fn, observable_fn, kT, batch_size, chunk_size, mesh: as for
        :func:`boltzmann_expectation`.

    Returns:
      A jitted ``(params, samples, mask=None, log_weights=None) ->
      (means [n_batches, *obs_shape], weights [n_batches])``; ``weights`` (not
      differentiable) are proportional to the batches' valid-sample counts (their weight sums
      with ``log_weights``), sum to 1, and are 0 for batches with fewer than 2 valid samples.
    """

    return _global(energy_fn, observable_fn, kT, batch_size, chunk_size, mesh, per_batch=True)


def _global(energy_fn, observable_fn, kT, batch_size, chunk_size, mesh, *, per_batch: bool):
    """Shared body of :func:`boltzmann_expectation` and :func:`boltzmann_batch_means`."""

    def value(g, mask, obs_shape, log_weights):
        w = _sample_weights(mask, log_weights, g.dtype)
        return _estimate_value(g, mask, obs_shape, batch_size, per_batch, w)

    @jax.custom_vjp
    def _value(params, samples, mask, log_weights):
        g, obs_shape = _observables(observable_fn, samples, chunk_size, mesh)
        return value(g, mask, obs_shape, log_weights)

    def fwd(params, samples, mask, log_weights):
        g, obs_shape = _observables(observable_fn, samples, chunk_size, mesh)
        out = value(g, mask, obs_shape, log_weights)
        return out, (params, samples, mask, log_weights, g)

    def bwd(residuals, v):
        params, samples, mask, log_weights, g = residuals
        coefficients = _batch_coefficients if per_batch else _sample_coefficients
        w = _sample_weights(mask, log_weights, g.dtype)
        c = coefficients(g, mask, kT, batch_size, v, w)
        grad = _weighted_energy_grad(energy_fn, params, samples, c, chunk_size, mesh)
        return grad, None, None, None if log_weights is None else jnp.zeros_like(log_weights)

    _value.defvjp(fwd, bwd)

    def expectation(params, samples, mask=None, log_weights=None):
        n = _num_samples(samples)
        mask = _resolve_mask(mask, n)
        out = _value(params, _guard(samples, mask), mask, log_weights)
        if not per_batch:
            return out
        w = _sample_weights(mask, log_weights, jnp.result_type(float))
        return out, _batch_weights(mask, n, batch_size, w)

    return jax.jit(expectation)
