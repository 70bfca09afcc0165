"""Energy/force MAE of the StABlE paper's aspirin SchNet checkpoints, evaluated by stabie_jax.

Imports the authors' PyTorch checkpoints (pretrained and StABlE-trained) with
:func:`stabie_jax.interop.import_torch_checkpoint` and evaluates them in float64 on all 5 x 1,000
held-out rMD17 aspirin test frames against the ORIGINAL MD17 labels the models were trained on
(rMD17's ``old_energies``/``old_forces``, kcal/mol), next to the paper's energy MAE
0.87 -> 1.4 kcal/mol. A subset is cross-checked against torch_geometric's SchNet when it is
installed. Writes a Markdown report (date, machine, versions, command).

Usage::

    python benchmarks/checkpoint_mae.py                      # ../shared/data, default output
    python benchmarks/checkpoint_mae.py --data DIR --out benchmarks/results/checkpoint_mae.md

Needs the ``torch`` extra (and torch_geometric for the cross-check). ``--model LABEL=DIR``
(repeatable) adds stabie_jax model checkpoints (e.g. ``runs/.../model_pretrained``) to the table,
evaluated the same way; ``--no-authors`` leaves the authors' checkpoints out.
"""

from __future__ import annotations

import argparse
import pathlib
import shlex
import sys
import time

import harness  # benchmarks/harness.py: this script's folder is on sys.path
import jax
import jax.numpy as jnp
import numpy as np
from jax_md import space

from stabie_jax import checkpoint, interop
from stabie_jax.units import EV_IN_KCAL_PER_MOL, MDSIM_KCAL_PER_MOL_PER_EV, ev_to_kcal_per_mol

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"
CHECKPOINTS = {
    "pretrained": "pretrained_1k.pt",
    "StABlE-trained": "stable_trained.pt",
}
PAPER_ENERGY_MAE_KCAL = {"pretrained": 0.87, "StABlE-trained": 1.4}


def load_test_frames(data_dir: pathlib.Path):
    """All rMD17 aspirin test splits: positions Å, MD17 energies/forces kcal/mol, indices."""
    files = sorted((data_dir / "rmd17_aspirin").glob("rmd17_aspirin_test_*.npz"))
    if not files:
        raise SystemExit(f"no rmd17_aspirin_test_*.npz under {data_dir / 'rmd17_aspirin'}")
    parts = [np.load(f) for f in files]
    z = parts[0]["nuclear_charges"].astype(int)
    for f, p in zip(files, parts, strict=True):
        if not np.array_equal(p["nuclear_charges"], z):
            raise SystemExit(f"{f} has a different molecule")
    positions = np.concatenate([p["coords"] for p in parts])
    energies = np.concatenate([p["old_energies"] for p in parts])
    forces = np.concatenate([p["old_forces"] for p in parts])
    indices = np.concatenate([p["old_indices"] for p in parts])
    return files, z, positions, energies, forces, indices


def evaluate(potential, params, positions: np.ndarray, batch: int):
    """float64 energies [F] eV and forces [F, N, 3] eV/Å, ``batch`` frames per call."""
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
        fn = jax.jit(jax.vmap(lambda r: (potential.energy_fn(p64, r), potential.force_fn(p64, r))))
        es, fs = [], []
        for start in range(0, len(positions), batch):
            chunk = positions[start : start + batch]
            pad = batch - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            e, f = fn(jnp.asarray(chunk, jnp.float64))
            es.append(np.asarray(e)[: batch - pad])
            fs.append(np.asarray(f)[: batch - pad])
    return np.concatenate(es), np.concatenate(fs)


def metrics(e_pred_ev, f_pred_ev, e_label_kcal, f_label_kcal) -> dict:
    """MAEs in kcal/mol (energies: raw and after removing the mean offset)."""
    de = ev_to_kcal_per_mol(e_pred_ev) - e_label_kcal
    offset = float(np.mean(de))
    de_mdsim = np.asarray(e_pred_ev) * MDSIM_KCAL_PER_MOL_PER_EV - e_label_kcal
    return {
        "frames": int(len(de)),
        "e_mae": float(np.mean(np.abs(de))),
        "e_mae_mdsim": float(np.mean(np.abs(de_mdsim))),
        "e_offset": offset,
        "e_mae_centered": float(np.mean(np.abs(de - offset))),
        "e_rmse_centered": float(np.sqrt(np.mean((de - offset) ** 2))),
        "f_mae": float(np.mean(np.abs(ev_to_kcal_per_mol(f_pred_ev) - f_label_kcal))),
        "implied_kcal_per_ev": float(np.mean(e_label_kcal) / np.mean(e_pred_ev)),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--out", type=pathlib.Path, default=REPO_ROOT / "benchmarks/results/checkpoint_mae.md"
    )
    parser.add_argument("--batch", type=int, default=250, help="frames per compiled call")
    parser.add_argument(
        "--check-every", type=int, default=100, help="cross-check every k-th frame with PyG"
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="a stabie_jax model checkpoint to evaluate too (repeatable)",
    )
    parser.add_argument("--no-authors", action="store_true", help="skip the authors' checkpoints")
    args = parser.parse_args(argv)
    own = {}
    for spec in args.model:
        label, sep, directory = spec.partition("=")
        if not sep or not label or not directory:
            parser.error(f"--model wants LABEL=DIR, got {spec!r}")
        own[label] = pathlib.Path(directory)

    files, z, positions, e_label, f_label, indices = load_test_frames(args.data)
    unique = np.unique(indices, return_index=True)[1]
    rows, checks = {}, {}
    t0 = time.perf_counter()
    for label, name in ({} if args.no_authors else CHECKPOINTS).items():
        path = args.data / "stable_checkpoints" / "schnet_aspirin" / name
        potential, params, meta = interop.import_torch_checkpoint(path, atomic_numbers=z)
        e, f = evaluate(potential, params, positions, args.batch)
        rows[label] = (
            metrics(e, f, e_label, f_label),
            metrics(e[unique], f[unique], e_label[unique], f_label[unique]),
            meta.extra["imported_from"]["sha256"],
        )
        try:
            reference = interop.torch_geometric_reference(interop.read_torch_checkpoint(path))
        except ImportError as err:
            checks[label] = f"not run ({err})"
        else:
            sel = np.arange(0, len(positions), args.check_every)
            de, df = 0.0, 0.0
            for k in sel:
                e_ref, f_ref = reference(z, positions[k])
                de = max(de, abs(e[k] - e_ref))
                df = max(df, float(np.abs(f[k] - f_ref).max()))
            checks[label] = (
                f"{len(sel)} frames: max |dE| = {de:.1e} eV, max |dF| = {df:.1e} eV/Å "
                "(float64, torch_geometric SchNet on the same checkpoint)"
            )
        print(label, rows[label][0], checks[label], flush=True)
    for label, directory in own.items():
        loaded = checkpoint.load_model_checkpoint(directory)
        if tuple(loaded.metadata.atomic_numbers) != tuple(int(a) for a in z):
            raise SystemExit(f"{directory}: the model's atomic numbers differ from the test set's")
        displacement, _ = space.free()
        potential = checkpoint.make_model_potential(loaded.module, loaded.metadata, displacement)
        e, f = evaluate(potential, loaded.params, positions, args.batch)
        rows[label] = (
            metrics(e, f, e_label, f_label),
            metrics(e[unique], f[unique], e_label[unique], f_label[unique]),
            str(directory),
        )
        checks[label] = f"stabie_jax model checkpoint {directory}"
        print(label, rows[label][0], flush=True)
    elapsed = time.perf_counter() - t0

    conversion_offset = np.mean(e_label) * (EV_IN_KCAL_PER_MOL / MDSIM_KCAL_PER_MOL_PER_EV - 1)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]])
    lines = [
        "# Energy/force MAE of the StABlE paper's aspirin SchNet checkpoints (stabie_jax)",
        "",
        *harness.environment_lines(command),
        f"- wall time: {elapsed:.0f} s (run from the repository root)",
        "- checkpoints: the authors' `pretrained_1k.pt` and `stable_trained.pt` "
        "(../shared/data/stable_checkpoints/schnet_aspirin, sha256 "
        + ", ".join(f"{k} {v[2][:12]}…" for k, v in rows.items() if k not in own)
        + "), imported with `stabie_jax.interop.import_torch_checkpoint`, evaluated in float64 "
        "by stabie_jax's SchNet (energy = output x std + mean, forces = -dE/dR).",
        f"- frames: all {len(positions)} frames of the {len(files)} rMD17 aspirin test splits "
        f"({', '.join(f.name for f in files)}); labels = original MD17 `old_energies`, "
        f"`old_forces` (PBE+vdW-TS, what MDsim trained on), kcal/mol; {len(unique)} unique MD17 "
        f"frame indices{'' if len(unique) == len(positions) else ' (second row: unique frames)'}.",
        "- units: model eV -> kcal/mol with stabie_jax.units (CODATA 2018, "
        f"1 eV = {EV_IN_KCAL_PER_MOL:.7f} kcal/mol). Force MAE is per Cartesian component.",
        "",
        "| checkpoint | frames | E MAE raw | mean offset (pred - label) | E MAE, offset removed "
        f"| E MAE, MDsim's eV→kcal/mol ({MDSIM_KCAL_PER_MOL_PER_EV}) | F MAE (kcal/mol/Å) "
        "| paper E MAE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, (m_all, m_unique, _) in rows.items():
        for m in (m_all,) if m_unique["frames"] == m_all["frames"] else (m_all, m_unique):
            lines.append(
                f"| {label} | {m['frames']} | {m['e_mae']:.3f} | {m['e_offset']:+.3f} | "
                f"{m['e_mae_centered']:.3f} | {m['e_mae_mdsim']:.3f} | {m['f_mae']:.3f} | "
                f"{PAPER_ENERGY_MAE_KCAL.get(label, '—')} |"
            )
    lines += [
        "",
        "Energies in kcal/mol. Cross-check against torch_geometric:",
        "",
        *[f"- {label}: {text}" for label, text in checks.items()],
        "",
        "## The energy offset",
        "",
        "Both models are trained on MD17 energies that MDsim converted to eV with its own "
        "factor (PROVENANCE.md of the checkpoints: divide kcal/mol by "
        f"{MDSIM_KCAL_PER_MOL_PER_EV}), while this report "
        f"converts back with the CODATA factor ({EV_IN_KCAL_PER_MOL:.7f}). At aspirin's "
        f"≈ {np.mean(e_label):.0f} kcal/mol the relative difference of the two factors "
        f"({EV_IN_KCAL_PER_MOL / MDSIM_KCAL_PER_MOL_PER_EV - 1:.2e}) is a constant "
        f"{conversion_offset:+.3f} kcal/mol on every frame; "
        "the rest of the mean offset is the models' own mean energy bias on these frames "
        "(MDsim's normaliser mean was fitted on its own 1k training split). A constant changes "
        "no force, MD trajectory or observable. The paper's MAE is computed in MDsim's units "
        "(labels ÷ 23.0605), which the 'MDsim' column reproduces (predictions in eV × 23.0605); "
        "the offset-removed column additionally drops the models' mean bias. "
        "The factor implied by each model's mean energy (mean label / mean prediction) is "
        + ", ".join(f"{k}: {v[0]['implied_kcal_per_ev']:.5f}" for k, v in rows.items())
        + " kcal/mol per eV.",
        "",
        "Caveats: rMD17 frames are a random subset of MD17's trajectory, and MDsim's own 1k "
        "training split (drawn from the same trajectory) is not published with the "
        "checkpoints, so some of these frames may be training frames of the pretrained model; "
        "the paper's test set is MDsim's held-out MD17 split, not rMD17's.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
