"""Energy+force training throughput: stabie_jax's pretraining epoch vs a torch_geometric one.

  python benchmarks/pretrain_throughput.py --output benchmarks/results/pretrain_throughput_cpu.md

Both sides train the paper's aspirin SchNet (hidden 64, 64 filters, 6 interactions, 25
Gaussians, cutoff 5 Å) at batch 100 on the same 1,000 frames (rMD17 aspirin training shard,
MD17 labels, from ``../shared/data`` or ``--data``; a jittered synthetic geometry otherwise,
said so in the report), with Adam and the loss ``λ_U·mse(U) + λ_F·mse(F)`` whose force term
needs second derivatives. Float32, every core of the machine.

Sides:

* ``jax``: what ``stabie_jax.pretrain`` runs: one jitted ``lax.scan`` of optimizer steps over
  the epoch's batches, frames on the device, each pair once (``undirected_edges=True``, the
  configs' default);
* ``jax_directed``: the same with every pair listed both ways (torch_geometric's edge layout);
* ``torch``: the training step as an MDsim user writes it: ``torch_geometric.nn.SchNet``,
  ``Batch`` of 100 molecules, forces from ``torch.autograd.grad(..., create_graph=True)``,
  ``loss.backward()``, ``torch.optim.Adam``. The radius graph is built per batch in plain
  torch (all atom pairs of each molecule closer than the cutoff: what ``radius_graph`` returns
  here, where torch_geometric's ``pyg-lib``/``torch-cluster`` back-ends are not installable).

Reported: training frames per second (best of ``--repeats`` epochs after one warm-up epoch),
the warm-up (compile) time, JAX/PyTorch ratios, and for the JAX sides the FLOP fraction: XLA's
cost analysis of one compiled optimizer step × steps per second ÷ the float32 matmul rate of
this machine measured in the same run.
"""

from __future__ import annotations

import argparse
import glob
import pathlib
import sys
import time

import harness  # benchmarks/harness.py: this script's folder is on sys.path
import jax
import jax.numpy as jnp
import numpy as np

from stabie_jax import md, pretrain
from stabie_jax.data.readers import read_rmd17_npz
from stabie_jax.losses import LabelledFrames
from stabie_jax.models import make_potential
from stabie_jax.models.registry import init_params
from stabie_jax.pretrain import frames as pretrain_frames
from stabie_jax.pretrain import steps as pretrain_steps

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from compare import ASPIRIN_Z, matmul_flop_rate  # noqa: E402

HPARAMS = harness.PAPER_SCHNET
DEFAULT_DATA = "../shared/data/rmd17_aspirin/rmd17_aspirin_train_01.npz"


def load_frames(pattern: str, n_frames: int, key) -> tuple[np.ndarray, ...]:
    """``(z, positions [F,21,3] Å, energies [F] eV, forces [F,21,3] eV/Å, source)``."""
    paths = sorted(glob.glob(pattern))
    if paths:
        data = read_rmd17_npz(paths[0], labels="md17")
        if data.n_frames < n_frames:
            raise ValueError(f"{paths[0]} has {data.n_frames} frames, fewer than {n_frames}")
        z = np.asarray(data.atomic_numbers)
        pos = np.asarray(data.positions[:n_frames], np.float32)
        energies = np.asarray(data.energies[:n_frames], np.float64)
        forces = np.asarray(data.forces[:n_frames], np.float32)
        source = f"{paths[0]} (first {n_frames} frames, MD17 labels)"
    else:
        z = ASPIRIN_Z
        grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)[:21]
        k1, k2, k3 = jax.random.split(key, 3)
        pos = 1.45 * grid[None] + 0.05 * np.asarray(jax.random.normal(k1, (n_frames, 21, 3)))
        pos = pos.astype(np.float32)
        energies = np.asarray(jax.random.normal(k2, (n_frames,)), np.float64)
        forces = np.asarray(jax.random.normal(k3, (n_frames, 21, 3)), np.float32)
        source = f"synthetic jittered grid ({pattern} not found)"
    energies = energies - energies.mean()  # the offset pretrain takes off; irrelevant to speed
    return z, pos, energies.astype(np.float32), forces, source


def _settings() -> pretrain.PretrainSettings:
    return pretrain.recipe("schnet", max_epochs=1, progress_bar=False, batch_size=100)


def run_jax(frames, z, undirected: bool, repeats: int) -> dict:
    """Epoch wall times of ``pretrain.steps._train_epoch``, the function ``pretrain`` calls."""
    module = harness.paper_schnet(undirected_edges=undirected)
    potential = make_potential(module, z, md.free_space().displacement_fn)
    params = init_params(module, z, jax.random.PRNGKey(0))
    settings = pretrain_steps._static_settings(_settings())
    optimizer = pretrain.make_optimizer(settings)
    n = int(frames.positions.shape[0])

    def epoch_args(idx, w, params, opt_state, step):
        return dict(
            potential=potential,
            settings=settings,
            params=params,
            opt_state=opt_state,
            ema=params,
            step=step,
            plateau_lr=jnp.float32(settings.learning_rate),
            total_steps=jnp.int32(10**6),
            energy_scale=jnp.float32(1.0),
            per_atom_shift=jnp.zeros(z.shape, jnp.float32),
            frames=frames,
            idx=idx,
            w=w,
        )

    state = (params, optimizer.init(params), jnp.zeros((), jnp.int32))
    times = []
    for epoch in range(repeats + 1):
        order = np.asarray(jax.random.permutation(jax.random.PRNGKey(epoch), n))
        idx, w = pretrain_frames._batches(n, settings.batch_size, order)
        started = time.perf_counter()
        (p, o, _, s), metrics = pretrain_steps._train_epoch(**epoch_args(idx, w, *state))
        jax.block_until_ready((p, metrics))
        times.append(time.perf_counter() - started)
        state = (p, o, s)
        if not np.isfinite(np.asarray(metrics)[:, 0]).all():
            raise FloatingPointError("non-finite JAX training loss")
    idx1, w1 = pretrain_frames._batches(settings.batch_size, settings.batch_size)
    compiled = pretrain_steps._train_epoch.lower(**epoch_args(idx1, w1, *state)).compile()
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):
        analysis = analysis[0]
    best = min(times[1:])
    return {
        "frames_per_s": n / best,
        "warm_s": times[0] - best,
        "flops_per_frame": float(analysis["flops"]) / settings.batch_size,
        "final_loss": float(np.asarray(metrics)[-1, 0] / np.asarray(metrics)[-1, 3]),
    }


def run_torch(pos, energies, forces, z, repeats: int, batch_size: int = 100) -> dict:
    """Epoch wall times of a torch_geometric SchNet energy+force training loop."""
    import torch
    from torch_geometric.data import Batch, Data
    from torch_geometric.nn import SchNet

    torch.manual_seed(0)
    settings = _settings()
    cutoff = HPARAMS["cutoff"]
    n_atoms = len(z)
    pairs = torch.tensor(
        [(i, j) for i in range(n_atoms) for j in range(n_atoms) if i != j], dtype=torch.long
    ).T  # [2, N(N-1)] within one molecule

    def radius_graph(positions, batch):
        """All intra-molecule pairs within the cutoff (torch_geometric's radius_graph here)."""
        n_mol = int(batch.max()) + 1
        offsets = (torch.arange(n_mol) * n_atoms).repeat_interleave(pairs.shape[1])
        edge_index = pairs.repeat(1, n_mol) + offsets
        dist = (positions[edge_index[0]] - positions[edge_index[1]]).norm(dim=-1)
        keep = dist < cutoff
        return edge_index[:, keep], dist[keep]

    model = SchNet(
        hidden_channels=HPARAMS["hidden"],
        num_filters=HPARAMS["num_filters"],
        num_interactions=HPARAMS["num_interactions"],
        num_gaussians=HPARAMS["num_gaussians"],
        cutoff=cutoff,
        interaction_graph=radius_graph,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    zt = torch.as_tensor(z, dtype=torch.long)
    data = [
        Data(
            z=zt,
            pos=torch.as_tensor(pos[i]),
            energy=torch.as_tensor(energies[i : i + 1]),
            force=torch.as_tensor(forces[i]),
        )
        for i in range(pos.shape[0])
    ]
    n = len(data)
    times = []
    generator = torch.Generator().manual_seed(0)
    for _ in range(repeats + 1):
        order = torch.randperm(n, generator=generator).tolist()
        started = time.perf_counter()
        for start in range(0, n, batch_size):
            batch = Batch.from_data_list([data[i] for i in order[start : start + batch_size]])
            positions = batch.pos.requires_grad_(True)
            energy = model(batch.z, positions, batch.batch).squeeze(-1)
            force = -torch.autograd.grad(energy.sum(), positions, create_graph=True)[0]
            loss = settings.energy_weight * torch.mean(
                (energy - batch.energy) ** 2
            ) + settings.force_weight * torch.mean((force - batch.force) ** 2)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        times.append(time.perf_counter() - started)
        if not torch.isfinite(loss):
            raise FloatingPointError("non-finite PyTorch training loss")
    best = min(times[1:])
    return {"frames_per_s": n / best, "warm_s": times[0] - best, "final_loss": float(loss)}


def report(rows: dict, peak: float, source: str, args, n_frames: int) -> str:
    import torch

    torch_rate = rows["torch"]["frames_per_s"]
    lines = [
        "# Energy+force training throughput: stabie_jax pretraining vs torch_geometric SchNet",
        "",
        *harness.environment_lines(extra=f"torch threads {torch.get_num_threads()}"),
        f"- data: {source}; {n_frames} frames per epoch, batch 100, Adam, "
        "loss λ_U·mse(U) + λ_F·mse(F) (second derivatives)",
        f"- float32 matmul (2048³, XLA) on this machine: {peak / 1e9:.1f} GFLOP/s",
        f"- best of {args.repeats} epochs after one warm-up epoch",
        "",
        "| side | frames/s | / PyTorch | warm-up s | GFLOP per frame | FLOP fraction |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for side, m in rows.items():
        flops = m.get("flops_per_frame")
        lines.append(
            f"| `{side}` | {m['frames_per_s']:,.0f} | {m['frames_per_s'] / torch_rate:.2f} "
            f"| {m['warm_s']:.1f} | "
            + ("–" if flops is None else f"{flops / 1e9:.4f}")
            + " | "
            + ("–" if flops is None else f"{flops * m['frames_per_s'] / peak:.1%}")
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="rMD17 aspirin npz (glob)")
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sides", default="jax,jax_directed,torch")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    sides = args.sides.split(",")
    if "torch" not in sides:
        parser.error("--sides must include torch (the baseline)")
    z, pos, energies, forces, source = load_frames(args.data, args.frames, jax.random.PRNGKey(0))
    frames = LabelledFrames(jnp.asarray(pos), jnp.asarray(energies), jnp.asarray(forces))
    peak = matmul_flop_rate(2048)
    print(f"float32 matmul 2048^3: {peak / 1e9:.1f} GFLOP/s", flush=True)
    rows = {}
    for side in sides:
        if side == "torch":
            rows[side] = run_torch(pos, energies, forces, z, args.repeats)
        elif side in ("jax", "jax_directed"):
            rows[side] = run_jax(frames, z, side == "jax", args.repeats)
        else:
            parser.error(f"unknown side {side!r}")
        print(side, {k: round(v, 4) for k, v in rows[side].items()}, flush=True)
    text = report({s: rows[s] for s in sides}, peak, source, args, args.frames)
    if args.output:
        pathlib.Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
