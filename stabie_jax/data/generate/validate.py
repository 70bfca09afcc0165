"""Physics validation of generated reference data; writes a Markdown report.

Usage::

    python -m stabie_jax.data.generate.validate \\
        --aspirin stabie_jax/data/builtin/aspirin_xtb_500K.npz \\
        --water stabie_jax/data/builtin/water_spcfw_64_300K.npz [--water longer_run.npz] \\
        --shared-reference DATA_DIR/spcfw_water_64 --thermostat-study \\
        --output benchmarks/results/reference_data.md

Checks (each skipped with a note when its input or engine is missing):

* aspirin (xTB): kinetic temperature (3N degrees of freedom: Langevin thermalises all momenta),
  every frame keeps the covalent-bond graph of frame 0 (covalent radii × 1.2), stored
  energies/forces equal a fresh GFN2-xTB evaluation, forces equal −∇E by central differences;
* water: temperature per class of motion (molecular centre-of-mass translation vs
  intramolecular), O–H bond and H–O–H angle, potential energy per molecule, intermolecular
  O–O/O–H/H–H RDFs and their first peaks, O self-diffusion from the MSD (uncorrected and with
  the Yeh–Hummer finite-size correction, η = 0.75 mPa·s assumed for SPC/Fw), force checks
  through OpenMM's double-precision Reference platform;
* agreement with an independent SPC/Fw data set (``--shared-reference``: RDFs, O–H bond-length
  distribution, uncorrected D computed by the same code), with block standard errors;
* ``--thermostat-study``: short 64-water runs with Langevin (1 fs) and Nosé–Hoover (1 fs and
  0.5 fs) to measure equipartition (translational vs intramolecular temperature).

This module is the command line; the checks live in
:mod:`~stabie_jax.data.generate.validation_molecule` and
:mod:`~stabie_jax.data.generate.validation_water`, the page in
:mod:`~stabie_jax.data.generate.validation_report`. Their public names are re-exported here.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import platform
import sys
from typing import Any

from stabie_jax.data.generate.validation_molecule import validate_aspirin
from stabie_jax.data.generate.validation_report import render_markdown
from stabie_jax.data.generate.validation_water import (
    ASSUMED_VISCOSITY_PA_S,
    LITERATURE_D_SPCFW,
    thermostat_study,
    validate_water,
)

__all__ = [
    "ASSUMED_VISCOSITY_PA_S",
    "LITERATURE_D_SPCFW",
    "main",
    "render_markdown",
    "thermostat_study",
    "validate_aspirin",
    "validate_water",
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stabie_jax.data.generate.validate")
    parser.add_argument("--aspirin", type=pathlib.Path)
    parser.add_argument(
        "--water",
        type=pathlib.Path,
        action="append",
        default=[],
        help="water data set (repeatable)",
    )
    parser.add_argument("--shared-reference", type=pathlib.Path)
    parser.add_argument("--thermostat-study", action="store_true")
    parser.add_argument("--output", type=pathlib.Path, required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    args = _parser().parse_args(argv)
    results: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({platform.machine()}, {platform.processor() or 'cpu'})",
        "command": " ".join(
            ["python -m stabie_jax.data.generate.validate", *(argv or sys.argv[1:])]
        ),
    }
    if args.aspirin is not None:
        results["aspirin"] = validate_aspirin(args.aspirin)
    results["water"] = [validate_water(path, args.shared_reference) for path in args.water]
    if args.thermostat_study:
        results["thermostat_study"] = thermostat_study()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render_markdown(results))
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
