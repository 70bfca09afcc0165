"""The ``stabie`` command (installed by pip): one front door to the experiments and tools.

  stabie train    --config=aspirin:smoke [--workdir=DIR] [--config.<section>.<key>=VALUE ...]
  stabie evaluate --config=aspirin:smoke --workdir=DIR     (the evaluate stage only)
  stabie config   aspirin:smoke                            (every field, its value and comment)
  stabie import-schnet | import-nequip | export-schnet ... (python -m stabie_jax.interop)
  stabie generate molecule | water ...                     (python -m stabie_jax.data.generate)
  stabie convert  SOURCE OUT.extxyz [--frames=N] [--energy_unit=U] [--labels=L] [--energy_key=K]
                  [--forces_key=K]   (any readable data, e.g. builtin:water_spcfw_64_300K, to
                                      extxyz or the stabie npz, eV and Å; N frames evenly spaced)

``--config`` takes a shipped config by name (``aspirin``, ``ala3``, ``water``, with an optional
``:variant``: ``paper``, ``cpu``, ``smoke``), resolved inside the installed package so the
command works from any directory, or a path to a config file of your own. ``stabie train
--help`` lists the flags. The ``python -m experiments.<system>`` commands remain.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re
import sys

__all__ = ["SYSTEMS", "config_comments", "convert", "main", "resolve_config"]

# System name -> the stage runner its entry point calls.
SYSTEMS = {
    "aspirin": "experiments.molecule:run",
    "ala3": "experiments.molecule:run",
    "water": "experiments.periodic:run",
    "custom": "experiments.custom:run",
}
CONFIG_DIR = pathlib.Path(__file__).resolve().parent / "configs"
USAGE = __doc__.split("\n\n")[0] + "\n" + __doc__.split("\n\n")[1]


def resolve_config(spec: str) -> tuple[str, str]:
    """``(config file[:variant], runner)`` for a name (``aspirin:smoke``) or a file path.

    A config file of your own runs with the runner of the system it sets (``config.system``).
    """
    name, sep, variant = spec.partition(":")
    if name in SYSTEMS:
        return f"{CONFIG_DIR / (name + '.py')}{sep}{variant}", SYSTEMS[name]
    path = pathlib.Path(name).expanduser()
    if not path.is_file():
        raise SystemExit(
            f"stabie: --config={spec}: neither a shipped config ({', '.join(SYSTEMS)}, e.g. "
            "aspirin:smoke) nor a config file"
        )
    config = _load(path, variant)
    system = str(config.get("system", ""))
    if system not in SYSTEMS:
        raise SystemExit(
            f"stabie: {path} sets config.system = {system!r}; expected one of {list(SYSTEMS)}"
        )
    return f"{path.resolve()}{sep}{variant}", SYSTEMS[system]


def _load(path: pathlib.Path, variant: str):
    spec = importlib.util.spec_from_file_location(f"_stabie_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


_ASSIGNMENT = re.compile(r"^\s*c\.([A-Za-z_][\w.]*)\s*=\s*(.*)$")


def config_comments(*sources: pathlib.Path) -> dict[str, str]:
    """``{"section.key": comment}`` from config sources: the comment block right above an
    assignment ``c.section.key = ...`` and the comment at the end of its line (first source
    that comments a key wins)."""
    comments: dict[str, str] = {}
    for source in sources:
        block: list[str] = []
        for line in source.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith("#"):
                text = stripped.lstrip("#").strip()
                if not text.startswith("---"):
                    block.append(text)
                continue
            match = _ASSIGNMENT.match(line)
            if match:
                key, rest = match.groups()
                trailing = rest.split("  # ", 1)[1].strip() if "  # " in rest else ""
                text = " ".join([*block, trailing]).strip()
                if text and key not in comments:
                    comments[key] = text
            block = []
    return comments


def _flatten(config, prefix=""):
    for key, value in config.items():
        name = f"{prefix}{key}"
        if hasattr(value, "items") and key != "hparams":
            yield from _flatten(value, name + ".")
        else:
            yield name, value.to_dict() if hasattr(value, "to_dict") else value


def print_config(spec: str) -> int:
    """Print every field of a config with its value and comment."""
    file_spec, _ = resolve_config(spec)
    path, _, variant = file_spec.partition(":")
    config = _load(pathlib.Path(path), variant)
    comments = config_comments(pathlib.Path(path), CONFIG_DIR / "__init__.py")
    print(f"# {spec}: override any field with --config.<key>=<value>")
    for key, value in _flatten(config):
        note = comments.get(key, "")
        print(f"{key} = {value!r}" + (f"  # {note}" if note else ""))
    return 0


def _train(argv: list[str], *, evaluate_only: bool) -> int:
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None and not any(a in ("--help", "-h", "--helpfull") for a in argv):
        raise SystemExit("stabie: give --config=NAME[:variant], e.g. --config=aspirin:smoke")
    file_spec, runner = resolve_config(spec or "aspirin:smoke")
    flags = [f"--config={file_spec}" if a.startswith("--config=") else a for a in argv]
    if evaluate_only and not any(a.startswith("--config.stages=") for a in flags):
        flags.append("--config.stages=evaluate")
    from experiments import app

    # "stabie train" as the program: absl's help and the reports' command line show it.
    sys.argv = [f"{sys.argv[0]} {'evaluate' if evaluate_only else 'train'}", *flags]
    app.launch(runner, file_spec)  # absl parses the flags and exits with run's status
    return 0


_CONVERT_OPTIONS = ("frames", "energy_unit", "labels", "energy_key", "forces_key")


def convert(argv: list[str]) -> int:
    """``stabie convert SOURCE OUT [--frames=N] [reader options]``: any data source the
    experiments read (a file, a glob, a registry name, ``builtin:<name>``) written as extxyz
    (``.extxyz``/``.xyz``) or the stabie npz (``.npz``), in eV and Å."""
    positional = [a for a in argv if not a.startswith("--")]
    options = {}
    for arg in (a for a in argv if a.startswith("--")):
        key, sep, value = arg[2:].partition("=")
        if not sep or key not in _CONVERT_OPTIONS:
            raise SystemExit(
                f"stabie convert: unknown option {arg!r}; options: "
                + ", ".join(f"--{k}=..." for k in _CONVERT_OPTIONS)
            )
        options[key] = value
    if len(positional) != 2:
        raise SystemExit("stabie convert SOURCE OUT.extxyz [--frames=N] (see stabie --help)")
    source, out = positional
    import numpy as np

    from stabie_jax import data

    n_frames = int(options.pop("frames", 0) or 0)
    try:
        dataset = data.load_dataset(source, **{k: v for k, v in options.items() if v})
    except (ValueError, OSError) as err:
        raise SystemExit(f"stabie convert: {err}") from None
    if 0 < n_frames < dataset.n_frames:
        dataset = dataset.subset(np.linspace(0, dataset.n_frames - 1, n_frames).round().astype(int))
    suffix = pathlib.Path(out).suffix
    if suffix == ".npz":
        path = data.save_dataset(dataset, out)
    elif suffix in (".extxyz", ".xyz"):
        path = data.write_extxyz(dataset, out)
    else:
        raise SystemExit(f"stabie convert: {out}: give a .extxyz, .xyz or .npz file name")
    cell = "no cell" if dataset.cell is None else f"cell {np.round(dataset.cell, 3).tolist()} Å"
    print(f"{path}: {dataset.n_frames} frames of {len(dataset.atomic_numbers)} atoms, {cell}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``stabie`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command in ("train", "evaluate"):
        return _train(rest, evaluate_only=command == "evaluate")
    if command == "config":
        if len(rest) != 1:
            raise SystemExit("stabie config NAME[:variant]   e.g. stabie config aspirin:smoke")
        return print_config(rest[0])
    if command in ("import-schnet", "import-nequip", "export-schnet"):
        from stabie_jax.interop.__main__ import main as interop_main

        return interop_main([command, *rest])
    if command == "convert":
        return convert(rest)
    if command == "generate":
        from stabie_jax.data.generate.__main__ import main as generate_main

        return generate_main(rest)
    print(f"stabie: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
