"""Neural network interatomic potentials as Flax modules returning per-atom energies (eV)."""

from stabie_jax.models.graph import Graph, build_graph, dense_edges, edges_from_neighbor_list
from stabie_jax.models.potential import (
    Potential,
    atomwise_scale_shift,
    make_potential,
    parameter_count,
    species_index,
)

__all__ = [
    "Graph",
    "Potential",
    "build_graph",
    "dense_edges",
    "edges_from_neighbor_list",
    "atomwise_scale_shift",
    "make_potential",
    "parameter_count",
    "species_index",
]
