"""Observables of MD frames: pure, jit-able, batched over any leading axes.

Every function takes positions ``[..., N, 3]`` (Å) or velocities (any consistent unit) with
arbitrary leading batch axes (frames, replicas) and returns arrays with the same leading axes,
unless it explicitly averages over time (VACF, MSD: time is then the *first* axis, as in
:class:`stabie_jax.md.Trajectory`).

Definitions (docs/method.md, Observables and reference data; as in the authors' code):

* ``h(r)`` (paper eq. in A.4): all ``N(N−1)`` ordered pair distances (no periodic images),
  Gaussian-smeared onto centres ``linspace(1e-6, r_max, n_bins)`` with σ = 0.01 Å, normalised to
  sum 100. The reference version is a histogram (density) on the same grid with bin 0 zeroed,
  normalised to sum 100.
* element-conditioned RDF ``g_ab(r)``: ordered pairs ``i∈a, j∈b, i≠j`` at minimum-image distance,
  binned (or Gaussian-smeared) on ``n_bins`` equal bins of ``[0, r_max]`` and divided by the
  ideal-gas count ``N_a (N_b − δ_ab) / V · 4π/3 (r_hi³ − r_lo³)``, so an ideal gas gives 1.
* VACF: ``C(τ) = ⟨v(t0)·v(t0+τ)⟩ / ⟨v(t0)·v(t0)⟩`` averaged over atoms and all origins ``t0``
  of the window (100 frames by default), so ``C(0) = 1``.
* MSD: ``⟨|Δr_i(τ) − Δr_com(τ)|²⟩`` over atoms and all origins, from unwrapped positions;
  diffusivity is the least-squares slope of MSD against lag time over a stated lag window,
  divided by 6 (Einstein relation in 3-D).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from stabie_jax import units

__all__ = [
    "FRAME_BATCH",
    "H_OF_R_MIN",
    "H_OF_R_SIGMA",
    "bond_angles",
    "bond_lengths",
    "cell_heights",
    "cell_volume",
    "diffusivity",
    "diffusivity_to_angstrom2_per_ps",
    "diffusivity_to_m2_per_s",
    "distribution",
    "gaussian_smearing",
    "h_of_r",
    "h_of_r_centers",
    "h_of_r_reference",
    "mean_squared_displacement",
    "minimum_image_displacement",
    "neighbourhood_bond_lengths",
    "pair_displacements",
    "pair_distances",
    "rdf",
    "rdf_bins",
    "vacf",
    "water_bonds_and_angles",
]

H_OF_R_SIGMA = 0.01
"""Gaussian width of h(r) smearing, Å (authors' value)."""

H_OF_R_MIN = 1e-6
"""First h(r) bin centre, Å (authors' value)."""


FRAME_BATCH = 64
"""Frames processed at once by the per-frame observables (bounds intermediate memory)."""


def _per_frame(fn, x, n_trailing: int):
    """Apply ``fn`` to each ``x[idx]`` over all leading axes, ``FRAME_BATCH`` frames at a time."""
    lead = x.shape[: x.ndim - n_trailing]
    flat = x.reshape((-1,) + x.shape[x.ndim - n_trailing :])
    out = jax.lax.map(fn, flat, batch_size=min(FRAME_BATCH, max(flat.shape[0], 1)))
    return out.reshape(lead + out.shape[1:])


def _histogram_counts(values, low: float, width: float, n_bins: int):
    """Counts ``[n_bins]`` of 1-D ``values`` in equal bins; out-of-range and NaN are dropped."""
    b = jnp.floor((values - low) / width)
    inside = (values >= low) & (values < low + n_bins * width)
    b = jnp.where(inside, b, n_bins).astype(jnp.int32)
    return jnp.bincount(b, length=n_bins + 1)[:n_bins]


def _free_displacement(ra, rb):
    return ra - rb


def minimum_image_displacement(box) -> Callable:
    """Displacement ``Ra − Rb`` wrapped to the nearest periodic image.

    Args:
      box: scalar or ``[3]`` side lengths of an orthorhombic box, or a ``[3, 3]`` box matrix with
        the lattice vectors as columns (JAX-MD's convention; ``md.periodic_space(cell).box``),
        Å. For a triclinic box the fractional displacement is rounded, exact for distances below
        half the smallest cell height (:func:`cell_heights`).
    """
    box = jnp.asarray(box)
    if box.ndim < 2:

        def displacement(ra, rb):
            d = ra - rb
            return d - box * jnp.round(d / box)

        return displacement
    inverse = jnp.linalg.inv(box)

    def displacement(ra, rb):
        fractional = (ra - rb) @ inverse.T
        return (fractional - jnp.round(fractional)) @ box.T

    return displacement


def cell_heights(box) -> np.ndarray:
    """``[3]`` Å, the distances between opposite faces of a periodic box (its side lengths if it
    is orthorhombic); half the smallest is the longest range minimum image is exact to.

    Args:
      box: scalar, ``[3]`` side lengths, or a ``[3, 3]`` box matrix (lattice vectors as columns).
    """
    box = np.asarray(box, np.float64)
    if box.ndim < 2:
        return np.broadcast_to(box, (3,)).copy()
    a = box.T  # rows = lattice vectors
    volume = abs(np.linalg.det(a))
    faces = [np.linalg.norm(np.cross(a[(k + 1) % 3], a[(k + 2) % 3])) for k in range(3)]
    return volume / np.array(faces)


def cell_volume(box) -> float:
    """Å³ of a scalar, ``[3]`` or ``[3, 3]`` (columns) periodic box."""
    box = np.asarray(box, np.float64)
    if box.ndim < 2:
        return float(np.prod(np.broadcast_to(box, (3,))))
    return float(abs(np.linalg.det(box)))


def pair_displacements(positions, displacement_fn: Callable | None = None):
    """All ``[..., N, N, 3]`` displacement vectors ``R_i − R_j`` (Å)."""
    disp = _free_displacement if displacement_fn is None else displacement_fn
    return disp(positions[..., :, None, :], positions[..., None, :, :])


def _safe_norm(v):
    """Norm with a finite gradient at 0 (the diagonal of pair tables); NaN stays NaN."""
    sq = jnp.sum(v**2, axis=-1)
    safe = jnp.where(sq > 0, sq, 1.0)
    return jnp.where(sq > 0, jnp.sqrt(safe), 0.0 * sq)


def pair_distances(positions, displacement_fn: Callable | None = None):
    """Distances of all ``N(N−1)`` ordered pairs ``i ≠ j``.

    Args:
      positions: ``[..., N, 3]`` Å.
      displacement_fn: elementwise displacement (broadcasting), default free space.

    Returns:
      ``[..., N(N−1)]`` Å, row-major over ``(i, j)`` with the diagonal removed.
    """
    n = positions.shape[-2]
    dist = _safe_norm(pair_displacements(positions, displacement_fn))
    off = ~np.eye(n, dtype=bool)
    return dist[..., off]


def gaussian_smearing(values, centers, sigma):
    """Sum of unit-area Gaussians at ``values`` evaluated at ``centers``, times ``sigma·√(2π)``.

    Args:
      values: ``[..., M]``.
      centers: ``[K]``.
      sigma: width (same units).

    Returns:
      ``[..., K]``: ``Σ_m exp(−(c − v_m)²/(2σ²))`` (each value contributes a peak of height 1).
    """
    diff = centers - values[..., :, None]
    return jnp.sum(jnp.exp(-0.5 * (diff / sigma) ** 2), axis=-2)


def h_of_r_centers(r_max: float = 10.0, n_bins: int = 500) -> np.ndarray:
    """h(r) grid ``linspace(1e-6, r_max, n_bins)`` (Å)."""
    return np.linspace(H_OF_R_MIN, r_max, n_bins)


def h_of_r(positions, r_max: float = 10.0, n_bins: int = 500, sigma: float = H_OF_R_SIGMA):
    """Gaussian-smeared distribution of all pair distances, normalised to sum 100.

    Args:
      positions: ``[..., N, 3]`` Å (free space).
      r_max: last centre, Å (aspirin 10, MD22 15).
      n_bins: number of centres (aspirin 500, MD22 750).
      sigma: smearing width, Å.

    Returns:
      ``[..., n_bins]``, each row summing to 100.
    """
    centers = jnp.asarray(h_of_r_centers(r_max, n_bins), positions.dtype)

    def one(r):
        h = gaussian_smearing(pair_distances(r), centers, sigma)
        return 100.0 * h / jnp.sum(h)

    return _per_frame(one, positions, 2)


def h_of_r_reference(positions, r_max: float = 10.0, n_bins: int = 500):
    """Reference h(r): histogram of pair distances over all frames, bin 0 zeroed, sum 100.

    Args:
      positions: ``[F, N, 3]`` Å (any leading axes are pooled).
      r_max, n_bins: ``n_bins`` equal bins on ``[1e-6, r_max]``.

    Returns:
      ``[n_bins]``, summing to 100.
    """
    d = pair_distances(positions).reshape(-1)
    counts, _ = jnp.histogram(d, bins=n_bins, range=(H_OF_R_MIN, r_max))
    counts = counts.astype(positions.dtype).at[0].set(0.0)
    return 100.0 * counts / jnp.sum(counts)


def rdf_bins(r_max: float, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """``(centres, edges)`` of ``n_bins`` equal RDF bins on ``[0, r_max]`` (Å)."""
    edges = np.linspace(0.0, r_max, n_bins + 1)
    return 0.5 * (edges[1:] + edges[:-1]), edges


def rdf(
    positions,
    species,
    pair: tuple[int, int],
    box,
    r_max: float = 6.0,
    n_bins: int = 500,
    sigma: float | None = None,
):
    """Element-conditioned radial distribution function with periodic minimum image.

    Args:
      positions: ``[..., N, 3]`` Å.
      species: ``[N]`` ints (e.g. atomic numbers), static (numpy).
      pair: ``(a, b)`` species values; ordered pairs ``i∈a, j∈b, i≠j`` are counted.
      box: ``[3]`` or scalar orthorhombic side lengths, or a ``[3, 3]`` box matrix (lattice
        vectors as columns), Å (static); requires ``r_max`` at most half the smallest cell
        height (:func:`cell_heights`).
      r_max: range, Å (water: 6).
      n_bins: bins (water: 25 for training, 500 = 0.012 Å for evaluation).
      sigma: if given, Gaussian smearing width (Å) instead of hard binning.

    Returns:
      ``[..., n_bins]`` g(r), 1 for an ideal gas.
    """
    species = np.asarray(species)
    box_np = np.asarray(box, dtype=np.float64)
    half = 0.5 * cell_heights(box_np).min()
    if r_max > half + 1e-9:
        raise ValueError(
            f"rdf: r_max={r_max} Å exceeds half the smallest cell height ({half:.4g} Å)"
        )
    idx_a = np.nonzero(species == pair[0])[0]
    idx_b = np.nonzero(species == pair[1])[0]
    if len(idx_a) == 0 or len(idx_b) == 0:
        raise ValueError(f"rdf: species {pair} not present in {np.unique(species)}")
    disp = minimum_image_displacement(jnp.asarray(box_np, positions.dtype))
    not_self = idx_a[:, None] != idx_b[None, :]
    centers, edges = rdf_bins(r_max, n_bins)
    dr = edges[1] - edges[0]

    def one(r):
        d = _safe_norm(disp(r[idx_a][:, None, :], r[idx_b][None, :, :]))[not_self]
        if sigma is None:
            return _histogram_counts(d, 0.0, dr, n_bins).astype(r.dtype)
        c = jnp.asarray(centers, r.dtype)
        return gaussian_smearing(d, c, sigma) * (dr / (sigma * math.sqrt(2.0 * math.pi)))

    counts = _per_frame(one, positions, 2)
    volume = cell_volume(box_np)
    n_pairs = int(not_self.sum())
    shell = 4.0 / 3.0 * math.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    ideal = n_pairs / volume * shell
    return counts / jnp.asarray(ideal, positions.dtype)


def vacf(velocities, window: int = 100):
    """Normalised velocity autocorrelation function averaged over origins and atoms.

    Args:
      velocities: ``[T, ..., N, 3]`` (time first), any velocity unit; ``T >= window``.
      window: number of lags (lag 0 .. window−1).

    Returns:
      ``[..., window]``, ``C(0) = 1``.
    """
    t = velocities.shape[0]
    if t < window:
        raise ValueError(f"vacf needs at least window={window} frames, got {t}")
    n_origins = t - window + 1

    def corr(lag):
        v0 = jax.lax.dynamic_slice_in_dim(velocities, 0, n_origins, axis=0)
        vt = jax.lax.dynamic_slice_in_dim(velocities, lag, n_origins, axis=0)
        return jnp.mean(jnp.sum(v0 * vt, axis=-1), axis=(0, -1))

    c = jax.vmap(corr)(jnp.arange(window))  # [window, ...]
    c = jnp.moveaxis(c, 0, -1)
    return c / c[..., :1]


def mean_squared_displacement(positions, max_lag: int, masses=None, atom_mask=None):
    """MSD against lag (frames) from unwrapped positions, centre-of-mass motion removed.

    Args:
      positions: ``[T, ..., N, 3]`` Å, unwrapped (time first); ``T > max_lag``.
      max_lag: largest lag in frames.
      masses: ``[N]`` for the centre of mass (default: equal weights).
      atom_mask: ``[N]`` bool, atoms averaged (e.g. oxygens); default all. The COM is always
        that of all atoms.

    Returns:
      ``[..., max_lag + 1]`` Å², MSD at lags ``0..max_lag`` averaged over all origins.
    """
    t, n = positions.shape[0], positions.shape[-2]
    if t <= max_lag:
        raise ValueError(f"msd needs more than max_lag={max_lag} frames, got {t}")
    w = jnp.ones((n,), positions.dtype) if masses is None else jnp.asarray(masses, positions.dtype)
    com = jnp.sum(positions * w[:, None], axis=-2, keepdims=True) / jnp.sum(w)
    rel = positions - com
    sel = np.ones(n, bool) if atom_mask is None else np.asarray(atom_mask, bool)
    rel = rel[..., sel, :]

    def msd(lag):
        n_origins = t - max_lag
        r0 = jax.lax.dynamic_slice_in_dim(rel, 0, n_origins, axis=0)
        rt = jax.lax.dynamic_slice_in_dim(rel, lag, n_origins, axis=0)
        return jnp.mean(jnp.sum((rt - r0) ** 2, axis=-1), axis=(0, -1))

    out = jax.vmap(msd)(jnp.arange(max_lag + 1))
    return jnp.moveaxis(out, 0, -1)


def diffusivity(msd, frame_interval, fit_start: int, fit_stop: int | None = None):
    """Self-diffusion coefficient ``D = slope(MSD, lag time)/6`` by least squares.

    Args:
      msd: ``[..., L]`` Å² at lags ``0..L−1`` frames (:func:`mean_squared_displacement`).
      frame_interval: time between frames, internal time units (``units.fs_to_internal``).
      fit_start, fit_stop: lag window ``[fit_start, fit_stop)`` in frames (default to the end);
        choose it inside the diffusive regime (after the ballistic start, before poor statistics).

    Returns:
      ``[...]`` D in Å² per internal time unit; convert with :func:`diffusivity_to_angstrom2_per_ps`
      or :func:`diffusivity_to_m2_per_s`.
    """
    fit_stop = msd.shape[-1] if fit_stop is None else fit_stop
    if not 0 <= fit_start < fit_stop - 1 < msd.shape[-1]:
        raise ValueError(f"bad fit window [{fit_start}, {fit_stop}) for {msd.shape[-1]} lags")
    lags = jnp.arange(fit_start, fit_stop, dtype=msd.dtype) * frame_interval
    y = msd[..., fit_start:fit_stop]
    lc = lags - jnp.mean(lags)
    slope = jnp.sum((y - jnp.mean(y, axis=-1, keepdims=True)) * lc, axis=-1) / jnp.sum(lc**2)
    return slope / 6.0


def diffusivity_to_angstrom2_per_ps(d_internal):
    """Å²/internal time → Å²/ps."""
    return d_internal * units.PICOSECOND_IN_INTERNAL


def diffusivity_to_m2_per_s(d_internal):
    """Å²/internal time → m²/s."""
    return diffusivity_to_angstrom2_per_ps(d_internal) * units.ANGSTROM2_PER_PS_IN_M2_PER_S


def bond_lengths(positions, bonds, displacement_fn: Callable | None = None):
    """Lengths of the listed bonds.

    Args:
      positions: ``[..., N, 3]`` Å.
      bonds: ``[B, 2]`` atom indices (static).
      displacement_fn: broadcasting displacement (e.g. :func:`minimum_image_displacement`).

    Returns:
      ``[..., B]`` Å.
    """
    bonds = np.asarray(bonds)
    disp = _free_displacement if displacement_fn is None else displacement_fn
    v = disp(positions[..., bonds[:, 0], :], positions[..., bonds[:, 1], :])
    return _safe_norm(v)


def bond_angles(positions, triplets, displacement_fn: Callable | None = None):
    """Angles ``i–j–k`` at the central atom ``j``.

    Args:
      positions: ``[..., N, 3]`` Å.
      triplets: ``[A, 3]`` indices ``(i, j, k)`` (static).

    Returns:
      ``[..., A]`` radians.
    """
    triplets = np.asarray(triplets)
    disp = _free_displacement if displacement_fn is None else displacement_fn
    a = disp(positions[..., triplets[:, 0], :], positions[..., triplets[:, 1], :])
    b = disp(positions[..., triplets[:, 2], :], positions[..., triplets[:, 1], :])
    cos = jnp.sum(a * b, -1) / (_safe_norm(a) * _safe_norm(b))
    return jnp.arccos(jnp.clip(cos, -1.0, 1.0))


def distribution(values, low: float, high: float, n_bins: int, sigma: float | None = None):
    """Probability density of ``values`` on ``n_bins`` equal bins of ``[low, high]``.

    Used for bond-length (e.g. O–H) and angle distributions. Values outside the range are
    dropped from the counts but kept in the normalisation.

    Args:
      values: ``[..., M]`` (pooled over the last axis).
      low, high, n_bins: bins.
      sigma: Gaussian smearing width instead of hard bins.

    Returns:
      ``(centres [n_bins], density [..., n_bins])``; density integrates to the in-range fraction.
    """
    edges = np.linspace(low, high, n_bins + 1)
    centers = 0.5 * (edges[1:] + edges[:-1])
    width = edges[1] - edges[0]
    m = values.shape[-1]

    def one(v):
        if sigma is None:
            return _histogram_counts(v, low, width, n_bins).astype(v.dtype)
        c = jnp.asarray(centers, v.dtype)
        return gaussian_smearing(v, c, sigma) * (width / (sigma * math.sqrt(2 * math.pi)))

    return centers, _per_frame(one, values, 1) / (m * width)


def water_bonds_and_angles(n_molecules: int) -> tuple[np.ndarray, np.ndarray]:
    """O–H bonds ``[2M, 2]`` and H–O–H triplets ``[M, 3]``; atoms ordered O, H, H per molecule."""
    o = 3 * np.arange(n_molecules)
    bonds = np.stack([np.stack([o, o + 1], 1), np.stack([o, o + 2], 1)], 1).reshape(-1, 2)
    angles = np.stack([o + 1, o, o + 2], 1)
    return bonds, angles


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
