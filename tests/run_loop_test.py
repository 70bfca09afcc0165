"""The resumable host loop: the metrics log holds each step once across kills and reruns."""

from __future__ import annotations

import json

import numpy as np

from stabie_jax import metrics_log
from stabie_jax.run_loop import ResumableLoop


def _epochs(loop):
    return [r["epoch"] for r in metrics_log.read_records(loop.metrics_path)]


def test_lines_after_the_last_checkpoint_are_dropped_on_resume(tmp_path):
    # A run logs epochs 1..3 but is killed after the checkpoint of epoch 2 (before saving 3),
    # leaving a torn line as well.
    with ResumableLoop(tmp_path, counter="epoch", total=4, progress=False) as loop:
        state = loop.resume({"x": np.zeros(2)}).state
        for epoch in (1, 2, 3):
            state = {"x": state["x"] + 1.0}
            loop.log({"epoch": epoch})
            if epoch <= 2:
                loop.save(epoch, state, wait=True)
    with open(loop.metrics_path, "a") as log:
        log.write('{"epoch": 4, "lo')
    assert len(loop.metrics_path.read_text().splitlines()) == 4
    # The rerun resumes after epoch 2 with epoch 2's state, and relogs 3 and 4 once each.
    with ResumableLoop(tmp_path, counter="epoch", total=4, progress=False) as loop:
        resumed = loop.resume({"x": np.zeros(2)})
        assert resumed.step == 2 and resumed.state["x"].tolist() == [2.0, 2.0]
        assert _epochs(loop) == [1, 2]
        for epoch in (3, 4):
            loop.log({"epoch": epoch})
        loop.save(4, resumed.state, wait=True)
    assert _epochs(loop) == [1, 2, 3, 4]
    assert all(json.loads(line) for line in loop.metrics_path.read_text().splitlines())
    # A fresh start (restore=False) empties the log written by an earlier run.
    with ResumableLoop(tmp_path, counter="epoch", total=4, progress=False) as loop:
        assert loop.resume({"x": np.zeros(2)}, restore=False).step == 0
        assert _epochs(loop) == []
