"""Side by side: stabie_jax (JAX-MD, vmapped replicas) vs a batched PyTorch Nosé–Hoover MD,
same SchNet, same weights, same machine, same process.

  python benchmarks/compare.py --replicas 1,32,128 --steps 50 \
      --output benchmarks/results/compare_cpu.md

Both sides run the paper-size SchNet (hidden 64, 64 filters, 6 interactions, 25 Gaussians, 5 Å;
random weights, shared) on aspirin (21 atoms, dense all-pairs), float32, Nosé–Hoover chain at
500 K with dt = 0.5 fs. JAX: ``stabie_jax.md.make_simulator`` (one jitted ``lax.scan`` over the
steps); PyTorch: ``benchmarks/torch_reference`` (autograd forces, all replicas batched).
Reported: replica-steps/s and atom-steps/s after warm-up, warm-up (compile) time separately, the
JAX/PyTorch ratio. Needs the ``torch`` extra (``torch==2.13.0``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from stabie_jax import md, units
from stabie_jax.interop.torch_schnet import SchNetConfig
from stabie_jax.models import make_potential
from stabie_jax.models.registry import build_model, init_params
from stabie_jax.report import cpu_model

ASPIRIN_Z = np.array([6, 6, 6, 6, 6, 6, 6, 8, 8, 8, 6, 6, 8, 1, 1, 1, 1, 1, 1, 1, 1])


def _geometry(n_replicas: int, key) -> np.ndarray:
    """Replicas of a relaxed-looking aspirin-sized cluster: a jittered grid, 1.45 Å apart."""
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)[:21]
    base = 1.45 * grid.astype(np.float32)
    noise = 0.02 * np.asarray(jax.random.normal(key, (n_replicas, 21, 3)), np.float32)
    return base[None] + noise


def _simulator(potential, dt, kT):
    return md.make_simulator(
        potential.energy_fn,
        md.masses_from_atomic_numbers(ASPIRIN_Z),
        dt=dt,
        kT=kT,
        space=md.free_space(),
        tau=md.tau_from_ttime(20, dt),
    )


def run_jax(params, potential, positions, n_steps, dt, kT):
    sim = _simulator(potential, dt, kT)
    state = sim.init(params, jax.random.PRNGKey(0), jnp.asarray(positions))
    started = time.perf_counter()
    state, _ = sim.simulate(params, state, n_steps)
    jax.block_until_ready(state.md.position)
    warm = time.perf_counter() - started
    started = time.perf_counter()
    state, _ = sim.simulate(params, state, n_steps)
    jax.block_until_ready(state.md.position)
    return warm, n_steps / (time.perf_counter() - started)


def flops_per_replica_step(params, potential, positions, dt, kT) -> float:
    """XLA's FLOP count of one compiled MD step of all replicas, divided by the replicas.

    ``jax.jit(f).lower(...).compile().cost_analysis()`` of a one-step ``simulate`` (force
    evaluation with its backward pass, integrator and thermostat).
    """
    sim = _simulator(potential, dt, kT)
    state = sim.init(params, jax.random.PRNGKey(0), jnp.asarray(positions))
    compiled = jax.jit(lambda p, s: sim.simulate(p, s, 1)).lower(params, state).compile()
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):  # older jax returns one dict per program
        analysis = analysis[0]
    return float(analysis["flops"]) / positions.shape[0]


def matmul_flop_rate(n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a large float32 matmul (``n × n`` by ``n × n``) on this machine, via XLA."""
    a = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(2), (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - started)
    return 2.0 * n**3 / best


def run_torch(params, positions, n_steps, dt, kT):
    import torch

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # repository root

    from benchmarks.torch_reference.nose_hoover_torch import init_state, make_nose_hoover_step
    from benchmarks.torch_reference.schnet_torch import TorchSchNet

    config = SchNetConfig(
        hidden_channels=64, num_filters=64, num_interactions=6, num_gaussians=25, cutoff=5.0
    )
    model = TorchSchNet.from_stabie_params(params, config, dtype=torch.float32)
    z = torch.as_tensor(ASPIRIN_Z)
    masses = torch.as_tensor(md.masses_from_atomic_numbers(ASPIRIN_Z), dtype=torch.float32)

    def force_fn(r):
        r = r.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(model.energy(z, r).sum(), r)
        return -grad

    r0 = torch.as_tensor(positions)
    p0 = torch.randn_like(r0) * torch.sqrt(masses.reshape(1, -1, 1) * kT)
    step = make_nose_hoover_step(
        force_fn, dt, kT, tau=20 * dt, chain_length=3, degrees_of_freedom=3 * 21
    )
    state = init_state(r0, p0, masses, force_fn, chain_length=3)
    started = time.perf_counter()
    state = step(state)
    warm = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(n_steps):
        state = step(state)
    return warm, n_steps / (time.perf_counter() - started)


def _worker(side: str, n_rep: int, n_steps: int) -> dict:
    """One measurement in this (child) process: rate, warm-up, FLOPs and peak RSS."""
    dt, kT = units.fs_to_internal(0.5), units.kT(500.0)
    directed = build_model("schnet")
    params = init_params(directed, ASPIRIN_Z, jax.random.PRNGKey(0))
    positions = _geometry(n_rep, jax.random.PRNGKey(n_rep))
    out = {"side": side, "replicas": n_rep}
    if side == "torch":
        out["warm_s"], out["replica_steps_per_s"] = run_torch(params, positions, n_steps, dt, kT)
    else:
        module = directed.clone(undirected_edges=(side == "jax_pairs"))
        potential = make_potential(module, ASPIRIN_Z, md.free_space().displacement_fn)
        warm, rate = run_jax(params, potential, positions, n_steps, dt, kT)
        out["warm_s"], out["replica_steps_per_s"] = warm, rate * n_rep
        out["flops_per_replica_step"] = flops_per_replica_step(params, potential, positions, dt, kT)
    if side == "torch":
        out["replica_steps_per_s"] *= n_rep
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return out


def _measure(side: str, n_rep: int, n_steps: int) -> dict:
    """Run :func:`_worker` in a child process (isolated peak memory, same machine)."""
    command = [sys.executable, __file__, "--worker", side, str(n_rep), str(n_steps)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{side} R={n_rep} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


SIDES = {
    "jax": "JAX, directed edges (as torch_geometric)",
    "jax_pairs": "JAX, each pair once (`undirected_edges=True`, the default of the configs)",
    "torch": "PyTorch, batched, autograd forces",
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", default="1,32,128,256")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--output", default=None)
    parser.add_argument("--worker", nargs=3, metavar=("SIDE", "R", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        side, n_rep, n_steps = args.worker
        print(json.dumps(_worker(side, int(n_rep), int(n_steps))))
        return
    import torch

    peak = matmul_flop_rate()
    print(f"float32 matmul 2048^3 on this machine: {peak / 1e9:.1f} GFLOP/s")
    rows = []
    for n_rep in [int(r) for r in args.replicas.split(",")]:
        row = {side: _measure(side, n_rep, args.steps) for side in SIDES}
        rows.append(row)
        rates = {side: m["replica_steps_per_s"] * 21 for side, m in row.items()}
        print(
            f"R={n_rep:4d}  "
            + "  ".join(f"{side} {rate:9.0f} atom-steps/s" for side, rate in rates.items())
            + f"  pairs/torch {rates['jax_pairs'] / rates['torch']:.2f}"
        )
    lines = [
        "# JAX (stabie_jax) vs PyTorch MD throughput, same SchNet and weights",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {platform.machine()}, {cpu_model()}, {os.cpu_count()} logical CPUs, "
        f"torch threads {torch.get_num_threads()}",
        f"- versions: python {platform.python_version()}, jax {jax.__version__}, "
        f"torch {torch.__version__}",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- float32 matmul (2048³, XLA) on this machine: {peak / 1e9:.1f} GFLOP/s",
        "",
        "Sides: " + "; ".join(f"`{k}` = {v}" for k, v in SIDES.items()) + ".",
        "",
        "| R | JAX directed | JAX pairs | PyTorch | JAX pairs / PyTorch | JAX directed / PyTorch "
        "| warm-up s (directed / pairs / torch) | GFLOP per replica-step (directed / pairs) "
        "| FLOP utilisation (directed / pairs) | peak RSS MiB (directed / pairs / torch) |",
        "|---:|---:|---:|---:|---:|---:|---|---|---|---|",
    ]
    for row in rows:
        j, jp, t = row["jax"], row["jax_pairs"], row["torch"]

        def util(m):
            return m["flops_per_replica_step"] * m["replica_steps_per_s"] / peak

        lines.append(
            f"| {j['replicas']} | {j['replica_steps_per_s'] * 21:.0f} | "
            f"{jp['replica_steps_per_s'] * 21:.0f} | {t['replica_steps_per_s'] * 21:.0f} | "
            f"{jp['replica_steps_per_s'] / t['replica_steps_per_s']:.2f} | "
            f"{j['replica_steps_per_s'] / t['replica_steps_per_s']:.2f} | "
            f"{j['warm_s']:.1f} / {jp['warm_s']:.1f} / {t['warm_s']:.2f} | "
            f"{j['flops_per_replica_step'] / 1e9:.4f} / {jp['flops_per_replica_step'] / 1e9:.4f} | "
            f"{util(j):.0%} / {util(jp):.0%} | "
            f"{j['peak_rss_mib']:.0f} / {jp['peak_rss_mib']:.0f} / {t['peak_rss_mib']:.0f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
