"""Reliability with real processes: the aspirin entry point killed with SIGKILL inside a model's
evaluation resumes that model from its last chunk and reproduces an uninterrupted evaluation
bit for bit; a rerun with other settings is refused with the keys and the fix, no traceback, and
the workdir is left as it was.

The other reliability cases are tested where they belong: the workdir lock and the fingerprint
refusal (workdir_test), structural vs corrupt checkpoints (checkpoint_test), reader magnitudes and
fuzz (data_readers_test), table overflows (experiments_test, ase_calculator_test), in-process
resume of every stage (experiments_test, pretrain_test, stabie_test, evaluate_test).
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

from experiments import stages
from stabie_jax import checkpoint, metrics_log

REPO = pathlib.Path(__file__).resolve().parents[1]
N_CHUNKS = 5
# Nothing fails a 100-Å bond check, so the baseline runs all its chunks and a kill after its
# first checkpoint lands inside it (checked below, not assumed).
FLAGS = (
    "--config=tests/tiny_configs.py",
    "--config.evaluate.bond_deviation_angstrom=100.0",
    f"--config.evaluate.length_ps={0.2 * N_CHUNKS}",
    "--config.evaluate.check_every_steps=400",  # 0.2 ps chunks at 0.5 fs
    "--config.evaluate.sample_every=100",
    "--config.evaluate.vacf_window_steps=100",
    "--config.evaluate.transfer_length_ps=0.2",
    "--config.evaluate.checkpoint_every_seconds=0",
)


def _command(workdir, *flags):
    return [sys.executable, "-m", "experiments.aspirin", *FLAGS, f"--workdir={workdir}", *flags]


def _latest_chunk(workdir) -> int | None:
    """The newest committed evaluation checkpoint of the baseline at 500 K, if any."""
    for scratch in (workdir / "evaluate" / "models" / "baseline" / "in_progress").glob("*"):
        directory = scratch / "stability" / "checkpoints"
        if directory.is_dir():
            step = checkpoint.latest_step(directory)
            if step is not None:
                return step
    return None


def _run(args, log_path):
    with open(log_path, "w") as log:
        return subprocess.run(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=900)


def test_sigkill_inside_an_evaluation_resumes_the_model_bit_identically(tmp_path):
    work = tmp_path / "run"
    with open(tmp_path / "killed.log", "w") as log:
        child = subprocess.Popen(
            _command(work), cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True
        )
        try:
            deadline = time.monotonic() + 600
            while _latest_chunk(work) is None:
                assert child.poll() is None, (
                    "the run ended before the baseline's first evaluation checkpoint: "
                    + (tmp_path / "killed.log").read_text()[-3000:]
                )
                assert time.monotonic() < deadline, "no evaluation checkpoint within 600 s"
                time.sleep(0.05)
            os.kill(child.pid, signal.SIGKILL)
        finally:
            if child.poll() is None:
                child.kill()
            child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    # The kill came inside the baseline's evaluation, not after it.
    killed_at = _latest_chunk(work)
    assert killed_at is not None and 1 <= killed_at < N_CHUNKS, killed_at
    stored = work / "evaluate" / "models"
    assert not (stored / "baseline" / "result.json").exists()
    assert not (work / "evaluate" / "report.json").exists()
    models = {
        name: (work / name / checkpoint.MODEL_JSON).read_text()
        for name in (stages.PRETRAINED_MODEL, stages.STABIE_MODEL)
    }
    pretrained_stamp = (work / stages.PRETRAINED_MODEL / checkpoint.MODEL_JSON).stat().st_mtime_ns

    # The rerun (same settings; a third model added, which is not part of the fingerprint)
    # skips pretraining, re-exports the finished StABlE run to the same model (its last
    # checkpoint, re-anchored again: deterministic) and resumes the baseline after the killed
    # run's last chunk.
    copy = f"--config.evaluate.extra_models=fresh_baseline={work / stages.PRETRAINED_MODEL}"
    done = _run(_command(work, copy, "--verbosity=0"), tmp_path / "resumed.log")
    text = (tmp_path / "resumed.log").read_text()
    assert done.returncode == 0, text[-3000:]
    assert f"after chunk {killed_at}" in text, text[-3000:]
    # Without progress bars, each chunk is one labelled line; the report's command is the one
    # that was run, pasteable.
    assert f"fresh_baseline 500 K chunk {N_CHUNKS}/{N_CHUNKS}" in text, text[-3000:]
    command = json.loads((work / "evaluate" / "report.json").read_text())["command"]
    assert command.startswith("python -m experiments.aspirin --config=tests/tiny_configs.py ")
    # The run ends with the headline table and the report's path.
    assert "median stable time (ps)" in text and "fresh_baseline" in text
    assert f"report: {work / 'evaluate' / 'report.md'}" in text
    for name, text_before in models.items():
        assert (work / name / checkpoint.MODEL_JSON).read_text() == text_before
    assert (work / stages.PRETRAINED_MODEL / checkpoint.MODEL_JSON).stat().st_mtime_ns == (
        pretrained_stamp
    )
    assert not (stored / "baseline" / "in_progress").exists()
    # Each stage's metrics log holds each epoch once, across the kill and the rerun.
    for stage, epochs in (("pretrain", [0, 1, 2]), ("stabie", [1, 2, 3])):
        records = metrics_log.read_records(work / stage / "metrics.jsonl")
        assert [r["epoch"] for r in records] == epochs, stage
    # The same model evaluated without a kill gives the same numbers, bit for bit.
    details = json.loads((work / "evaluate" / "report.json").read_text())["results"]["details"]
    resumed, fresh = details["baseline"], details["fresh_baseline"]
    assert resumed["stable_time_ps"] == fresh["stable_time_ps"] == [0.2 * N_CHUNKS] * 4
    assert resumed["h_of_r"] == fresh["h_of_r"]
    assert resumed["transfer_700K"]["h_of_r"] == fresh["transfer_700K"]["h_of_r"]

    # Other settings on this workdir: refused with the differing key and the two ways forward,
    # no traceback, and nothing in the workdir changes.
    recorded = (work / "config.json").read_text()
    report = (work / "evaluate" / "report.json").read_text()
    refused = _run(
        _command(work, "--config.seed=7", "--config.stages=pretrain"), tmp_path / "refused.log"
    )
    text = (tmp_path / "refused.log").read_text()
    assert refused.returncode == 1, text[-3000:]
    assert "seed" in text and "--config.overwrite_stages=" in text and "--workdir" in text
    assert "Traceback" not in text
    assert (work / "config.json").read_text() == recorded
    assert (work / "evaluate" / "report.json").read_text() == report
    for name, text_before in models.items():
        assert (work / name / checkpoint.MODEL_JSON).read_text() == text_before
