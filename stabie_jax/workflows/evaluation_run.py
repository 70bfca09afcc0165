"""What every evaluation shares: the chunked stability run of each model, the same for all.

:class:`EvaluationRun` holds the protocol of :func:`stabie_jax.evaluation.evaluate_stability`
that does not depend on the system (temperature, timestep, length, check interval, replicas,
the momenta seed, stop fraction, checkpointing, progress); the molecule and periodic
evaluations (:mod:`~stabie_jax.workflows.molecule_evaluation`,
:mod:`~stabie_jax.workflows.periodic_evaluation`) add their criteria and observables.
"""

from __future__ import annotations

from typing import NamedTuple

import jax

__all__ = ["EvaluationRun", "whole_checks"]


def whole_checks(length_ps: float, timestep_fs: float, check_every_steps: int) -> int:
    """Steps of a run of about ``length_ps``, in whole stability-check intervals (at least one).

    >>> whole_checks(1.0, 0.5, 200), whole_checks(0.01, 0.5, 200), whole_checks(1.04, 0.5, 200)
    (2000, 200, 2000)
    """
    checks = int(round(length_ps * 1000.0 / timestep_fs / check_every_steps))
    return check_every_steps * max(1, checks)


class EvaluationRun(NamedTuple):
    """One stability run per model, with the same initial structures and momenta for all.

    Attributes:
      temperature_kelvin: simulation temperature, K.
      timestep_fs: MD timestep, fs.
      length_ps: run length, ps (rounded to whole checks, :attr:`total_steps`).
      check_every_steps: steps per stability check (the authors' 1-ps "epochs").
      sample_every: steps between recorded frames inside a chunk.
      n_replicas: replicas, started from the first ``n_replicas`` held-out test frames.
      momenta_seed: seed of the PRNG key that draws the initial momenta (every model gets it).
      stop_fraction: the run stops once this fraction of replicas is unstable.
      checkpoint_every_seconds: an unfinished model is checkpointed at most this often
        (0 = after every chunk); a rerun resumes there.
      save_trajectories: keep the frames of the first replica to fail and of the median one.
      progress: show a progress bar.
      tensorboard: write TensorBoard events.
    """

    temperature_kelvin: float
    timestep_fs: float
    length_ps: float
    check_every_steps: int
    sample_every: int
    n_replicas: int
    momenta_seed: int
    stop_fraction: float
    checkpoint_every_seconds: float = 0.0
    save_trajectories: bool = True
    progress: bool = True
    tensorboard: bool = False

    @property
    def total_steps(self) -> int:
        return self.steps(self.length_ps)

    @property
    def key(self) -> jax.Array:
        """The momenta key of every model (paired comparison)."""
        return jax.random.PRNGKey(self.momenta_seed)

    def steps(self, length_ps: float) -> int:
        """:func:`whole_checks` of ``length_ps`` at this run's timestep and check interval."""
        return whole_checks(length_ps, self.timestep_fs, self.check_every_steps)

    def stability_kwargs(self) -> dict:
        """Keyword arguments of :func:`stabie_jax.evaluation.evaluate_stability` set by the run
        (except ``total_steps``, which transfer runs change)."""
        return dict(
            check_every_steps=self.check_every_steps,
            sample_every=self.sample_every,
            stop_fraction=self.stop_fraction,
            checkpoint_every_seconds=self.checkpoint_every_seconds,
            progress=self.progress,
            tensorboard=self.tensorboard,
            keep_last_chunks=self.save_trajectories,
        )

    def check_test_frames(self, n_test_frames: int) -> None:
        """Refuse more replicas than held-out test frames (one initial structure each)."""
        if self.n_replicas > n_test_frames:
            raise ValueError(
                f"evaluate.n_replicas={self.n_replicas} exceeds the {n_test_frames} held-out "
                "test frames used as initial structures; lower it or raise data.n_test"
            )
