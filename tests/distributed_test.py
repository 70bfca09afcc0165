"""Several processes (``jax.distributed``) on one machine: the replicas of a StABlE run sharded
over two processes with one CPU device each give the run of one process with two devices."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

from stabie_jax import metrics_log

TOY_SCRIPT = pathlib.Path(__file__).with_name("toy_stabie.py")
N_EPOCHS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toy(workdir, *extra, env):
    cmd = [sys.executable, str(TOY_SCRIPT), str(workdir), str(N_EPOCHS), "shard", *extra]
    return subprocess.Popen(
        cmd,
        env={**os.environ, "JAX_PLATFORMS": "cpu", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process, timeout=600) -> None:
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
        raise AssertionError(f"timed out:\n{out[-3000:]}") from None
    assert process.returncode == 0, out[-3000:]


def test_two_processes_shard_replicas_like_two_devices_in_one(tmp_path):
    one_device_each = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    spec = f"distributed=127.0.0.1:{_free_port()},{{}},2"
    shared = tmp_path / "two_processes"  # one workdir for the job, as on a shared filesystem
    processes = [_toy(shared, spec.format(i), env=one_device_each) for i in (0, 1)]
    for process in processes:
        _finish(process)
    single = _toy(
        tmp_path / "one_process", env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    )
    _finish(single)

    # the job really had two processes of one device each (else it proves nothing)
    topology = json.loads((shared / "topology.json").read_text())
    assert topology == {"process_count": 2, "devices": 2, "local_devices": 1}
    np.testing.assert_allclose(
        np.load(shared / "final_params.npy"),
        np.load(tmp_path / "one_process" / "final_params.npy"),
        rtol=1e-6,
    )
    two = metrics_log.read_records(shared / "metrics.jsonl")
    ref = metrics_log.read_records(tmp_path / "one_process" / "metrics.jsonl")
    assert [r["epoch"] for r in two] == list(range(1, N_EPOCHS + 1))  # written once, by process 0
    learning = [r for r in ref if r["phase"] == "learning"]
    assert learning, "the toy never reached a learning step: nothing sharded was trained"
    for a, b in zip(two, ref, strict=True):
        assert a["phase"] == b["phase"]
        np.testing.assert_allclose(a["unstable_fraction"], b["unstable_fraction"])
        np.testing.assert_allclose(a.get("obs_loss", 0.0), b.get("obs_loss", 0.0), rtol=1e-5)
    assert sorted(p.name for p in (shared / "checkpoints").iterdir())  # the job checkpointed
