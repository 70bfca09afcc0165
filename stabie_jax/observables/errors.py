"""Errors of simulated observables against their references (host float64 numbers).

* :func:`h_of_r_errors`: mean |Δh| and the integrated L1 distance of two h(r);
* :func:`rdf_errors`: the authors' RDF-MAE ``r_max·mean|Δg|`` per element pair;
* :func:`vacf_mae`: mean |ΔC| of two normalised VACFs.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["h_of_r_errors", "rdf_errors", "vacf_mae"]


def h_of_r_errors(h, h_ref) -> dict:
    """Errors of an h(r) (sum-100 normalisation) against the reference on the same grid.

    Returns:
      ``{"mae": mean_bins |Δh|, "l1": Σ|Δh|/100}``; ``l1`` is the integrated absolute
      difference ``∫|p − p_ref| dr`` of the two probability densities (0..2, MDsim's h(r)
      error). NaN if ``h`` is NaN (no stable frames).
    """
    d = np.abs(np.asarray(h, np.float64) - np.asarray(h_ref, np.float64))
    if d.shape[-1] != np.asarray(h_ref).shape[-1]:
        raise ValueError(f"h(r) grids differ: {np.shape(h)} vs {np.shape(h_ref)}")
    return {"mae": float(np.mean(d)), "l1": float(np.sum(d) / 100.0)}


def vacf_mae(vacf, vacf_ref) -> float:
    """``mean_lags |C − C_ref|`` of two normalised VACFs on the same lags (dimensionless)."""
    a, b = np.asarray(vacf, np.float64), np.asarray(vacf_ref, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"VACF lags differ: {a.shape} vs {b.shape}; record the same window")
    return float(np.mean(np.abs(a - b)))


def rdf_errors(rdfs: Mapping, reference: Mapping, r_max: float = 6.0) -> dict:
    """Per-pair RDF errors: ``{name: {"mae": mean|Δg|, "rdf_mae": r_max·mean|Δg|}}``.

    ``rdf_mae`` is the authors' water stability metric (threshold 3.0, the formula of
    :func:`stabie_jax.stability.rdf_mae`, here on the host in float64); ``"max_rdf_mae"`` is
    the worst pair. All NaN when the model had no stable frames (its RDFs are NaN).
    """
    out = {}
    for name, ref in reference.items():
        if name not in rdfs:
            raise ValueError(f"rdf_errors: {name!r} missing from the simulated RDFs {list(rdfs)}")
        g, ref = np.asarray(rdfs[name], np.float64), np.asarray(ref, np.float64)
        mae = float(np.mean(np.abs(g - ref)))
        out[name] = {"mae": mae, "rdf_mae": r_max * mae}
    values = [v["rdf_mae"] for v in out.values()]
    out["max_rdf_mae"] = float("nan") if np.any(np.isnan(values)) else max(values)
    return out
