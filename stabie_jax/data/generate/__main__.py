"""Command line: ``python -m stabie_jax.data.generate molecule|water ...``.

Examples:
  GFN2-xTB aspirin at 500 K (the built-in ``aspirin_xtb_500K.npz``)::

    python -m stabie_jax.data.generate molecule --smiles "CC(=O)Oc1ccccc1C(=O)O" \\
        --temperature 500 --timestep 0.5 --equilibration-steps 20000 --steps 60000 \\
        --save-interval 20 --seed 2026 --output aspirin_xtb_500K.npz

  64 SPC/Fw waters at 300 K (the built-in ``water_spcfw_64_300K.npz``)::

    python -m stabie_jax.data.generate water --molecules 64 --temperature 300 \\
        --equilibration-steps 20000 --steps 20000 --save-interval 20 --seed 2026 \\
        --output water_spcfw_64_300K.npz

A killed run is resumed by repeating the same command; the output file appears only when the run
is complete (work in progress lives in ``<output>.partial/``).
"""

from __future__ import annotations

import argparse
import sys

from stabie_jax.data.generate.extras import MissingExtraError, command_line


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _common(parser: argparse.ArgumentParser, temperature: float, timestep: float) -> None:
    parser.add_argument("--output", required=True, help="final .npz path")
    parser.add_argument("--temperature", type=_positive_float, default=temperature, help="K")
    parser.add_argument("--timestep", type=_positive_float, default=timestep, help="fs")
    parser.add_argument(
        "--equilibration-steps", type=_nonnegative_int, required=True, help="unsaved MD steps"
    )
    parser.add_argument(
        "--steps", type=_positive_int, required=True, help="production MD steps (saved part)"
    )
    parser.add_argument("--save-interval", type=_positive_int, default=10, help="steps per frame")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--chunk-frames",
        type=_positive_int,
        default=100,
        help="frames per checkpointed chunk (resume granularity)",
    )
    parser.add_argument(
        "--precision",
        choices=("float32", "float64"),
        default="float32",
        help="dtype of stored positions/velocities/forces (energies: float64)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the generator command line."""
    parser = argparse.ArgumentParser(
        prog="python -m stabie_jax.data.generate",
        description="Generate reference MD data (stabie npz: Å, eV, eV/Å, Å/fs).",
    )
    sub = parser.add_subparsers(dest="system", required=True)

    mol = sub.add_parser("molecule", help="NVT MD of one molecule with GFN2-xTB (tblite)")
    source = mol.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--geometry",
        help="start geometry: any file ASE reads, or an MD17/rMD17/stabie .npz (first frame)",
    )
    source.add_argument("--smiles", help="SMILES string, embedded in 3-D with RDKit")
    _common(mol, temperature=300.0, timestep=0.5)
    mol.add_argument("--thermostat", choices=("langevin", "nose-hoover"), default="langevin")
    mol.add_argument(
        "--friction", type=_positive_float, default=0.01, help="Langevin friction, 1/fs"
    )
    mol.add_argument(
        "--nose-hoover-damping",
        type=_positive_float,
        default=50.0,
        help="Nosé–Hoover chain damping time, fs",
    )
    mol.add_argument("--method", default="GFN2-xTB", choices=("GFN2-xTB", "GFN1-xTB", "IPEA1-xTB"))
    mol.add_argument("--charge", type=int, default=0)
    mol.add_argument("--multiplicity", type=_positive_int, default=1)

    wat = sub.add_parser("water", help="N flexible waters in a periodic box with OpenMM")
    wat.add_argument("--molecules", type=_positive_int, default=64)
    wat.add_argument("--model", choices=("spcfw", "spce-flex"), default="spcfw")
    wat.add_argument("--density", type=_positive_float, default=0.997, help="g/cm^3")
    _common(wat, temperature=300.0, timestep=1.0)
    wat.add_argument("--thermostat", choices=("langevin", "nose-hoover"), default="langevin")
    wat.add_argument(
        "--friction", type=_positive_float, default=1.0, help="Langevin friction, 1/ps"
    )
    wat.add_argument(
        "--nose-hoover-collision",
        type=_positive_float,
        default=10.0,
        help="Nosé–Hoover chain collision frequency, 1/ps",
    )
    wat.add_argument(
        "--cutoff", type=_positive_float, default=6.0, help="real-space PME and LJ cutoff, Å"
    )
    wat.add_argument("--ewald-tolerance", type=_positive_float, default=1e-5)
    wat.add_argument(
        "--platform",
        default="auto",
        choices=("auto", "CUDA", "CPU", "Reference"),
        help="OpenMM platform; auto = CUDA when available, else CPU",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.steps % args.save_interval != 0:
        parser.error(
            f"--steps ({args.steps}) must be a multiple of --save-interval ({args.save_interval})"
        )
    command = command_line(argv)
    common = dict(
        temperature_kelvin=args.temperature,
        timestep_fs=args.timestep,
        equilibration_steps=args.equilibration_steps,
        steps=args.steps,
        save_interval=args.save_interval,
        seed=args.seed,
        thermostat=args.thermostat,
        chunk_frames=args.chunk_frames,
        float_dtype=args.precision,
        progress=not args.no_progress,
        command=command,
    )
    try:
        if args.system == "molecule":
            from stabie_jax.data.generate import molecule

            if args.smiles is not None:
                atoms = molecule.embed_smiles(args.smiles, seed=args.seed)
                source = {
                    "start_geometry": f"RDKit ETKDGv3+MMFF94 embedding of SMILES "
                    f"{args.smiles!r} (seed {args.seed})",
                    "smiles": args.smiles,
                }
            else:
                atoms = molecule.load_geometry(args.geometry)
                source = {"start_geometry": f"first frame of {args.geometry}"}
            path = molecule.generate_molecule(
                atoms,
                args.output,
                friction_per_fs=args.friction,
                nose_hoover_damping_fs=args.nose_hoover_damping,
                method=args.method,
                charge=args.charge,
                multiplicity=args.multiplicity,
                extra_metadata=source,
                **common,
            )
        else:
            from stabie_jax.data.generate import water

            path = water.generate_water(
                args.output,
                n_molecules=args.molecules,
                model=args.model,
                density_g_per_cm3=args.density,
                friction_per_ps=args.friction,
                nose_hoover_collision_per_ps=args.nose_hoover_collision,
                cutoff_angstrom=args.cutoff,
                ewald_tolerance=args.ewald_tolerance,
                platform=args.platform,
                **common,
            )
    except (MissingExtraError, ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
