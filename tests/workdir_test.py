"""One run per workdir (a lock held by a real second process) and per-stage settings records."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

from experiments import config_reader, configs, molecule, stages
from experiments.configs import aspirin as aspirin_config
from stabie_jax import workdir as workdir_lib

HOLDER = textwrap.dedent(
    """
    import sys, time
    from stabie_jax import workdir
    with workdir.lock_workdir(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(120)
    """
)


def _start_holder(path: pathlib.Path) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=pathlib.Path(__file__).resolve().parents[1],
    )
    line = child.stdout.readline().strip()
    if line != "locked":  # the test must not go on unless the other process holds the lock
        child.kill()
        pytest.fail(f"lock-holding child did not report the lock (got {line!r})")
    return child


def test_second_process_is_refused_and_a_killed_holder_frees_the_workdir(tmp_path):
    child = _start_holder(tmp_path)
    try:
        with pytest.raises(workdir_lib.WorkdirBusyError, match=f"pid {child.pid} on .*--workdir"):
            with workdir_lib.lock_workdir(tmp_path):
                pass
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    # The lock file is still there (stale), but the kernel dropped the lock with its holder.
    assert (tmp_path / workdir_lib.LOCK_FILE).exists()
    with workdir_lib.lock_workdir(tmp_path):
        text = (tmp_path / workdir_lib.LOCK_FILE).read_text()
        assert f"pid {os.getpid()} " in text and str(child.pid) not in text


def test_lock_is_released_after_the_block(tmp_path):
    with workdir_lib.lock_workdir(tmp_path):
        pass
    child = _start_holder(tmp_path)  # fails the test if the child cannot take it
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)


def test_claim_stage_resumes_refuses_and_moves_aside(tmp_path):
    out = tmp_path / "pretrain"
    out.mkdir()
    (out / "metrics.jsonl").write_text("epoch 1\n")
    spec = {"pretrain": {"learning_rate": 1e-3, "max_epochs": 20}, "data": "abc"}
    # Outputs without a record (older workdir): recorded, nothing moved.
    fp = workdir_lib.claim_stage(tmp_path, "pretrain", spec, outputs=("pretrain",))
    assert fp == workdir_lib.settings_fingerprint(spec) and (out / "metrics.jsonl").exists()
    records = json.loads((tmp_path / workdir_lib.STAGES_FILE).read_text())
    assert records["pretrain"] == {"fingerprint": fp, "spec": spec}
    # Same settings: resume.
    assert workdir_lib.claim_stage(tmp_path, "pretrain", spec, outputs=("pretrain",)) == fp
    # Different settings: refused, naming each differing key with both values, nothing moved.
    changed = {"pretrain": {"learning_rate": 2e-3, "max_epochs": 20, "ema": 0.9}, "data": "abc"}
    with pytest.raises(workdir_lib.StageMismatchError) as err:
        workdir_lib.claim_stage(tmp_path, "pretrain", changed, outputs=("pretrain",))
    message = str(err.value)
    assert "pretrain.learning_rate: 0.001 -> 0.002" in message
    assert "pretrain.ema: <unset> -> 0.9" in message and "max_epochs" not in message
    assert "--config.overwrite_stages=pretrain" in message and "--workdir" in message
    assert (out / "metrics.jsonl").read_text() == "epoch 1\n"
    assert json.loads((tmp_path / workdir_lib.STAGES_FILE).read_text())["pretrain"]["spec"] == spec
    # Overwrite: old outputs moved (not deleted) and the new settings recorded.
    new_fp = workdir_lib.claim_stage(
        tmp_path, "pretrain", changed, outputs=("pretrain",), overwrite=True
    )
    assert new_fp != fp and not out.exists()
    (moved,) = (tmp_path / "replaced").iterdir()
    assert moved.name.startswith("pretrain-")
    assert (moved / "pretrain" / "metrics.jsonl").read_text() == "epoch 1\n"
    records = json.loads((tmp_path / workdir_lib.STAGES_FILE).read_text())
    assert records["pretrain"]["fingerprint"] == new_fp


def test_settings_diff_and_array_fingerprint():
    assert workdir_lib.settings_diff({"a": {"b": 1}, "c": 2}, {"a": {"b": 1}, "c": 3}) == [
        "c: 2 -> 3"
    ]
    x = np.arange(6.0)
    assert workdir_lib.array_fingerprint(x) == workdir_lib.array_fingerprint(x.copy())
    assert workdir_lib.array_fingerprint(x) != workdir_lib.array_fingerprint(x.reshape(2, 3))
    assert workdir_lib.array_fingerprint(x) != workdir_lib.array_fingerprint(x.astype(np.float32))
    y = x.copy()
    y[3] += 1e-12
    assert workdir_lib.array_fingerprint(x) != workdir_lib.array_fingerprint(y)


def _frames(seed: int, n: int = 4):
    rng = np.random.default_rng(seed)
    return types.SimpleNamespace(
        positions=rng.normal(size=(n, 3, 3)),
        energies=rng.normal(size=n),
        forces=rng.normal(size=(n, 3, 3)),
        atomic_numbers=np.array([8, 1, 1]),
    )


def test_experiment_stage_claims_follow_the_config(tmp_path):
    config = aspirin_config.get_config("smoke")
    train, val = _frames(0), _frames(1)
    stages.claim_pretrain(config, tmp_path, train, val)
    # Run mechanics do not change the stage's identity...
    config.progress = False
    config.pretrain.overrides.checkpoint_every_epochs = 7
    stages.claim_pretrain(config, tmp_path, train, val)
    # ...a setting that changes the result does, and so do other training frames.
    config.pretrain.overrides.max_epochs = 21
    with pytest.raises(workdir_lib.StageMismatchError, match=r"pretrain\.max_epochs: 20 -> 21"):
        stages.claim_pretrain(config, tmp_path, train, val)
    config.pretrain.overrides.max_epochs = 20
    with pytest.raises(workdir_lib.StageMismatchError, match=r"^stage 'pretrain'.*data: "):
        stages.claim_pretrain(config, tmp_path, _frames(2), val)
    config.overwrite_stages = "pretrain"
    stages.claim_pretrain(config, tmp_path, _frames(2), val)
    # A wall-clock budget is not a result: a resume may be given more time.
    cpu = aspirin_config.get_config("cpu")
    stages.claim_pretrain(cpu, tmp_path / "cpu", train, val)
    cpu.pretrain.overrides.max_wall_seconds = 9600.0
    stages.claim_pretrain(cpu, tmp_path / "cpu", train, val)


def test_stabie_claim_tracks_the_starting_model_and_the_learning_rate(tmp_path, monkeypatch):
    config = aspirin_config.get_config("smoke")
    sha = {"value": "params-a"}
    monkeypatch.setattr(stages.checkpoint, "model_params_checksum", lambda d: sha["value"])
    train = _frames(0)
    stages.claim_stabie(config, tmp_path, train, tmp_path / "model")
    config.stabie.max_wall_hours = 3.0  # a budget, not a result
    config.md.replica_batch_size = 2  # a layout, not a result
    config.evaluate.n_replicas = 3  # another stage
    stages.claim_stabie(config, tmp_path, train, tmp_path / "model")
    config.stabie.learning_rate = 5e-3
    with pytest.raises(workdir_lib.StageMismatchError, match=r"stabie\.learning_rate"):
        stages.claim_stabie(config, tmp_path, train, tmp_path / "model")
    config.stabie.learning_rate = 1e-3
    sha["value"] = "params-b"
    with pytest.raises(workdir_lib.StageMismatchError, match="start_model_sha256"):
        stages.claim_stabie(config, tmp_path, train, tmp_path / "model")


def test_stage_lists_are_validated():
    with pytest.raises(ValueError, match=r"config\.stages is empty"):
        config_reader.parse_stages("")
    config = aspirin_config.get_config("smoke")
    config.overwrite_stages = "pretrain,bogus"
    with pytest.raises(ValueError, match=r"config\.overwrite_stages"):
        config_reader.overwrite_stages(config)
    config.overwrite_stages = "evaluate"
    with pytest.raises(ValueError, match="evaluate"):
        config_reader.overwrite_stages(config)


@pytest.mark.parametrize("system", ["aspirin", "ala3", "water"])
@pytest.mark.parametrize("variant", ["paper", "cpu", "smoke"])
def test_shipped_configs_pass_the_setup_checks(system, variant):
    import importlib

    config = importlib.import_module(f"experiments.configs.{system}").get_config(variant)
    assert configs.check_config(config) == []


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("md.temperature_kelvin", 0.0, r"config\.md\.temperature_kelvin = 0\.0 must be > 0"),
        ("md.temperature_kelvin", -300.0, "must be > 0"),
        ("md.timestep_fs", 0.0, r"config\.md\.timestep_fs = 0\.0 must be > 0"),
        ("md.timestep_fs", -0.5, r"timestep_fs = -0\.5 must be > 0"),
        ("stabie.n_replicas", 0, r"stabie\.n_replicas = 0 must be > 0"),
        ("evaluate.n_replicas", 0, r"evaluate\.n_replicas = 0 must be > 0"),
        ("stabie.minibatch_size", 1, r"minibatch_size = 1 must be >= 2"),
        ("stabie.f_max", 1.5, r"f_max = 1\.5 must lie in \[0, 1\]"),
        ("stabie.f_min", 0.9, r"f_min = 0\.9 must be below"),
        ("stabie.qm_weight", -1.0, r"qm_weight = -1\.0 must be >= 0"),
        ("evaluate.transfer_temperatures_kelvin", (700.0, 0.0), "each must be > 0"),
        ("evaluate.n_replicas", 10_000, r"n_replicas = 10000 exceeds config\.data\.n_test"),
        ("md.replica_batch_size", -2, r"replica_batch_size = -2 must be >= 0"),
        ("stabie.learning_samples", "stable", r"learning_samples = 'stable' must be one of"),
        ("stabie.grad_clip_scope", "both", r"grad_clip_scope = 'both' must be one of"),
        ("md.layout", "chunks", r"md\.layout = 'chunks' must be one of \('auto', 'vmap'\)"),
    ],
)
def test_invalid_settings_are_refused_before_any_compute(key, value, message):
    config = aspirin_config.get_config("smoke")
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=message):
        configs.check_config(config)


def test_long_timestep_warns_and_invalid_run_stops_before_loading_data(tmp_path):
    config = aspirin_config.get_config("smoke")
    config.md.timestep_fs = 3.0
    (warning,) = configs.check_config(config)
    assert "timestep_fs = 3.0 fs is above 2.0 fs" in warning
    config.md.timestep_fs = 0.0
    config.data.source = str(tmp_path / "does_not_exist.npz")  # would fail later, differently
    with pytest.raises(ValueError, match="timestep_fs = 0.0 must be > 0"):
        molecule.run(config, tmp_path / "run")
    assert not (tmp_path / "run" / "config.json").exists()


def _entry_point(tmp_path, *flags, env=None):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.aspirin",
            "--config=experiments/configs/aspirin.py:smoke",
            f"--workdir={tmp_path}",
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=pathlib.Path(__file__).resolve().parents[1],
        env={**os.environ, **(env or {})},
    )


def test_entry_point_prints_the_error_and_the_fix_without_a_traceback(tmp_path):
    done = _entry_point(tmp_path, "--config.md.timestep_fs=0")
    assert done.returncode == 1, done.stderr[-2000:]
    assert "error: invalid settings: config.md.timestep_fs = 0.0 must be > 0" in done.stderr
    assert "Traceback" not in done.stderr
    shown = _entry_point(tmp_path, "--config.md.timestep_fs=0", env={"STABIE_TRACEBACK": "1"})
    assert shown.returncode != 0 and "Traceback" in shown.stderr
    verbose = _entry_point(tmp_path, "--config.md.timestep_fs=0", "--verbosity=1")
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr


def test_entry_point_refuses_a_workdir_held_by_another_run(tmp_path):
    child = _start_holder(tmp_path)
    try:
        done = _entry_point(tmp_path, "--config.stages=pretrain")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"is in use by another run (pid {child.pid} on" in done.stderr
    assert not (tmp_path / "config.json").exists()  # nothing written by the refused run


def test_entry_point_help_lists_config_and_workdir(tmp_path):
    done = _entry_point(tmp_path, "--help")  # absl exits 1 after printing the help
    text = done.stdout + done.stderr
    for flag in ("--config:", "--workdir:", "--host_devices:", "--config.<section>.<key>"):
        assert flag in text, text[-2000:]
