"""Radial and angular bases, activation and initialiser used by GemNet-T.

GemNet (Gasteiger, Groß, Günnemann, NeurIPS 2021) expands every interatomic distance ``d`` in a
radial basis and every angle between two edges that share an atom in a circular basis:

* **radial basis** (the "Gaussian" variant the water model uses): ``num_radial`` Gaussians on the
  scaled distance ``x = d / cutoff`` with centres ``mu_k = k / (num_radial - 1)``, ``k = 0..``,
  and width equal to the spacing ``delta = 1 / (num_radial - 1)``:
  ``g_k(x) = exp(-(x - mu_k)^2 / (2 delta^2))``, multiplied by the envelope ``u(x)``;
* **polynomial envelope** of exponent ``p`` (DimeNet), smooth up to second order at the cutoff:
  ``u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2)`` for ``x < 1``, else 0;
* **circular basis**: real spherical harmonics of order ``m = 0`` of the angle ``phi`` between
  the two edges, ``Y_l^0(cos phi) = sqrt((2l+1)/(4 pi)) P_l(cos phi)``, ``l = 0..num_spherical-1``
  (Legendre polynomials by their three-term recurrence, so no ``arccos`` and no singular
  gradient at ``phi = 0, pi``).

Also here: the scaled SiLU activation ``silu(x) / 0.6`` and the "He-orthogonal" initialiser
(a random orthogonal matrix, standardised to zero mean and unit variance over the fan-in and
scaled by ``1/sqrt(fan_in)``), both as described for GemNet.

All functions are pure ``jax.numpy`` and work for any float dtype.

Examples:
  >>> import jax.numpy as jnp
  >>> float(polynomial_envelope(jnp.array(1.0), 5))
  0.0
  >>> gaussian_radial_basis(jnp.array([0.0, 2.5]), cutoff=5.0, num_radial=6).shape
  (2, 6)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = [
    "SILU_SCALE",
    "circular_basis",
    "gaussian_radial_basis",
    "he_orthogonal_init",
    "legendre_polynomials",
    "polynomial_envelope",
    "scaled_silu",
]

SILU_SCALE = 1.0 / 0.6
"""Output scale of GemNet's activation: ``silu(x) * SILU_SCALE`` (keeps unit variance)."""


def scaled_silu(x: jax.Array) -> jax.Array:
    """``silu(x) / 0.6``, the activation of every hidden GemNet layer."""
    return jax.nn.silu(x) * SILU_SCALE


def polynomial_envelope(x: jax.Array, exponent: int) -> jax.Array:
    """Smooth cutoff envelope on the scaled distance ``x = d / cutoff`` (dimensionless).

    Args:
      x: any shape, ``d / cutoff``; non-negative.
      exponent: ``p`` (5 for GemNet-T on water).

    Returns:
      Same shape as ``x``: 1 at ``x = 0``, 0 with zero first and second derivative at
      ``x >= 1``.
    """
    p = float(exponent)
    a = -(p + 1.0) * (p + 2.0) / 2.0
    b = p * (p + 2.0)
    c = -p * (p + 1.0) / 2.0
    # Clamp before the polynomial so that far padded edges (x ~ 200) never reach x**7 ~ 1e16,
    # which would overflow the discarded branch in float16/bfloat16 and poison gradients.
    xc = jnp.minimum(x, 1.0)
    value = 1.0 + a * xc**exponent + b * xc ** (exponent + 1) + c * xc ** (exponent + 2)
    return jnp.where(x < 1.0, value, jnp.zeros_like(value))


def gaussian_radial_basis(
    distances: jax.Array, cutoff: float, num_radial: int, envelope_exponent: int = 5
) -> jax.Array:
    """Enveloped Gaussian radial basis of GemNet-T.

    Args:
      distances: ``[n]`` Å.
      cutoff: Å.
      num_radial: number of Gaussians (>= 2).
      envelope_exponent: ``p`` of :func:`polynomial_envelope`.

    Returns:
      ``[n, num_radial]`` dimensionless; exactly zero for ``distance >= cutoff``.
    """
    if num_radial < 2:
        raise ValueError(f"num_radial must be >= 2 for the Gaussian basis, got {num_radial}")
    x = distances / cutoff
    spacing = 1.0 / (num_radial - 1)
    centres = jnp.linspace(0.0, 1.0, num_radial, dtype=x.dtype)
    # Distances far outside the cutoff (padding) are clamped so exp() underflows cleanly.
    xc = jnp.minimum(x, 2.0)
    gauss = jnp.exp(-0.5 * ((xc[..., None] - centres) / spacing) ** 2)
    return polynomial_envelope(x, envelope_exponent)[..., None] * gauss


def legendre_polynomials(z: jax.Array, num: int) -> jax.Array:
    """``P_0(z) .. P_{num-1}(z)`` by Bonnet's recurrence.

    Args:
      z: any shape, ``cos(angle)`` in ``[-1, 1]``.
      num: number of polynomials (>= 1).

    Returns:
      ``[*z.shape, num]``.
    """
    polys = [jnp.ones_like(z)]
    if num > 1:
        polys.append(z)
    for ell in range(1, num - 1):
        polys.append(((2 * ell + 1) * z * polys[ell] - ell * polys[ell - 1]) / (ell + 1))
    return jnp.stack(polys, axis=-1)


def circular_basis(cos_angle: jax.Array, num_spherical: int) -> jax.Array:
    """Real spherical harmonics ``Y_l^0`` of the angle between two edges.

    Args:
      cos_angle: any shape, cosine of the angle (dimensionless).
      num_spherical: number of orders ``l = 0 .. num_spherical - 1``.

    Returns:
      ``[*cos_angle.shape, num_spherical]``.
    """
    norms = jnp.asarray(
        [math.sqrt((2 * ell + 1) / (4.0 * math.pi)) for ell in range(num_spherical)],
        dtype=cos_angle.dtype,
    )
    return legendre_polynomials(cos_angle, num_spherical) * norms


def he_orthogonal_init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """GemNet's "He-orthogonal" kernel initialiser (Flax initializer signature).

    The kernel's last axis is the output axis; all other axes form the fan-in. A random
    orthogonal matrix is standardised over the fan-in (zero mean, unit variance for each
    output) and scaled by ``1 / sqrt(fan_in)``.
    """
    fan_in = math.prod(shape[:-1])
    kernel = jax.nn.initializers.orthogonal(column_axis=-1)(key, shape, jnp.float32)
    axes = tuple(range(len(shape) - 1))
    mean = jnp.mean(kernel, axis=axes, keepdims=True)
    var = jnp.var(kernel, axis=axes, keepdims=True, ddof=1)
    kernel = (kernel - mean) / jnp.sqrt(var + 1e-6)
    return (kernel / math.sqrt(fan_in)).astype(dtype)
