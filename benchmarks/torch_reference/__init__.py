"""PyTorch baselines for the side-by-side benchmarks (need the ``torch`` extra).

* :mod:`.schnet_torch` - batched dense SchNet energy/forces with weights from stabie_jax params;
* :mod:`.nose_hoover_torch` - batched Nosé–Hoover-chain velocity Verlet (JAX-MD's algorithm).
"""
