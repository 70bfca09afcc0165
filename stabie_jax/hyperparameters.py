"""The authors' hyperparameters (α, λ, clip) expressed for this project's exact estimator.

The reference implementation (StABlE-Training ``boltzmann_estimator.py``) omits ``1/kT`` and
``B/(B-1)`` from the Boltzmann estimator, so per minibatch of B states its Jacobian is
``kT·(B-1)/B`` times the exact one of :mod:`stabie_jax.estimator` (docs/paper_settings.md,
Common to all systems). This module converts their settings so that the parameter update is
theirs:

* :func:`authors_learning_rate_to_exact`: α alone, ``α·kT·(B-1)/B``, for the observable loss
  summed over its components;
* :func:`authors_hyperparameters_to_exact`: α, λ and the gradient clip together (and a
  mean-reduced observable loss), returned as :class:`ExactHyperparameters`;
* :func:`exact_hyperparameters`: either convention by name (``"authors"`` converted,
  ``"exact"`` as given), what a configured run calls.

Units: ``kT`` in eV (:func:`stabie_jax.units.kT`; the authors' energies are eV).
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "CONVENTIONS",
    "ExactHyperparameters",
    "authors_hyperparameters_to_exact",
    "authors_learning_rate_to_exact",
    "exact_hyperparameters",
]

CONVENTIONS = ("authors", "exact")
"""How (α, λ, clip) are given: in the authors' units, or for the exact estimator."""


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
      The equivalent learning rate for :func:`stabie_jax.estimator.boltzmann_jacobian` /
      :func:`stabie_jax.estimator.boltzmann_expectation` (same ``batch_size``).

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


def exact_hyperparameters(
    convention: str,
    learning_rate: float,
    qm_weight: float,
    grad_clip_norm: float | None,
    kT: float,
    batch_size: int,
    *,
    reduction: str = "sum",
    n_observable: int | None = None,
) -> ExactHyperparameters:
    """(α, λ, clip) given in ``convention`` for the exact estimator: converted from the
    authors' (:func:`authors_hyperparameters_to_exact`, the update then equals theirs) or used
    as given (``"exact"``, gradient scale 1).

    Examples:
      >>> tuple(exact_hyperparameters("exact", 1e-3, 10.0, 1.0, 0.043, 40))
      (0.001, 10.0, 1.0, 1.0)
    """
    if convention == "exact":
        return ExactHyperparameters(learning_rate, qm_weight, grad_clip_norm, 1.0)
    if convention != "authors":
        raise ValueError(
            f"hyperparameter convention (config key stabie.hyperparameter_convention) must be "
            f"one of {CONVENTIONS}, got {convention!r}"
        )
    return authors_hyperparameters_to_exact(
        learning_rate,
        qm_weight,
        grad_clip_norm,
        kT,
        batch_size,
        reduction=reduction,
        n_observable=n_observable,
    )
