"""One resumable host loop: a checkpoint directory, a JSON-lines metrics log, a progress bar.

Pretraining, the StABlE driver and the stability evaluation are host loops of one shape:
restore the newest readable checkpoint if there is one, drop the log lines written after it (a
kill between logging and checkpointing), then repeat "advance, log a record, sometimes save"
until a budget is spent. :class:`ResumableLoop` owns those files, so each loop only says what
one of its steps does.

Layout under ``directory``: ``metrics.jsonl`` (one JSON object per step, each carrying the
loop's ``counter`` key), ``checkpoints/`` (orbax, see :mod:`stabie_jax.checkpoint`) and, with
``tensorboard=True``, ``tensorboard/``: TensorBoard event files with every numeric field of every
record as a scalar at step ``record[counter]`` (``tensorboard --logdir WORKDIR``). A resumed loop
purges the events past its checkpoint, as it truncates the metrics log.

Examples:
  >>> import tempfile
  >>> import numpy as np
  >>> d = tempfile.mkdtemp()
  >>> with ResumableLoop(d, counter="epoch", total=3, progress=False) as loop:
  ...     state = loop.resume({"x": np.zeros(2)}).state  # nothing saved yet: the template
  ...     for epoch in (1, 2):
  ...         state = {"x": state["x"] + 1.0}
  ...         loop.log({"epoch": epoch})
  ...         loop.save(epoch, state, {"note": "example"})
  >>> with ResumableLoop(d, counter="epoch", total=3, progress=False) as loop:
  ...     resumed = loop.resume({"x": np.zeros(2)})
  >>> resumed.step, resumed.state["x"].tolist(), resumed.metadata["note"]
  (2, [2.0, 2.0], 'example')
  >>> [r["epoch"] for r in metrics_log.read_records(loop.metrics_path)]
  [1, 2]
"""

from __future__ import annotations

import logging as pylogging
import math
import pathlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
from absl import logging
from tqdm.auto import tqdm

from stabie_jax import checkpoint, metrics_log

__all__ = [
    "CHECKPOINT_DIR",
    "METRICS_FILE",
    "PROGRESS_LOGGER",
    "TENSORBOARD_DIR",
    "ResumableLoop",
    "Resumed",
]

PROGRESS_LOGGER = pylogging.getLogger("stabie_jax.progress")
"""One line per step of a loop whose progress bar is off (INFO)."""
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"


class Resumed(NamedTuple):
    """Where a loop starts.

    Attributes:
      state: the restored pytree, or the template when starting afresh.
      metadata: the JSON metadata saved with that checkpoint (``None`` when starting afresh).
      step: the restored step (``0`` when starting afresh).
    """

    state: Any
    metadata: dict | None
    step: int


class ResumableLoop:
    """Checkpoints, metrics log and progress bar of one resumable loop (a context manager).

    Args:
      directory: output directory (created).
      counter: the record key that numbers the steps (``"epoch"``, ``"chunk"``); on resume,
        records with ``record[counter]`` above the restored step are dropped.
      total: number of steps of the whole run (progress bar).
      desc: progress-bar label.
      unit: progress-bar unit.
      progress: show the bar; without it, each logged step is also reported as one line on
        the ``stabie_jax.progress`` logger (INFO), which entry points show on stderr.
      max_to_keep: checkpoints kept (``None``: all).
      tensorboard: also write the records as TensorBoard scalars under ``tensorboard/``.
    """

    def __init__(
        self,
        directory,
        *,
        counter: str,
        total: int,
        desc: str | None = None,
        unit: str = "epoch",
        progress: bool = True,
        max_to_keep: int | None = 3,
        tensorboard: bool = False,
    ):
        self.directory = pathlib.Path(directory).expanduser().resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.directory / METRICS_FILE
        self.counter = counter
        # With several processes (jax.distributed) every process runs the loop and saves its
        # shards of the checkpoints; the metrics log, the bar and TensorBoard are process 0's.
        self._primary = jax.process_index() == 0
        progress = bool(progress) and self._primary
        self._bar_args = dict(total=total, desc=desc, unit=unit, disable=not progress)
        self._progress, self._desc, self._total = progress, desc, int(total)
        self._manager = checkpoint.open_manager(
            self.directory / CHECKPOINT_DIR, max_to_keep=max_to_keep
        )
        self._bar = None
        self._tensorboard = bool(tensorboard) and self._primary
        self._writer = None

    def resume(self, template, *, restore: bool = True) -> Resumed:
        """Restore the newest readable checkpoint onto ``template``'s structure, or start afresh.

        Starting afresh (no checkpoint, or ``restore=False``) empties the metrics log: lines in
        it came from a run killed before its first checkpoint. Raises ``ValueError`` when the
        newest checkpoint was written for a differently shaped state
        (:func:`stabie_jax.checkpoint.restore_checkpoint`).
        """
        if restore and self._manager.latest_step() is not None:
            restored = checkpoint.restore_checkpoint(self._manager, target=template)
            result = Resumed(restored.state, restored.metadata, int(restored.step))
            if self._primary:
                metrics_log.truncate_after(self.metrics_path, self.counter, result.step)
            logging.info("resuming %s after %s %d", self.directory, self.counter, result.step)
            first_new_step = result.step + 1
        else:
            result = Resumed(template, None, 0)
            if self._primary:
                metrics_log.truncate_after(self.metrics_path, self.counter, -math.inf)
            first_new_step = 0  # a fresh start hides every earlier event, as it empties the log
        if self._bar is not None:
            self._bar.close()
        self._bar = tqdm(initial=result.step, **self._bar_args)
        if self._tensorboard:
            self._open_writer(purge_step=first_new_step)
        return result

    def _open_writer(self, purge_step: int) -> None:
        from tensorboardX import SummaryWriter  # imported only when asked for

        if self._writer is not None:
            self._writer.close()
        # Events at steps >= purge_step in earlier files are hidden by TensorBoard: they came
        # from a run killed after its last checkpoint.
        self._writer = SummaryWriter(
            str(self.directory / TENSORBOARD_DIR), purge_step=purge_step, flush_secs=30
        )

    @property
    def latest_step(self) -> int | None:
        """The newest saved step (``None`` before the first save)."""
        return self._manager.latest_step()

    def log(self, record: Mapping, *, advance: bool = True, **postfix) -> None:
        """Append ``record`` to the metrics log; ``advance`` the bar by one step, showing
        ``postfix`` on it (``advance=False`` for a record that is not a step, e.g. step 0)."""
        if self._primary:
            metrics_log.append_record(self.metrics_path, record)
        if self._writer is not None and self.counter in record:
            step = int(record[self.counter])
            for name, value in record.items():
                if name != self.counter and _is_scalar(value):
                    self._writer.add_scalar(name, float(value), global_step=step)
        if self._bar is not None and advance:
            self._bar.update(1)
            if postfix:
                self._bar.set_postfix(**postfix)
        if not self._progress and advance and self._primary:
            details = " ".join(f"{k}={v}" for k, v in postfix.items())
            PROGRESS_LOGGER.info(
                "%s %s %s/%d %s",
                self._desc or self.directory.name,
                self.counter,
                record.get(self.counter, "?"),
                self._total,
                details,
            )

    def save(self, step: int, state, metadata: Mapping | None = None, *, wait: bool = False):
        """Checkpoint ``state`` as ``step`` (asynchronous unless ``wait``)."""
        checkpoint.save_checkpoint(self._manager, int(step), state, metadata, wait=wait)

    def close(self) -> None:
        """Finish pending writes and release the checkpoint manager."""
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> ResumableLoop:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_scalar(value) -> bool:
    """A real number for TensorBoard (booleans, strings and lists are left to the JSON log)."""
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )
