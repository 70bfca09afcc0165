"""Observables of MD frames and trajectories, their references and errors, and the registry.

* :mod:`~stabie_jax.observables.functions` - pure, jit-able functions of positions or
  velocities (h(r), element RDFs, bond lengths and angles, VACF, MSD, diffusivity, periodic
  geometry), batched over any leading axes;
* :mod:`~stabie_jax.observables.references` - reference observables from canonical frames,
  Boltzmann-reweighted to another temperature;
* :mod:`~stabie_jax.observables.errors` - errors of simulated observables against references;
* :mod:`~stabie_jax.observables.registry` - :class:`Observable`, built for a system into a
  :class:`BuiltObservable` (frame function, reference, grid, error metric, plot label), and the
  registry that ``config.observable.kind`` names. The built-in observables live in
  :mod:`~stabie_jax.observables.kinds`, one module each: ``h_of_r``, ``rdf``,
  ``bond_lengths`` (trainable), ``vacf``, ``msd`` (evaluation only).

Every name of those modules is available here.

Example:
  >>> from stabie_jax import observables
  >>> observables.names(trainable=True)
  ('bond_lengths', 'h_of_r', 'rdf')
"""

from stabie_jax.observables.errors import h_of_r_errors, rdf_errors, vacf_mae
from stabie_jax.observables.functions import (
    FRAME_BATCH,
    H_OF_R_MIN,
    H_OF_R_SIGMA,
    bond_angles,
    bond_lengths,
    cell_heights,
    cell_volume,
    diffusivity,
    diffusivity_to_angstrom2_per_ps,
    diffusivity_to_m2_per_s,
    distribution,
    gaussian_smearing,
    h_of_r,
    h_of_r_centers,
    h_of_r_reference,
    mean_squared_displacement,
    minimum_image_displacement,
    neighbourhood_bond_lengths,
    pair_displacements,
    pair_distances,
    rdf,
    rdf_bins,
    vacf,
    water_bonds_and_angles,
)
from stabie_jax.observables.kinds import BUILTIN
from stabie_jax.observables.references import (
    effective_sample_size_vs_temperature,
    h_of_r_reference_at,
    reweighted_h_of_r_reference,
)
from stabie_jax.observables.registry import (
    ESTIMATORS,
    BuiltObservable,
    Observable,
    ObservableSystem,
    get,
    mean_absolute_error,
    names,
    over_frames,
    register,
    unregister,
)

for _observable in BUILTIN:
    register(_observable)
del _observable

__all__ = [
    "BUILTIN",
    "BuiltObservable",
    "ESTIMATORS",
    "FRAME_BATCH",
    "H_OF_R_MIN",
    "H_OF_R_SIGMA",
    "Observable",
    "ObservableSystem",
    "bond_angles",
    "bond_lengths",
    "cell_heights",
    "cell_volume",
    "diffusivity",
    "diffusivity_to_angstrom2_per_ps",
    "diffusivity_to_m2_per_s",
    "distribution",
    "effective_sample_size_vs_temperature",
    "gaussian_smearing",
    "get",
    "h_of_r",
    "h_of_r_centers",
    "h_of_r_errors",
    "h_of_r_reference",
    "h_of_r_reference_at",
    "mean_absolute_error",
    "mean_squared_displacement",
    "minimum_image_displacement",
    "names",
    "over_frames",
    "neighbourhood_bond_lengths",
    "pair_displacements",
    "pair_distances",
    "rdf",
    "rdf_bins",
    "rdf_errors",
    "register",
    "reweighted_h_of_r_reference",
    "unregister",
    "vacf",
    "vacf_mae",
    "water_bonds_and_angles",
]
