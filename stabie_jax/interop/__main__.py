"""Command line: ``python -m stabie_jax.interop import-schnet|import-nequip|export-schnet ...``.

Examples:
  The StABlE paper's pretrained aspirin SchNet as a stabie_jax model checkpoint (usable as
  ``--config.init_checkpoint=models/aspirin_schnet_pretrained`` and by the ASE calculator)::

    python -m stabie_jax.interop import-schnet best_checkpoint.pt \\
        --out models/aspirin_schnet_pretrained

  The paper's Ac-Ala3-NHMe NequIP (atoms taken from a structure file)::

    python -m stabie_jax.interop import-nequip best_model.pth config.yaml \\
        --atoms frames.xyz --out models/ala3_nequip_pretrained

  A stabie_jax SchNet back to an MDsim-style PyTorch checkpoint::

    python -m stabie_jax.interop export-schnet models/aspirin_schnet_stable --out ckpt.pt

All need torch (``pip install 'stabie-jax[torch]'``).
"""

from __future__ import annotations

import argparse
import json
import sys


def _atomic_numbers(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from err
    if not values:
        raise argparse.ArgumentTypeError("empty list of atomic numbers")
    return values


def _import_schnet(args) -> int:
    from stabie_jax.checkpoint import save_model_checkpoint
    from stabie_jax.interop.torch_schnet import import_torch_checkpoint

    _, params, metadata = import_torch_checkpoint(
        args.checkpoint, atomic_numbers=args.atomic_numbers
    )
    out = save_model_checkpoint(args.out, params, metadata, overwrite=args.overwrite)
    summary = {
        "written": str(out),
        "kind": metadata.kind,
        "hparams": {k: v for k, v in metadata.hparams.items() if k != "gaussian_offsets"},
        "atomic_numbers": list(metadata.atomic_numbers),
        "source": metadata.extra.get("imported_from"),
    }
    print(json.dumps(summary, indent=2))
    return 0


def _import_nequip(args) -> int:
    import ase.io

    from stabie_jax.checkpoint import save_model_checkpoint
    from stabie_jax.interop.torch_nequip import import_nequip_checkpoint

    if (args.atoms is None) == (args.atomic_numbers is None):
        raise ValueError("give exactly one of --atoms FILE or --atomic-numbers Z,Z,...")
    z = args.atomic_numbers if args.atoms is None else ase.io.read(args.atoms).numbers
    _, params, metadata = import_nequip_checkpoint(args.checkpoint, args.config, z)
    out = save_model_checkpoint(args.out, params, metadata, overwrite=args.overwrite)
    print(json.dumps({"written": str(out), "kind": metadata.kind, "n_atoms": len(z)}, indent=2))
    return 0


def _export_schnet(args) -> int:
    from stabie_jax.checkpoint import load_model_checkpoint
    from stabie_jax.interop.torch_schnet import export_torch_checkpoint

    loaded = load_model_checkpoint(args.model_dir)
    path = export_torch_checkpoint(loaded.params, loaded.metadata, args.out)
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stabie_jax.interop", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    imp = sub.add_parser(
        "import-schnet", help="MDsim/torch_geometric SchNet .pt -> stabie_jax model checkpoint"
    )
    imp.add_argument("checkpoint", help="the .pt file (e.g. best_checkpoint.pt)")
    imp.add_argument("--out", required=True, help="directory of the new model checkpoint")
    imp.add_argument(
        "--atomic-numbers",
        type=_atomic_numbers,
        default=None,
        help="comma-separated Z in dataset order (default: from the checkpoint's molecule name, "
        "known for MD17 aspirin)",
    )
    imp.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
    imp.set_defaults(func=_import_schnet)

    neq = sub.add_parser(
        "import-nequip", help="nequip 0.5 NequIP .pth + config.yaml -> stabie_jax model checkpoint"
    )
    neq.add_argument("checkpoint", help="the .pth state dict (e.g. best_model.pth)")
    neq.add_argument("config", help="nequip's config.yaml of the run")
    neq.add_argument("--out", required=True, help="directory of the new model checkpoint")
    neq.add_argument("--atoms", default=None, help="structure file (ASE) giving the atoms")
    neq.add_argument(
        "--atomic-numbers", type=_atomic_numbers, default=None, help="comma-separated Z"
    )
    neq.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
    neq.set_defaults(func=_import_nequip)

    exp = sub.add_parser(
        "export-schnet", help="stabie_jax SchNet model checkpoint -> MDsim-style .pt"
    )
    exp.add_argument("model_dir", help="stabie_jax model checkpoint directory")
    exp.add_argument("--out", required=True, help="output .pt file")
    exp.set_defaults(func=_export_schnet)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
