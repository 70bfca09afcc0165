"""Radial bases and smooth cutoff functions of interatomic distances.

Message-passing potentials expand each edge length ``r`` (Å) in a small set of radial basis
functions and multiply the result by a cutoff function that takes the edge smoothly to zero at
the cutoff radius ``r_c``. Every function here is a pure ``jax.numpy`` function of an array of
edge lengths (any shape) and returns the basis along a new trailing axis, so the same helpers
serve SchNet, NequIP and GemNet-T:

==========================  ===================================================================
:func:`gaussian_smearing`   ``exp(coeff (r - mu_k)^2)`` on a uniform grid ``mu_k`` (SchNet;
                            GemNet's Gaussian RBF on ``r / r_c``).
:func:`bessel_basis`        ``(2 / r_c) sin(w_k r / r_c) / r`` with ``w_k = k pi`` (DimeNet,
                            NequIP; ``w_k`` may be trainable).
:func:`cosine_cutoff`       ``0.5 (cos(pi r / r_c) + 1)`` for ``r < r_c``, else 0 (SchNet).
:func:`polynomial_cutoff`   DimeNet's polynomial envelope of degree ``p`` (NequIP ``p = 6``,
                            GemNet ``p = 5``): value, first and second derivative vanish at
                            ``r_c``.
==========================  ===================================================================

Cutoffs return exactly zero for ``r >= r_c`` (also for the 1000 Å dummy length of padded edges,
see :mod:`stabie_jax.models.graph`), and their gradients there are exactly zero too, so edges
beyond the cutoff never contribute to energies or forces.

References:
  K. T. Schütt et al., SchNet, J. Chem. Phys. 148, 241722 (2018).
  J. Gasteiger, J. Groß, S. Günnemann, DimeNet, ICLR 2020, eqs. (7) and (8).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "bessel_basis",
    "bessel_frequencies",
    "cosine_cutoff",
    "gaussian_coefficient",
    "gaussian_offsets",
    "gaussian_smearing",
    "polynomial_cutoff",
]


def gaussian_offsets(start: float, stop: float, num: int) -> np.ndarray:
    """Centres of a uniform Gaussian grid, as ``torch.linspace(start, stop, num)`` in float32.

    torch_geometric stores SchNet's centres as a float32 buffer; rounding them the same way
    keeps the expansion bit-compatible with imported checkpoints.

    Args:
      start, stop: first and last centre (Å, or dimensionless for scaled distances).
      num: number of Gaussians, at least 2.

    Returns:
      ``[num]`` float64 array holding float32-representable values.
    """
    if num < 2:
        raise ValueError(f"gaussian_offsets needs num >= 2 (got {num})")
    return np.linspace(start, stop, num, dtype=np.float32).astype(np.float64)


def gaussian_coefficient(offsets) -> float:
    """torch_geometric's width ``coeff = -0.5 / (mu_1 - mu_0)^2`` of a Gaussian grid.

    Args:
      offsets: ``[num]`` centres (see :func:`gaussian_offsets`).

    Returns:
      The (negative) coefficient in units of 1/length².
    """
    offsets = np.asarray(offsets, dtype=np.float64)
    spacing = float(np.float32(offsets[1]) - np.float32(offsets[0]))
    return -0.5 / spacing**2


def gaussian_smearing(r: jax.Array, offsets, coeff: float | None = None) -> jax.Array:
    """Gaussian expansion ``exp(coeff (r - mu_k)^2)`` of distances.

    Args:
      r: distances, any shape ``[...]`` (Å or scaled).
      offsets: ``[num]`` Gaussian centres ``mu_k`` in the units of ``r``.
      coeff: negative width coefficient; default :func:`gaussian_coefficient` of ``offsets``.

    Returns:
      ``[..., num]`` basis values in (0, 1], dtype of ``r``.

    Examples:
      >>> mu = gaussian_offsets(0.0, 5.0, 25)
      >>> gaussian_smearing(jnp.array([0.0, 2.5]), mu).shape
      (2, 25)
    """
    if coeff is None:
        coeff = gaussian_coefficient(offsets)
    mu = jnp.asarray(np.asarray(offsets), dtype=r.dtype)
    return jnp.exp(coeff * (r[..., None] - mu) ** 2)


def bessel_frequencies(num: int) -> np.ndarray:
    """Default Bessel frequencies ``w_k = k pi`` for ``k = 1..num`` (NequIP's initial values)."""
    return np.linspace(1.0, num, num) * math.pi


def bessel_basis(r: jax.Array, cutoff: float, frequencies) -> jax.Array:
    """Radial Bessel basis ``(2 / r_c) sin(w_k r / r_c) / r`` (DimeNet eq. 7, nequip BesselBasis).

    Args:
      r: distances ``[...]`` in Å, strictly positive.
      cutoff: ``r_c`` in Å.
      frequencies: ``[num]`` dimensionless ``w_k`` (default :func:`bessel_frequencies`; NequIP
        trains them).

    Returns:
      ``[..., num]`` basis values in 1/Å.
    """
    w = jnp.asarray(frequencies)
    x = r[..., None]
    return (2.0 / cutoff) * jnp.sin(w * x / cutoff) / x


def cosine_cutoff(r: jax.Array, cutoff: float) -> jax.Array:
    """SchNet's cosine cutoff ``0.5 (cos(pi r / r_c) + 1)`` for ``r < r_c``, exactly 0 beyond.

    The value and the first derivative vanish at ``r_c``; the second derivative does not.

    Args:
      r: distances ``[...]`` in Å.
      cutoff: ``r_c`` in Å.

    Returns:
      ``[...]`` dimensionless weights in [0, 1].
    """
    inside = r < cutoff
    r_safe = jnp.where(inside, r, 0.0)
    value = 0.5 * (jnp.cos(math.pi * r_safe / cutoff) + 1.0)
    return jnp.where(inside, value, 0.0)


def polynomial_cutoff(r: jax.Array, cutoff: float, p: int = 6) -> jax.Array:
    """DimeNet's polynomial envelope with ``x = r / r_c``.

    ``f(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2)`` for ``x < 1``, else 0.
    ``f``, ``f'`` and ``f''`` vanish at ``x = 1``. NequIP uses ``p = 6``
    (``PolynomialCutoff_p``), GemNet-T ``p = 5`` (``envelope_exponent``).

    Args:
      r: distances ``[...]`` in Å.
      cutoff: ``r_c`` in Å.
      p: polynomial degree parameter (positive).

    Returns:
      ``[...]`` dimensionless weights in [0, 1].
    """
    if int(p) != p or p <= 0:
        raise ValueError(f"polynomial_cutoff needs a positive integer p (got {p})")
    x = r / cutoff
    inside = x < 1.0
    x = jnp.where(inside, x, 0.0)
    p = int(p)
    value = (
        1.0
        - 0.5 * (p + 1.0) * (p + 2.0) * x**p
        + p * (p + 2.0) * x ** (p + 1)
        - 0.5 * p * (p + 1.0) * x ** (p + 2)
    )
    return jnp.where(inside, value, 0.0)
