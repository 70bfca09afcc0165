"""Temperature reweighting of canonical samples and its effective sample size.

The method and the paper's use of it: docs/method.md, Temperature transfer and N_eff.

Samples ``Γ_1..Γ_N`` drawn at temperature T1 (``kT1`` in eV) estimate averages at T2 with the
self-normalised importance weights

.. math::

    w_i = \\frac{\\exp(-H_i (1/kT_2 - 1/kT_1))}{\\sum_j \\exp(-H_j (1/kT_2 - 1/kT_1))},
    \\qquad ⟨g⟩_{T_2} ≈ \\sum_i w_i\\, g(Γ_i),

computed in log space (``logsumexp``) so that energies of thousands of eV neither overflow nor
underflow. The statistical quality is measured by the effective sample size
``N_eff = exp(-Σ_i w_i ln w_i)`` (= N for uniform weights, → 1 when one sample dominates; for
large N it tends to ``N·exp(-KL(P_T2 ‖ P_T1))``). The paper keeps temperatures with
``N_eff ≥ 1000`` (350–700 K from 500 K aspirin data), see :func:`temperature_range`.

**Which energy.** The paper writes the Hamiltonian ``H = K + U``. For observables of the
positions only (h(r), RDFs, bond lengths) the kinetic factor of the Boltzmann distribution
integrates out exactly, so the potential energy alone (``kinetic_energies=None``, the default)
gives the same expectation with a larger N_eff; MD17/rMD17 reference frames carry no momenta, so
it is also the only choice there. Pass ``kinetic_energies`` to weight by the total energy, which
is required for observables that depend on momenta.

Precision: only energy *differences* matter; the functions subtract the mean valid energy before
scaling. With x64 off, energies of large magnitude (aspirin ≈ -17 638 eV) lose precision when
they are converted to float32, so shift them on the host first (:func:`temperature_range` does).

Units: energies and kT in eV, temperatures in K (converted with :func:`stabie_jax.units.kT`).

Examples:
  >>> import numpy as np
  >>> x = np.random.default_rng(0).normal(0.0, np.sqrt(0.05), 100_000)  # U = x²/2 at kT 0.05
  >>> log_w = log_reweighting_weights(0.5 * x**2, 0.05, 0.06)
  >>> round(float(reweighted_average(x**2, np.exp(log_w))), 3)           # exact: kT2 = 0.06
  0.06
  >>> round(float(effective_sample_size(log_reweighting_weights(0.5 * x**2, 0.05, 0.05))))
  100000
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from stabie_jax import units

__all__ = [
    "effective_sample_size",
    "effective_sample_size_curve",
    "kish_effective_sample_size",
    "log_reweighting_weights",
    "parameter_log_weights",
    "reweighted_average",
    "temperature_range",
]


def _valid(energies: jax.Array, mask) -> jax.Array:
    ok = jnp.isfinite(energies)
    if mask is not None:
        mask = jnp.asarray(mask, dtype=bool)
        if mask.shape != energies.shape:
            raise ValueError(f"mask must have shape {energies.shape}, got {mask.shape}")
        ok = ok & mask
    return ok


@jax.jit
def log_reweighting_weights(energies, kT_from, kT_to, *, kinetic_energies=None, mask=None):
    """Normalised log weights ``ln w_i`` for reweighting samples from ``kT_from`` to ``kT_to``.

    Args:
      energies: ``[N]`` potential energies U_i, eV.
      kT_from: thermal energy the samples were drawn at, eV.
      kT_to: target thermal energy, eV.
      kinetic_energies: optional ``[N]`` kinetic energies K_i, eV; if given the weights use the
        total energy H = U + K (module docstring).
      mask: optional ``[N]`` bool; False (or a non-finite energy) gives weight 0.

    Returns:
      ``[N]`` log weights with ``logsumexp = 0``; ``-inf`` for excluded samples.
    """
    energies = jnp.asarray(energies)
    if energies.ndim != 1:
        raise ValueError(f"energies must be [N], got shape {energies.shape}")
    total = energies
    if kinetic_energies is not None:
        kinetic_energies = jnp.asarray(kinetic_energies)
        if kinetic_energies.shape != energies.shape:
            raise ValueError(
                f"kinetic_energies must match energies {energies.shape}, got "
                f"{kinetic_energies.shape}"
            )
        total = energies + kinetic_energies
    ok = _valid(total, mask)
    total = jnp.where(ok, total, 0.0)
    reference = jnp.sum(jnp.where(ok, total, 0.0)) / jnp.maximum(jnp.sum(ok), 1)
    log_unnormalised = -(total - reference) * (1.0 / kT_to - 1.0 / kT_from)
    log_unnormalised = jnp.where(ok, log_unnormalised, -jnp.inf)
    log_norm = jax.nn.logsumexp(jnp.where(ok, log_unnormalised, -jnp.inf))
    log_norm = jnp.where(jnp.any(ok), log_norm, 0.0)
    return jnp.where(ok, log_unnormalised - log_norm, -jnp.inf)


@jax.jit
def reweighted_average(observables, weights):
    """``Σ_i w_i g_i``: the reweighted estimate of ⟨g⟩ at the target temperature.

    Args:
      observables: ``[N, *obs_shape]`` values g_i (any units); rows with zero weight may hold
        NaN (they are excluded with a ``where``, not multiplied).
      weights: ``[N]`` normalised weights, ``exp`` of :func:`log_reweighting_weights`.

    Returns:
      ``[*obs_shape]``.
    """
    observables = jnp.asarray(observables)
    weights = jnp.asarray(weights)
    w = weights.reshape((-1,) + (1,) * (observables.ndim - 1))
    safe = jnp.where(w > 0, observables, 0.0)
    return jnp.sum(w * safe, axis=0)


@jax.jit
def effective_sample_size(log_weights):
    """Kish–entropy effective sample size ``N_eff = exp(-Σ w ln w)`` from normalised log weights.

    Args:
      log_weights: ``[N]`` from :func:`log_reweighting_weights` (``-inf`` = excluded).

    Returns:
      Scalar in ``[1, N_valid]``.
    """
    log_weights = jnp.asarray(log_weights)
    ok = jnp.isfinite(log_weights)
    safe = jnp.where(ok, log_weights, 0.0)
    entropy = -jnp.sum(jnp.where(ok, jnp.exp(safe) * safe, 0.0))
    return jnp.exp(entropy)


@jax.jit
def parameter_log_weights(energies_new, energies_old, kT, mask=None):
    """Log importance weights that move samples of ``P_θ`` to ``P_θ′`` at one temperature.

    ``ℓ_i = -(U_θ′(x_i) - U_θ(x_i)) / kT`` (unnormalised), ``-inf`` for excluded or non-finite
    samples; the mean valid difference is subtracted first (only differences matter).

    Args:
      energies_new: ``[N]`` eV, ``U_θ′`` of the samples (the parameters to estimate at).
      energies_old: ``[N]`` eV, ``U_θ`` of the same samples (the parameters they were drawn
        with, evaluated with the same energy function).
      kT: eV.
      mask: optional ``[N]`` bool of usable samples.

    Returns:
      ``[N]`` log weights, for the estimators' ``log_weights`` and
      :func:`kish_effective_sample_size`.
    """
    delta = jnp.asarray(energies_new) - jnp.asarray(energies_old)
    ok = jnp.isfinite(delta)
    if mask is not None:
        ok = ok & jnp.asarray(mask, bool)
    shift = jnp.sum(jnp.where(ok, delta, 0.0)) / jnp.maximum(jnp.sum(ok), 1)
    return jnp.where(ok, -(delta - shift) / kT, -jnp.inf)


@jax.jit
def kish_effective_sample_size(log_weights):
    """Kish's effective sample size ``(Σ w)² / Σ w²`` from unnormalised log weights.

    ``N`` for equal weights, 1 when one sample dominates; it is the number of independent
    equal-weight samples giving the same variance of a weighted mean.

    Args:
      log_weights: ``[N]`` (``-inf`` = excluded).

    Returns:
      Scalar in ``[1, N_valid]`` (0 with no valid sample).

    Examples:
      >>> round(float(kish_effective_sample_size(jnp.log(jnp.array([1.0, 1.0, 2.0])))), 3)
      2.667
    """
    log_weights = jnp.asarray(log_weights)
    ok = jnp.isfinite(log_weights)
    top = jnp.max(jnp.where(ok, log_weights, -jnp.inf))
    w = jnp.where(ok, jnp.exp(jnp.where(ok, log_weights - jnp.where(ok, top, 0.0), 0.0)), 0.0)
    return jnp.sum(w) ** 2 / jnp.maximum(jnp.sum(w * w), jnp.finfo(w.dtype).tiny)


@jax.jit
def effective_sample_size_curve(energies, kT_from, kT_to, *, kinetic_energies=None, mask=None):
    """``N_eff`` for each target thermal energy in ``kT_to`` (``[T]`` eV); returns ``[T]``."""

    def one(kt):
        return effective_sample_size(
            log_reweighting_weights(
                energies, kT_from, kt, kinetic_energies=kinetic_energies, mask=mask
            )
        )

    return jax.vmap(one)(jnp.asarray(kT_to))


def temperature_range(
    energies,
    temperature_kelvin: float,
    candidate_temperatures_kelvin,
    *,
    threshold: float = 1000.0,
    kinetic_energies=None,
    mask=None,
) -> tuple[float, float, np.ndarray]:
    """Contiguous range of candidate temperatures around T1 with ``N_eff ≥ threshold``.

    The paper's criterion (docs/method.md, Temperature transfer and N_eff): with threshold 1000
    the 500 K aspirin data support 350–700 K.
    Runs on the host: energies are shifted in float64 numpy before the device computation.

    Args:
      energies: ``[N]`` potential energies at T1, eV.
      temperature_kelvin: T1, K.
      candidate_temperatures_kelvin: ``[T]`` increasing grid of target temperatures, K.
      threshold: minimum effective sample size (paper: 1000).
      kinetic_energies: optional ``[N]`` eV (weights by total energy; module docstring).
      mask: optional ``[N]`` bool of samples to use.

    Returns:
      ``(t_low, t_high, n_eff)``: the lowest and highest candidate temperatures (K) of the
      contiguous run with ``N_eff ≥ threshold`` that contains the candidate closest to T1, and
      the ``[T]`` array of N_eff on the grid.

    Raises:
      ValueError: if the grid is not increasing or N_eff is below the threshold even at the
        candidate closest to T1 (too few samples).
    """
    temps = np.asarray(candidate_temperatures_kelvin, dtype=np.float64).reshape(-1)
    if temps.size == 0 or np.any(np.diff(temps) <= 0):
        raise ValueError("candidate_temperatures_kelvin must be a non-empty increasing grid")
    e = np.asarray(energies, dtype=np.float64)
    if kinetic_energies is not None:
        e = e + np.asarray(kinetic_energies, dtype=np.float64)
    ok = np.isfinite(e) if mask is None else (np.isfinite(e) & np.asarray(mask, dtype=bool))
    if not ok.any():
        raise ValueError("no valid (finite, unmasked) energies to reweight")
    shifted = np.where(ok, e - e[ok].mean(), 0.0)
    n_eff = np.asarray(
        effective_sample_size_curve(
            jnp.asarray(shifted),
            units.kT(float(temperature_kelvin)),
            jnp.asarray(units.kT(temps)),
            mask=jnp.asarray(ok),
        ),
        dtype=np.float64,
    )
    centre = int(np.argmin(np.abs(temps - temperature_kelvin)))
    if n_eff[centre] < threshold:
        raise ValueError(
            f"N_eff = {n_eff[centre]:.1f} < threshold {threshold} already at "
            f"{temps[centre]} K: use more samples (N = {int(ok.sum())}) or a lower threshold"
        )
    lo = centre
    while lo > 0 and n_eff[lo - 1] >= threshold:
        lo -= 1
    hi = centre
    while hi < temps.size - 1 and n_eff[hi + 1] >= threshold:
        hi += 1
    return float(temps[lo]), float(temps[hi]), n_eff
