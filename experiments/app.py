"""Shared absl entry point: flags for config, workdir and devices, then one ``run`` call.

Flags:
  --config: an ml_collections config file, ``path.py[:variant]`` (``--config.x=y`` overrides).
  --workdir: output directory (default ``runs/<system>_<variant>``).
  --platform: ``cpu``, ``gpu`` or ``tpu`` (sets ``JAX_PLATFORMS`` before JAX starts).
  --host_devices: N CPU devices (``--xla_force_host_platform_device_count``). Default: with
    ``config.md.layout = "auto"``, one per physical core this process may use (the fast CPU
    layout: each core steps its share of the replicas); ``--host_devices=1`` turns it off. An
    ``XLA_FLAGS`` that already sets the count wins. GPU/TPU devices are not affected.
  --distributed: call ``jax.distributed.initialize()`` (multi-host; coordinator, process count
    and id come from the environment or the flags below, as JAX documents).
"""

from __future__ import annotations

import importlib
import logging as pylogging
import os
import pathlib
import sys
from contextlib import nullcontext

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags(default_config: str) -> None:
    config_flags.DEFINE_config_file(
        "config",
        default_config,
        "Experiment configuration: path.py[:variant] (variants paper, cpu, smoke). Override "
        "any field with --config.<section>.<key>=<value>, e.g. --config.stabie.n_replicas=64; "
        "the fields, with comments, are in the config file.",
        lock_config=True,
    )
    flags.DEFINE_string("workdir", None, "Output directory (default runs/<system>_<variant>).")
    flags.DEFINE_enum("platform", None, ["cpu", "gpu", "cuda", "tpu"], "JAX platform.")
    flags.DEFINE_integer(
        "host_devices",
        None,
        "CPU devices to split the replicas over (default with md.layout=auto: one per physical "
        "core; 1 = a single CPU device).",
        lower_bound=1,
    )
    flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")
    flags.DEFINE_string("coordinator_address", None, "Multi-host coordinator host:port.")
    flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
    flags.DEFINE_integer("process_id", None, "Multi-host: id of this process.")


def physical_cores() -> int:
    """Physical cores this process may run on: its CPU affinity, hyperthread siblings counted
    once (Linux ``/sys`` topology; the logical CPU count where that is not readable)."""
    if hasattr(os, "sched_getaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
    else:
        cpus = list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        siblings = pathlib.Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            return max(1, len(cpus))
    return max(1, len(cores))


def host_device_count(config) -> int | None:
    """CPU devices to create: ``--host_devices``, else one per physical core when
    ``config.md.layout`` is ``"auto"`` (the default), else None (JAX's default, one). None
    too when ``XLA_FLAGS`` already sets the count."""
    if FLAGS.host_devices:
        return int(FLAGS.host_devices)
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return None
    md = config.get("md")
    if md is None or str(md.get("layout", "auto")) != "auto":
        return None
    return physical_cores()


def _configure_jax(config) -> None:
    """Device and precision choices, made once before any computation."""
    if FLAGS.platform:
        os.environ["JAX_PLATFORMS"] = FLAGS.platform
    n_host = host_device_count(config)
    if n_host:
        xla = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{xla} --xla_force_host_platform_device_count={n_host}".strip()
    import jax

    if FLAGS.distributed:
        # CPU devices of several processes talk over gloo (GPU/TPU use their own collectives).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
    if config.float64:
        jax.config.update("jax_enable_x64", True)
    logging.info("JAX %s on %s", jax.__version__, jax.devices())


def _resolve(run_fn):
    """``run_fn`` itself, or the function a ``"package.module:function"`` string names.

    Entry points pass strings so that nothing imports JAX-MD before :func:`_configure_jax`:
    importing ``jax_md`` runs JAX code (``jax_md.rigid_body`` at module level), which starts the
    backend and freezes the device set, after which ``--host_devices`` and ``--platform`` would
    silently do nothing.
    """
    if not isinstance(run_fn, str):
        return run_fn
    module_name, _, function_name = run_fn.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


# Errors that describe bad input or settings and say how to fix them: printed as one paragraph.
USER_ERRORS = (ValueError, OSError, FloatingPointError, RuntimeError)
TRACEBACK_HINT = "(the traceback: rerun with --verbosity=1 or STABIE_TRACEBACK=1)"


def _want_traceback() -> bool:
    if os.environ.get("STABIE_TRACEBACK", "") not in ("", "0"):
        return True
    return bool(FLAGS["verbosity"].present and FLAGS.verbosity >= 1)


def main_for(run_fn, default_config: str):
    """Return an absl ``main`` that configures JAX and calls ``run_fn(config, workdir)``.

    Args:
      run_fn: the stage runner, or ``"package.module:function"`` naming it (imported only after
        the device flags have been applied; see :func:`_resolve`).
      default_config: config file used when ``--config`` is not given.
    """

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        config = FLAGS.config
        if not FLAGS["verbosity"].present:
            # Orbax logs every checkpoint read/write at INFO; progress bars show what a user
            # needs. -v 0 (or --verbosity=0) brings the INFO lines back.
            logging.set_verbosity(logging.WARNING)
            pylogging.getLogger().setLevel(pylogging.WARNING)
        if not config.progress:
            _show_progress_lines()
        _configure_jax(config)
        run = _resolve(run_fn)
        workdir = FLAGS.workdir or os.path.join(
            "runs", f"{config.system}_{config.get('variant', 'paper')}"
        )
        logging.info("workdir %s, stages %s", workdir, config.stages)
        import jax

        from stabie_jax import workdir as workdir_lib

        try:
            # One run per workdir; in a multi-process run, process 0 holds the lock for all.
            with workdir_lib.lock_workdir(workdir) if jax.process_index() == 0 else nullcontext():
                summary = run(config, workdir)
        except USER_ERRORS as err:
            if _want_traceback():
                raise
            print(f"error: {err}\n{TRACEBACK_HINT}", file=sys.stderr)
            return 1
        print(f"done: {workdir}")
        for key, value in summary.get("wall_seconds", {}).items():
            print(f"  {key}: {value:.1f} s")
        if "evaluate" in summary.get("stages", ()):
            print(summary_table(workdir))
        return 0

    return main


def _show_progress_lines() -> None:
    """With the progress bars off, print the loops' one-line-per-step reports on stderr."""
    progress = pylogging.getLogger("stabie_jax.progress")
    if not progress.handlers:
        handler = pylogging.StreamHandler(sys.stderr)
        handler.setFormatter(pylogging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        progress.addHandler(handler)
    progress.setLevel(pylogging.INFO)
    progress.propagate = False


def summary_table(workdir) -> str:
    """The evaluation's headline table (one row per model) and where the report is."""
    import json
    import pathlib

    out = pathlib.Path(workdir) / "evaluate"
    path = out / "report.json"
    if not path.exists():
        return f"no evaluation report in {out}"
    table = json.loads(path.read_text())["results"].get("comparison", {})
    if not table:
        return f"report: {out / 'report.md'}"
    columns = list(next(iter(table.values())))
    rows = [["model", *columns]]
    for name, row in table.items():
        rows.append([name, *(_cell(row.get(c)) for c in columns)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(["", *lines, "", f"report: {out / 'report.md'} (figures beside it)"])


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "–" if value is None else str(value)


_ENTRY_FLAGS = (
    "config",
    "workdir",
    "platform",
    "host_devices",
    "distributed",
    "coordinator_address",
    "num_processes",
    "process_id",
)


def launch(run_fn, default_config: str) -> None:
    define_flags(default_config)
    # absl's --help lists the main module's key flags; these are defined here, so declare them
    # key flags of the entry point (absl names the main module by sys.argv[0]).
    for name in _ENTRY_FLAGS:
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])
    app.run(main_for(run_fn, default_config), argv=sys.argv)
