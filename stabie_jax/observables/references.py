"""Reference observables from canonical frames, at the frames' temperature or reweighted.

* :func:`h_of_r_reference_at`: the reference h(r) at a temperature; the plain histogram at the
  frames' own temperature, a Boltzmann-reweighted one elsewhere;
* :func:`reweighted_h_of_r_reference` and :func:`effective_sample_size_vs_temperature`
  (docs/method.md, Temperature transfer and N_eff): weights with the *potential* energy (see
  :func:`reweighted_h_of_r_reference` for why the kinetic energy is left out).

Units: Å, eV, K.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np

from stabie_jax import reweighting, units
from stabie_jax.observables import functions

__all__ = [
    "effective_sample_size_vs_temperature",
    "h_of_r_reference_at",
    "reweighted_h_of_r_reference",
]


def h_of_r_reference_at(
    positions,
    potential_energies,
    temperature_kelvin: float,
    reference_temperature_kelvin: float | None,
    *,
    r_max: float,
    n_bins: int,
) -> np.ndarray:
    """``[n_bins]`` reference h(r) at ``temperature_kelvin`` (sums to 100).

    The frames are canonical samples at ``reference_temperature_kelvin`` (MD17: the 500 K AIMD
    run). At that temperature (or when it is ``None``) this is the plain histogram
    :func:`stabie_jax.observables.h_of_r_reference`; at another temperature the frames are
    Boltzmann-reweighted with their energies (:func:`reweighted_h_of_r_reference`), and the
    effective sample size is logged.

    Args:
      positions: ``[F, N, 3]`` Å.
      potential_energies: ``[F]`` eV (used only when reweighting).
      temperature_kelvin: where the h(r) is wanted, K.
      reference_temperature_kelvin: where the frames were sampled, K, or ``None``.
      r_max, n_bins: h(r) grid (Å, count).
    """
    positions = np.asarray(positions)
    if reference_temperature_kelvin is None or np.isclose(
        float(reference_temperature_kelvin), float(temperature_kelvin)
    ):
        return np.asarray(
            functions.h_of_r_reference(jnp.asarray(positions), r_max=r_max, n_bins=n_bins)
        )
    h_ref, n_eff = reweighted_h_of_r_reference(
        positions,
        np.asarray(potential_energies),
        float(reference_temperature_kelvin),
        float(temperature_kelvin),
        r_max=r_max,
        n_bins=n_bins,
    )
    logging.info(
        "h(r) reference reweighted %g K -> %g K (N_eff = %.0f of %d frames)",
        reference_temperature_kelvin,
        temperature_kelvin,
        n_eff,
        positions.shape[0],
    )
    return np.asarray(h_ref)


def reweighted_h_of_r_reference(
    positions,
    potential_energies,
    temperature_from_kelvin: float,
    temperature_to_kelvin: float,
    r_max: float = 10.0,
    n_bins: int = 500,
    frame_batch: int = 1000,
) -> tuple[np.ndarray, float]:
    """Reference h(r) at another temperature by Boltzmann reweighting of canonical samples.

    Each frame's pair-distance histogram (the grid of
    :func:`stabie_jax.observables.h_of_r_reference`, bin 0 zeroed) enters with the weight
    ``w_i ∝ exp(−U_i (1/kT₂ − 1/kT₁))`` (:mod:`stabie_jax.reweighting`); the result is normalised
    to sum 100. With ``T₂ = T₁`` it equals the unweighted reference.

    **H is the potential energy only.** h(r) depends on positions alone, and in the canonical
    ensemble momenta are independent of positions with a Maxwell–Boltzmann factor that
    integrates out of the ratio exactly, so weighting by ``U`` gives the exact configurational
    expectation at T₂; adding kinetic energies (which MD17 frames do not even carry) would only
    add variance (smaller N_eff). The samples must be canonical at T₁ under the reference
    potential whose energies are given (e.g. the 500 K AIMD training split).

    Args:
      positions: ``[F, N, 3]`` Å.
      potential_energies: ``[F]`` eV (reference energies of the same frames).
      temperature_from_kelvin: T₁, K (500 for aspirin).
      temperature_to_kelvin: T₂, K.
      r_max, n_bins: h(r) grid.
      frame_batch: frames per distance batch (memory).

    Returns:
      ``(h [n_bins] summing to 100, n_eff)``.
    """
    x = np.asarray(positions)
    e = np.asarray(potential_energies, np.float64)
    if e.shape != (x.shape[0],):
        raise ValueError(f"need one energy per frame: {e.shape} vs {x.shape[0]} frames")
    log_w = _log_weights(e, temperature_from_kelvin, temperature_to_kelvin)
    w = np.exp(log_w)
    edges = np.linspace(functions.H_OF_R_MIN, r_max, n_bins + 1)
    counts = np.zeros(n_bins)
    for start in range(0, x.shape[0], frame_batch):
        d = np.asarray(functions.pair_distances(jnp.asarray(x[start : start + frame_batch])))
        ww = np.broadcast_to(w[start : start + frame_batch, None], d.shape)
        counts += np.histogram(d.reshape(-1), bins=edges, weights=ww.reshape(-1))[0]
    counts[0] = 0.0
    return 100.0 * counts / counts.sum(), _effective_sample_size(log_w)


def _log_weights(energies, t_from, t_to) -> np.ndarray:
    """Normalised log weights (float64 host copy of :mod:`stabie_jax.reweighting`)."""
    e = np.asarray(energies, np.float64)
    ok = np.isfinite(e)
    shifted = np.where(ok, e - e[ok].mean(), 0.0)
    with jax.enable_x64(True):
        lw = reweighting.log_reweighting_weights(
            jnp.asarray(shifted),
            units.kT(float(t_from)),
            units.kT(float(t_to)),
            mask=jnp.asarray(ok),
        )
        return np.asarray(lw, np.float64)


def _effective_sample_size(log_weights: np.ndarray) -> float:
    """:func:`stabie_jax.reweighting.effective_sample_size` of host float64 log weights, computed
    in float64 (the evaluation's numbers are float64)."""
    with jax.enable_x64(True):
        return float(reweighting.effective_sample_size(jnp.asarray(log_weights, jnp.float64)))


def effective_sample_size_vs_temperature(
    potential_energies, temperature_kelvin: float, temperatures_kelvin
) -> tuple[np.ndarray, np.ndarray]:
    """N_eff of reweighting samples from T₁ to each temperature (the paper's Fig. 8).

    See docs/method.md, Temperature transfer and N_eff.

    Args:
      potential_energies: ``[F]`` eV at T₁ (potential only; see
        :func:`reweighted_h_of_r_reference`).
      temperature_kelvin: T₁, K.
      temperatures_kelvin: ``[T]`` target temperatures, K.

    Returns:
      ``(temperatures [T] K, n_eff [T])``; ``n_eff`` is ``F`` at T₁ and decreases away from it.
    """
    temps = np.asarray(temperatures_kelvin, np.float64).reshape(-1)
    n_eff = np.array(
        [
            _effective_sample_size(_log_weights(potential_energies, temperature_kelvin, t))
            for t in temps
        ]
    )
    return temps, n_eff
