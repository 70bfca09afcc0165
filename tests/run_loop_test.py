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


def _events(directory):
    """(file index, step, tag, value or "purge") of the TensorBoard event files under
    ``directory``, read with a TFRecord parser of our own (length, CRC, payload, CRC)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event, SessionLog

    out = []
    for index, path in enumerate(sorted(directory.glob("events.out.tfevents.*"))):
        blob, pos = path.read_bytes(), 0
        while pos < len(blob):
            (length,) = struct.unpack("<Q", blob[pos : pos + 8])
            event = Event.FromString(blob[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                out.append((index, event.step, None, "purge"))
            for v in event.summary.value:
                out.append((index, event.step, v.tag, v.simple_value))
    return out


def test_tensorboard_scalars_follow_the_log_and_a_resume_purges_past_the_checkpoint(tmp_path):
    import time

    with ResumableLoop(
        tmp_path, counter="epoch", total=4, progress=False, tensorboard=True
    ) as loop:
        state = loop.resume({"x": np.zeros(1)}).state
        for epoch in (1, 2, 3):
            loop.log({"epoch": epoch, "loss": 1.0 / epoch, "phase": "learning", "ok": True})
            if epoch <= 2:
                loop.save(epoch, state, wait=True)
    time.sleep(1.1)  # event file names carry the second they were opened
    with ResumableLoop(
        tmp_path, counter="epoch", total=4, progress=False, tensorboard=True
    ) as loop:
        assert loop.resume({"x": np.zeros(1)}).step == 2
        loop.log({"epoch": 3, "loss": 0.25, "n": np.int64(7)})
    events = _events(tmp_path / "tensorboard")
    scalars = [(i, step, tag, value) for i, step, tag, value in events if tag is not None]
    # Numbers only (strings and booleans stay in the JSON log), at the record's epoch.
    first = [(step, tag, round(value, 6)) for i, step, tag, value in scalars if i == 0]
    assert first == [(1, "loss", 1.0), (2, "loss", 0.5), (3, "loss", round(1 / 3, 6))]
    # The resumed writer starts with a purge at step 3, so TensorBoard hides the killed run's
    # epoch 3 and shows the rerun's.
    second = [(step, tag, value) for i, step, tag, value in events if i == 1]
    assert second[0] == (3, None, "purge")
    assert [(s, t, v) for s, t, v in second[1:]] == [(3, "loss", 0.25), (3, "n", 7.0)]
