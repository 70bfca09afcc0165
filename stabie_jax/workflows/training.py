"""Run StABlE from training frames and save the trained model next to the run."""

from __future__ import annotations

import pathlib

import jax

from stabie_jax import checkpoint
from stabie_jax import stabie as stabie_lib

__all__ = ["train_and_save"]


def train_and_save(
    problem: stabie_lib.StabieProblem,
    settings: stabie_lib.StabieSettings,
    loaded: checkpoint.LoadedModel,
    train_positions,
    *,
    n_replicas: int,
    seed: int,
    run_dir: pathlib.Path,
    model_dir: pathlib.Path,
    metadata: dict,
    progress: bool,
    rescale_velocities: bool,
    shard: bool,
    tensorboard: bool = False,
) -> pathlib.Path:
    """Start ``n_replicas`` replicas from random training frames (:func:`stabie_jax.stabie.
    init_from_frames`), run StABlE in ``run_dir`` (resumable: checkpoints, metrics.jsonl) and
    save the trained parameters with ``loaded``'s model metadata to ``model_dir``.

    Args:
      problem, settings: the StABlE problem and loop settings.
      loaded: the starting model (its parameters and metadata).
      train_positions: ``[F, N, 3]`` Å, the frames the replicas start from.
      n_replicas: R.
      seed: seeds the choice of frames and the initial momenta (``PRNGKey(seed)``).
      run_dir, model_dir: where the run and the trained model are written.
      metadata: stored with the run and in the model's ``extra.stabie`` (with the frames used).
      progress, tensorboard: a progress bar; TensorBoard event files beside the metrics.
      rescale_velocities: initial momenta rescaled to exactly ``dof·kT/2`` (the authors').
      shard: split the replicas over the devices (:func:`stabie_jax.stabie.shard_replicas`).

    Returns:
      ``model_dir``.
    """
    state, ic = stabie_lib.init_from_frames(
        problem,
        settings,
        loaded.params,
        train_positions,
        n_replicas=n_replicas,
        key=jax.random.PRNGKey(seed),
        rescale_velocities=rescale_velocities,
    )
    run_metadata = {**metadata, "initial_frames": ic.tolist()}
    final, _ = stabie_lib.run_stabie(
        problem,
        settings,
        state,
        run_dir,
        metadata=run_metadata,
        progress=progress,
        shard_fn=stabie_lib.shard_replicas if shard else None,
        tensorboard=tensorboard,
    )
    extra = {**loaded.metadata.extra, "stabie": run_metadata}
    checkpoint.save_model_checkpoint(
        model_dir, final.train.params, loaded.metadata._replace(extra=extra), overwrite=True
    )
    return pathlib.Path(model_dir)
