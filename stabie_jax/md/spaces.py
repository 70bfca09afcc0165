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
    """Periodic space with minimum-image displacements and unwrapped positions.

    Args:
      box: scalar or ``[3]`` side lengths of an orthorhombic box, or a ``[3, 3]`` cell with the
        lattice vectors as rows (ASE's and extxyz's convention), Å. A diagonal cell is stored
        as its ``[3]`` side lengths; any other (triclinic) cell as JAX-MD's box matrix, the
        lattice vectors as *columns* (``space.periodic_general`` in real coordinates).

    Returns:
      :class:`Space` whose ``box`` is ``[3]`` (orthorhombic) or ``[3, 3]`` (triclinic, columns
      are lattice vectors); the other modules (``observables.rdf``,
      ``observables.minimum_image_displacement``, ``stability``) take that ``box`` as it is.
    """
    box = np.asarray(box, dtype=np.float64)
    if box.ndim == 2:
        if box.shape != (3, 3):
            raise ValueError(f"a cell must be [3, 3] Å (rows are lattice vectors), got {box.shape}")
        if not np.allclose(box, np.diag(np.diag(box))):
            if abs(np.linalg.det(box)) < 1e-6:
                raise ValueError(f"the cell {box.tolist()} is singular")
            matrix = box.T  # JAX-MD: lattice vectors as columns
            displacement_fn, shift_fn = space.periodic_general(
                jnp.asarray(matrix, jnp.float32), fractional_coordinates=False, wrapped=False
            )
            return Space(displacement_fn, shift_fn, matrix)
        box = np.diag(box)
    if np.any(box <= 0):
        raise ValueError(f"box side lengths must be positive, got {box}")
    displacement_fn, shift_fn = space.periodic(jnp.asarray(box, jnp.float32), wrapped=False)
    return Space(displacement_fn, shift_fn, box)
