"""Run reports: ``report.json`` (every number, machine-readable) and ``report.md`` (for people).

A report records what was measured *and* under which conditions: the results (any nested dict
of numbers and arrays), the configuration, the wall-clock time of each stage, the versions of
the numerical stack (jax, jaxlib, jax-md, flax, optax, e3nn-jax, numpy, python) and the
hardware (CPU model from ``/proc/cpuinfo``, JAX devices). Values are converted to JSON with
:func:`to_jsonable`: numpy/JAX scalars and arrays become Python numbers and lists, non-finite
floats become ``null`` (JSON has no NaN), NamedTuples/dataclasses/ConfigDicts become dicts.

``report.md`` renders the same content as tables: a mapping of mappings (e.g.
``{"baseline": {...}, "stabie": {...}}``) becomes one comparison table with a column per model;
long arrays are left to ``report.json``; plots are linked by paths relative to the report.

Examples:
  >>> timings = {}
  >>> with timed(timings, "evaluate"):
  ...     pass
  >>> write_report(workdir, title="aspirin", results={"stability": {"baseline": b, "stabie": s}},
  ...              config=config, wall_clock_seconds=timings,
  ...              plots={"fraction unstable": workdir / "unstable.png"})   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import shlex
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from stabie_jax.jsonable import to_jsonable

__all__ = [
    "REPORT_JSON",
    "REPORT_MD",
    "command_line",
    "cpu_model",
    "hardware_info",
    "markdown_report",
    "read_report",
    "software_versions",
    "timed",
    "to_jsonable",
    "write_report",
]

REPORT_JSON = "report.json"
REPORT_MD = "report.md"

PACKAGES = (
    "jax",
    "jaxlib",
    "jax-md",
    "flax",
    "optax",
    "e3nn-jax",
    "numpy",
    "orbax-checkpoint",
    "ml_collections",
    "ase",
    "matplotlib",
    "stabie_jax",
)
"""Distributions whose versions are recorded (``None`` when not installed)."""

MAX_INLINE = 8
"""Arrays longer than this are only in report.json, not in the Markdown tables."""


def software_versions(packages: Sequence[str] = PACKAGES) -> dict:
    """``{"python": "3.11.x", "jax": ..., ...}`` from installed distribution metadata."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (else the platform's processor or machine string)."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "processor\t: ")):
                model = line.split(":", 1)[1].strip()
                if model and not model.isdigit():
                    return model
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info() -> dict:
    """CPU model and count, OS, JAX backend and devices of this process."""
    import jax

    devices = jax.devices()
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "jax_backend": jax.default_backend(),
        "jax_process_count": jax.process_count(),
        "devices": [
            {"id": d.id, "platform": d.platform, "kind": getattr(d, "device_kind", d.platform)}
            for d in devices
        ],
    }


@contextlib.contextmanager
def timed(timings: dict, stage: str) -> Iterator[None]:
    """Add the wall-clock seconds of the ``with`` block to ``timings[stage]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# Markdown rendering


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        if len(value) > MAX_INLINE:
            return f"[{len(value)} values, see {REPORT_JSON}]"
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value).replace("|", "\\|")


def _flatten(tree: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _section(name: str, value) -> list[str]:
    lines = [f"## {name}", ""]
    if isinstance(value, Mapping) and value and all(isinstance(v, Mapping) for v in value.values()):
        columns = list(value)
        flat = {c: _flatten(value[c]) for c in columns}
        keys = list(dict.fromkeys(k for c in columns for k in flat[c]))
        rows = [[k] + [_fmt(flat[c].get(k)) for c in columns] for k in keys]
        lines += _table(["quantity"] + columns, rows)
    elif isinstance(value, Mapping):
        lines += _table(["quantity", "value"], [[k, _fmt(v)] for k, v in _flatten(value).items()])
    else:
        lines.append(_fmt(value))
    return lines + [""]


def markdown_report(report: Mapping) -> str:
    """Markdown text of a report dict as written to ``report.json`` (see :func:`write_report`)."""
    lines = [f"# {report.get('title', 'Report')}", ""]
    meta = [f"Created {report.get('created_utc', '?')} UTC."]
    if report.get("command"):
        meta.append(f"Command: `{report['command']}`")
    lines += [" ".join(meta), ""]
    for note in report.get("notes") or []:
        lines.append(f"> {note}")
    if report.get("notes"):
        lines.append("")
    for name, value in (report.get("results") or {}).items():
        lines += _section(name, value)
    if report.get("plots"):
        lines += ["## Plots", ""]
        for caption, rel in report["plots"].items():
            lines += [f"**{caption}**", "", f"![{caption}]({rel})", ""]
    if report.get("trajectories"):
        lines += [
            "## Trajectories",
            "",
            "Frames of the chunk before and the chunk of the failure (extended XYZ, `time_ps` "
            "per frame): `ase gui FILE`, OVITO or VMD.",
            "",
        ]
        lines += [f"- [{caption}]({rel})" for caption, rel in report["trajectories"].items()]
        lines.append("")
    if report.get("wall_clock_seconds"):
        rows = [
            [k, f"{v:.1f}" if isinstance(v, float | int) else _fmt(v)]
            for k, v in report["wall_clock_seconds"].items()
        ]
        lines += ["## Wall clock", ""] + _table(["stage", "seconds"], rows) + [""]
    if report.get("versions"):
        lines += ["## Software", ""]
        lines += _table(
            ["package", "version"], [[k, _fmt(v)] for k, v in report["versions"].items()]
        )
        lines.append("")
    if report.get("hardware"):
        hw = dict(report["hardware"])
        devices = hw.pop("devices", [])
        rows = [[k, _fmt(v)] for k, v in hw.items()]
        rows.append(
            ["devices", ", ".join(f"{d['kind']} ({d['platform']}:{d['id']})" for d in devices)]
        )
        lines += ["## Hardware", ""] + _table(["item", "value"], rows) + [""]
    if report.get("config"):
        lines += ["## Configuration", "", "<details><summary>all settings</summary>", ""]
        lines += _table(
            ["key", "value"], [[k, _fmt(v)] for k, v in _flatten(report["config"]).items()]
        )
        lines += ["", "</details>", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Writing and reading


def command_line(argv: Sequence[str] | None = None) -> str:
    """The running command as one can paste it into a shell.

    ``python -m package.module ARGS`` for a module run with ``-m``, ``stabie SUBCOMMAND ARGS``
    for the console script, else ``argv`` itself; every argument shell-quoted.

    >>> command_line(["/env/bin/stabie train", "--config=aspirin:smoke", "--workdir=a b"])
    "stabie train --config=aspirin:smoke '--workdir=a b'"
    """
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return ""
    head = argv[0].split(" ")
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if os.path.basename(head[0]) == "stabie":
        head[0] = "stabie"
    elif argv == sys.argv and spec is not None and spec.name and head[0].endswith(".py"):
        head = ["python", "-m", spec.name.removesuffix(".__main__")]
    return " ".join([*head, *(shlex.quote(a) for a in argv[1:])])


def _relative(path, root: pathlib.Path) -> str:
    path = pathlib.Path(path)
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return os.path.relpath(path.resolve(), root.resolve())


def write_report(
    workdir,
    *,
    title: str,
    results: Mapping,
    config=None,
    wall_clock_seconds: Mapping[str, float] | None = None,
    plots: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
    command: str | None = None,
    trajectories: Mapping[str, Any] | None = None,
) -> tuple[pathlib.Path, pathlib.Path]:
    """Write ``report.json`` and ``report.md`` into ``workdir``.

    Args:
      workdir: output directory (created).
      title: report title (e.g. ``"Aspirin / SchNet, :cpu"``).
      results: nested dict of numbers/arrays (e.g. ``{"stability": {"baseline":
        result.summary(), "stabie": ...}, "h_of_r": {...}, "qm_test": {...}}``).
      config: the run configuration (ConfigDict or dict).
      wall_clock_seconds: ``{stage: seconds}`` (see :func:`timed`).
      plots: ``{caption: path}``; paths are stored relative to ``workdir``.
      notes: free-text lines (deviations from the paper, warnings).
      command: the command line that produced the run (default :func:`command_line`).
      trajectories: ``{caption: path}`` of trajectory files (extxyz), linked relative to
        ``workdir``.

    Returns:
      ``(json_path, md_path)``.
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    report = {
        "title": title,
        "created_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "command": command if command is not None else command_line(),
        "results": to_jsonable(results),
        "config": to_jsonable(config) if config is not None else None,
        "wall_clock_seconds": to_jsonable(dict(wall_clock_seconds or {})),
        "plots": {str(k): _relative(v, workdir) for k, v in (plots or {}).items()},
        "trajectories": {str(k): _relative(v, workdir) for k, v in (trajectories or {}).items()},
        "notes": list(notes),
        "versions": software_versions(),
        "hardware": hardware_info(),
    }
    json_path = workdir / REPORT_JSON
    md_path = workdir / REPORT_MD
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    tmp.replace(json_path)
    md_path.write_text(markdown_report(report) + "\n")
    return json_path, md_path


def read_report(workdir) -> dict:
    """The ``report.json`` of ``workdir`` as a dict."""
    path = pathlib.Path(workdir) / REPORT_JSON
    if not path.exists():
        raise ValueError(f"no {REPORT_JSON} in {workdir}: run the evaluate stage first")
    return json.loads(path.read_text())
