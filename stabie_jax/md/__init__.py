"""Molecular dynamics on JAX-MD: Nosé–Hoover NVT replicas under ``vmap``.

* :mod:`stabie_jax.md.thermostat` - thermostat time ``tau`` (authors' ``ttime`` mapping),
  masses, Maxwell–Boltzmann momenta, kinetic temperature.
* :mod:`stabie_jax.md.integrators` - the authors' (MDsim) single Nosé–Hoover integrator in
  JAX-MD style.
* :mod:`stabie_jax.md.replicas` - :func:`make_simulator`: batched replica state with an alive
  mask, ring buffer for rewinds, neighbour lists with host-side overflow handling, and a jitted
  ``simulate`` that records every S-th frame. It assembles small factories:
  :mod:`~stabie_jax.md.state` (containers), :mod:`~stabie_jax.md.spaces`,
  :mod:`~stabie_jax.md.dynamics` (integrator choice), :mod:`~stabie_jax.md.neighbors`,
  :mod:`~stabie_jax.md.history` (the ring), :mod:`~stabie_jax.md.layout` (mesh sharding and
  ``lax.map`` chunks) and :mod:`~stabie_jax.md.stepping` (the step and its scan).
* :mod:`stabie_jax.md.faults` - :func:`with_nonfinite_check`: a model's host check on replicas
  that turned non-finite (a GemNet-T table overflow is an error, not an instability).
"""

from stabie_jax.md.faults import with_nonfinite_check
from stabie_jax.md.integrators import (
    AuthorsNoseHooverState,
    authors_nose_hoover,
    authors_nose_hoover_invariant,
    authors_thermostat_constants,
)
from stabie_jax.md.layout import (
    CPU_CHUNK,
    CPU_FRAME_CHUNK,
    auto_frame_chunk_size,
    auto_replica_batch_size,
    splits_replicas,
)
from stabie_jax.md.replicas import (
    History,
    ReplicaState,
    Simulator,
    Space,
    Trajectory,
    free_space,
    make_simulator,
    periodic_space,
    replica_mesh,
)
from stabie_jax.md.thermostat import (
    authors_kinetic_energy_period,
    authors_thermostat_mass,
    chain_tau_from_ttime,
    degrees_of_freedom,
    kinetic_energy,
    kinetic_temperature,
    masses_from_atomic_numbers,
    maxwell_boltzmann_momenta,
    tau_from_ttime,
    tau_from_wavenumber,
    thermostat_kinetic_energy_period,
)

__all__ = [
    "AuthorsNoseHooverState",
    "History",
    "ReplicaState",
    "Simulator",
    "Space",
    "Trajectory",
    "authors_kinetic_energy_period",
    "authors_nose_hoover",
    "authors_nose_hoover_invariant",
    "authors_thermostat_constants",
    "authors_thermostat_mass",
    "chain_tau_from_ttime",
    "degrees_of_freedom",
    "free_space",
    "kinetic_energy",
    "kinetic_temperature",
    "make_simulator",
    "masses_from_atomic_numbers",
    "maxwell_boltzmann_momenta",
    "periodic_space",
    "replica_mesh",
    "CPU_CHUNK",
    "CPU_FRAME_CHUNK",
    "auto_frame_chunk_size",
    "auto_replica_batch_size",
    "splits_replicas",
    "tau_from_ttime",
    "tau_from_wavenumber",
    "thermostat_kinetic_energy_period",
    "with_nonfinite_check",
]
