"""Simulation spaces: JAX-MD displacement/shift pairs with the box (Å).

Positions are never wrapped into the box (``space.periodic(box, wrapped=False)``): the
displacement is minimum image, and unwrapped positions are what MSD/diffusivity need.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from jax_md import space

__all__ = ["Space", "free_space", "periodic_space"]


class Space(NamedTuple):
    """Displacement/shift pair and, for periodic systems, the box (Å)."""

    displacement_fn: Callable
    shift_fn: Callable
    box: Any


def free_space() -> Space:
    """Free (non-periodic) space for molecules."""
    displacement_fn, shift_fn = space.free()
    return Space(displacement_fn, shift_fn, None)


def periodic_space(box) -> Space:
    """Orthorhombic periodic space with minimum-image displacements and unwrapped positions.

    Args:
      box: scalar or ``[3]`` side lengths, Å.
    """
    box = np.asarray(box, dtype=np.float64)
    if box.ndim == 2:
        if not np.allclose(box, np.diag(np.diag(box))):
            raise ValueError(f"only orthorhombic cells are supported, got cell {box.tolist()}")
        box = np.diag(box)
    if np.any(box <= 0):
        raise ValueError(f"box side lengths must be positive, got {box}")
    displacement_fn, shift_fn = space.periodic(jnp.asarray(box, jnp.float32), wrapped=False)
    return Space(displacement_fn, shift_fn, box)
