"""Host-side diagnosis of replicas that turned non-finite.

The replica engine freezes a replica whose step gives a non-finite state and flags it
(``ReplicaState.nonfinite``, :mod:`stabie_jax.md.stepping`): usually a physical blow-up, which
the stability criteria then count as unstable. Some models produce NaN on purpose when a
*resource* is exhausted (GemNet-T's static neighbour table); that must stop the run with the
fix rather than pass as instability. :func:`with_nonfinite_check` runs a model's check on the
host after every ``simulate`` call, on the replicas that turned non-finite during it, in the way
JAX-MD's ``did_buffer_overflow`` is read on the host.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from stabie_jax.md.state import ReplicaState, Simulator

__all__ = ["with_nonfinite_check"]


def with_nonfinite_check(
    simulator: Simulator, check: Callable[[ReplicaState, np.ndarray], None] | None
) -> Simulator:
    """The same simulator whose ``simulate`` calls ``check`` when replicas turn non-finite.

    Args:
      simulator: :func:`stabie_jax.md.make_simulator` result.
      check: ``(state, newly [R] bool) -> None``, called with the state after the call and the
        replicas that turned non-finite during it (each frozen at its last finite state); it
        raises to stop the run (e.g.
        :func:`stabie_jax.models.registry.replica_fault_check`); None returns ``simulator``.

    Returns:
      A :class:`Simulator` with the checked ``simulate``; every other function is shared.
    """
    if check is None:
        return simulator
    simulate = simulator.simulate

    def checked_simulate(params, state, n_steps, sample_every=None, record_energy=False):
        before = np.asarray(state.nonfinite)
        new_state, frames = simulate(params, state, n_steps, sample_every, record_energy)
        newly = np.asarray(new_state.nonfinite) & ~before
        if newly.any():
            check(new_state, newly)
        return new_state, frames

    checked_simulate.__doc__ = simulate.__doc__
    return simulator._replace(simulate=checked_simulate)
