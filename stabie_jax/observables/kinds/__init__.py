"""The built-in observables, one module each; each module defines ``OBSERVABLE``.

:data:`BUILTIN` lists them; :mod:`stabie_jax.observables` registers every entry on import, so a
new built-in observable is its module plus one line here.
"""

from stabie_jax.observables.kinds import bond_lengths, h_of_r, msd, rdf, vacf

BUILTIN = (
    h_of_r.OBSERVABLE,
    rdf.OBSERVABLE,
    bond_lengths.OBSERVABLE,
    vacf.OBSERVABLE,
    msd.OBSERVABLE,
)
"""The built-in :class:`~stabie_jax.observables.Observable` s, in registration order."""

__all__ = ["BUILTIN"]
