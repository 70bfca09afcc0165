"""Short CPU pretraining of full-size GemNet-T on 64 SPC/Fw waters: a learning curve.

The authors' recipe (``stabie_jax.pretrain.recipe("gemnet_t")``: AdamW/AMSGrad 1e-3, batch 1,
EMA 0.999, clip 10, l2mae 0.999 F + 0.001 E) on a small random subset of the project's SPC/Fw
reference (``../shared/data/spcfw_water_64/spcfw_water_64_300K.npz``, 10 000 frames, 192 atoms,
12.43 Å periodic box; all pairs with minimum-image displacements, GemNet keeps those inside
5 Å). The scale factors are fitted on the first training frames with
:func:`stabie_jax.models.gemnet_t.fit_scale_factors` before training.

A CPU run is far too short to converge (MDsim's GemNet-T water-10k run reached a force MAE of
0.00073 eV/Å, REFERENCE_SETTINGS.md B3); it shows the loop, the checkpoint and the report,
and the first part of the learning curve.

Usage::

    python benchmarks/gemnet_t_water_pretrain.py --n_train 40 --epochs 3 --workdir /tmp/gemnet_water

Writes ``workdir/{checkpoints,metrics.jsonl,report.json}`` and a markdown summary to
``benchmarks/results/gemnet_t_water_pretrain_cpu.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

import harness  # benchmarks/harness.py: this script's folder is on sys.path
import jax
import jax.numpy as jnp
import numpy as np
from jax_md import space

from stabie_jax.data import load_dataset
from stabie_jax.losses import LabelledFrames
from stabie_jax.models import build_graph, dense_edges, make_potential
from stabie_jax.models.gemnet_t import GemNetT, count_parameters, fit_scale_factors
from stabie_jax.models.registry import init_params
from stabie_jax.pretrain import pretrain, recipe

REPO = pathlib.Path(__file__).resolve().parents[1]
WATER = REPO.parent / "shared" / "data" / "spcfw_water_64" / "spcfw_water_64_300K.npz"
MDSIM_FORCE_MAE = 0.00073  # eV/Å, MDsim water-10k GemNet-T example log (REFERENCE B3)


def _subset(dataset, idx) -> LabelledFrames:
    return LabelledFrames(
        jnp.asarray(dataset.positions[idx], jnp.float32),
        jnp.asarray(dataset.energies[idx], jnp.float32),
        jnp.asarray(dataset.forces[idx], jnp.float32),
    )


def max_neighbors(positions, box: float, cutoff: float) -> int:
    """Largest number of neighbours inside ``cutoff`` (minimum image, cubic box) of any atom."""
    most = 0
    for frame in positions:
        diff = frame[:, None, :] - frame[None, :, :]
        diff -= box * np.round(diff / box)
        dist = np.linalg.norm(diff, axis=-1)
        np.fill_diagonal(dist, np.inf)
        most = max(most, int(np.max(np.sum(dist < cutoff, axis=1))))
    return most


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n_train", type=int, default=40)
    parser.add_argument("--n_val", type=int, default=10)
    parser.add_argument("--n_test", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--scale_frames", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/gemnet_t_water_pretrain")
    parser.add_argument(
        "--out", default=str(REPO / "benchmarks" / "results" / "gemnet_t_water_pretrain_cpu.md")
    )
    args = parser.parse_args()

    dataset = load_dataset(str(WATER))
    box = float(np.asarray(dataset.cell)[0, 0])
    z = np.asarray(dataset.atomic_numbers, np.int32)
    order = np.random.default_rng(args.seed).permutation(dataset.positions.shape[0])
    n1, n2 = args.n_train, args.n_train + args.n_val
    train = _subset(dataset, order[:n1])
    val = _subset(dataset, order[n1:n2])
    test = _subset(dataset, order[n2 : n2 + args.n_test])

    displacement, _ = space.periodic(box)
    used = order[: n2 + args.n_test]
    capacity = max_neighbors(np.asarray(dataset.positions[used]), box, GemNetT().cutoff) + 4
    model = GemNetT(neighbor_capacity=capacity)
    params = init_params(model, z, jax.random.key(args.seed))
    start = time.perf_counter()
    senders, receivers = dense_edges(len(z))
    samples = [
        (jnp.asarray(z), build_graph(displacement, train.positions[i], senders, receivers))
        for i in range(args.scale_frames)
    ]
    model, scales = fit_scale_factors(model, params, samples)
    fit_s = time.perf_counter() - start
    potential = make_potential(model, z, displacement)

    settings = recipe(
        "gemnet_t", max_epochs=args.epochs, early_stopping_patience=None, seed=args.seed
    )
    start = time.perf_counter()
    _, report = pretrain(
        potential,
        params,
        train,
        val,
        atomic_numbers=z,
        settings=settings,
        workdir=args.workdir,
        test=test,
    )
    train_s = time.perf_counter() - start

    metrics = [
        json.loads(line)
        for line in (pathlib.Path(args.workdir) / "metrics.jsonl").read_text().splitlines()
    ]
    lines = [
        "# GemNet-T water pretraining on CPU (learning curve)",
        "",
        f"{count_parameters(params)} parameters; {args.n_train} train / {args.n_val} val / "
        f"{args.n_test} test frames (random, seed {args.seed}) of {WATER.name}; "
        f"neighbor_capacity {capacity} (max in these frames + 4); recipe "
        f"`gemnet_t` for {args.epochs} epochs; scale factors fitted on {args.scale_frames} "
        f"frames in {fit_s:.0f} s; training {train_s:.0f} s wall on {os.cpu_count()} CPUs "
        "(shared).",
        "",
        *harness.environment_lines(),
        "",
        "Fitted scale factors: " + ", ".join(f"{k} {v:.3f}" for k, v in scales.items()) + ".",
        "",
        "| epoch | step | val energy MAE (eV) | val force MAE (eV/Å) |",
        "|---|---|---|---|",
    ]
    for row in metrics:
        lines.append(
            f"| {row['epoch']} | {row['step']} | {row['val_energy_mae_ev']:.4f} | "
            f"{row['val_force_mae_ev_per_angstrom']:.4f} |"
        )
    lines += [
        "",
        f"Report: `{json.dumps(report, default=str)}`",
        "",
        f"MDsim's published GemNet-T water-10k force MAE: {MDSIM_FORCE_MAE} eV/Å (converged "
        "GPU run on 10k frames); this CPU run is a few epochs on a few frames, and with EMA "
        "0.999 the evaluated parameters are still mostly the initial ones.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
