"""The ``stabie`` console script, run as a user would: from a directory outside the repository."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from experiments import cli

STABIE = pathlib.Path(sys.executable).parent / "stabie"


def _stabie(cwd, *args):
    assert STABIE.exists(), f"{STABIE} missing: `pip install -e .` installs the stabie command"
    return subprocess.run(
        [str(STABIE), *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_config_by_name_prints_values_and_comments_from_any_directory(tmp_path):
    done = _stabie(tmp_path, "config", "aspirin:smoke")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert (
        "data.source = 'builtin:aspirin_xtb_500K'  # registry name, path, glob or builtin:<name>"
        in lines
    )
    assert any(line.startswith("stabie.n_replicas = ") for line in lines)
    assert any(line.startswith("model.hparams = {") for line in lines)


def test_train_resolves_the_shipped_config_and_reports_errors_without_a_traceback(tmp_path):
    done = _stabie(
        tmp_path, "train", "--config=water:smoke", "--config.md.timestep_fs=0", "--workdir=w"
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "config.md.timestep_fs = 0.0 must be > 0" in done.stderr
    assert "Traceback" not in done.stderr
    shown = _stabie(tmp_path, "train", "--help")
    text = shown.stdout + shown.stderr
    for flag in ("--config:", "--workdir:"):
        assert flag in text, text[-2000:]
    unknown = _stabie(tmp_path, "train", "--config=benzene:smoke")
    assert unknown.returncode != 0 and "neither a shipped config" in unknown.stderr


def test_a_config_file_of_ones_own_runs_with_its_systems_runner(tmp_path):
    own = tmp_path / "mine.py"
    own.write_text(
        "from experiments.configs import aspirin\n\n\n"
        "def get_config():\n"
        "    c = aspirin.get_config('smoke')\n"
        "    c.stabie.n_replicas = 6  # six replicas\n"
        "    return c\n"
    )
    spec, runner = cli.resolve_config(str(own))
    assert runner == "experiments.molecule:run" and spec == str(own.resolve())
    assert cli.resolve_config("water:cpu")[1] == "experiments.periodic:run"
    assert cli.resolve_config("custom:smoke")[1] == "experiments.custom:run"
    done = _stabie(tmp_path, "config", "mine.py")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stabie.n_replicas = 6  # six replicas" in done.stdout.splitlines()


def test_config_comments_take_the_block_above_and_the_end_of_line(tmp_path):
    source = tmp_path / "c.py"
    source.write_text(
        "    # --- section ---\n"
        "    # first line\n"
        "    # second line\n"
        "    c.a.b = 1  # trailing\n"
        "    c.a.c = 2\n"
        "\n"
        "    c.a.d = 3  # only this\n"
    )
    assert cli.config_comments(source) == {
        "a.b": "first line second line trailing",
        "a.d": "only this",
    }


@pytest.mark.parametrize("command", ["import-schnet", "generate"])
def test_tool_subcommands_are_delegated(tmp_path, command):
    done = _stabie(tmp_path, command, "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def test_convert_writes_any_source_as_extxyz_that_reads_back_the_same(tmp_path):
    """``stabie convert`` (built-in water to extxyz, 5 evenly spaced frames) and the reader: the
    same positions, cell, energies and forces (eV, eV/Å) come back."""
    import numpy as np

    from stabie_jax import data

    done = _stabie(tmp_path, "convert", "builtin:water_spcfw_64_300K", "water.extxyz", "--frames=5")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "5 frames of 192 atoms" in done.stdout
    source = data.load_dataset("builtin:water_spcfw_64_300K")
    picked = source.subset(np.linspace(0, source.n_frames - 1, 5).round().astype(int))
    back = data.load_dataset(str(tmp_path / "water.extxyz"), energy_unit="eV")
    np.testing.assert_allclose(back.positions, picked.positions, atol=1e-6)
    np.testing.assert_allclose(back.cell, picked.cell, atol=1e-6)
    np.testing.assert_allclose(back.energies, picked.energies, rtol=1e-9)
    np.testing.assert_allclose(back.forces, picked.forces, atol=1e-6)
    bad = _stabie(tmp_path, "convert", "builtin:water_spcfw_64_300K", "w.extxyz", "--frame=5")
    assert bad.returncode != 0 and "unknown option '--frame=5'" in bad.stderr


def _readme_block(heading: str) -> list[str]:
    """The commands of the first bash block under ``heading`` in README.md."""
    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split(heading, 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_own_system_commands_name_real_configs_fields_and_sources():
    """The README's "Your own system" block (run verbatim in a fresh clone before release, see
    the issue notes) stays in step with the code: every --config.KEY it sets exists in the
    config it names, and every source it converts can be read."""
    import shlex

    from stabie_jax import data

    lines = _readme_block("## Your own system")
    trains = [shlex.split(line) for line in lines if line.startswith("stabie train")]
    converts = [shlex.split(line) for line in lines if line.startswith("stabie convert")]
    assert len(trains) == 2 and len(converts) == 2
    for argv in converts:
        assert data.load_dataset(argv[2]).n_frames >= int(argv[4].split("=")[1])
    written = {argv[3] for argv in converts}
    for argv in trains:
        spec = next(a.split("=", 1)[1] for a in argv if a.startswith("--config="))
        file_spec, runner = cli.resolve_config(spec)
        assert runner == "experiments.custom:run"
        path, _, variant = file_spec.partition(":")
        config = cli._load(pathlib.Path(path), variant)
        for arg in argv:
            if arg.startswith("--config."):
                key, value = arg[len("--config.") :].split("=", 1)
                section, name = key.split(".")
                assert name in config[section], key
                if key == "data.source":
                    assert value in written
        n_needed = config.data.n_train + config.data.n_val + config.data.n_test
        assert n_needed <= min(int(a[4].split("=")[1]) for a in converts)
