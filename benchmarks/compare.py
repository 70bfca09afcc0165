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
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from stabie_jax import md, units
from stabie_jax.interop.torch_schnet import SchNetConfig
from stabie_jax.models import make_potential
from stabie_jax.models.registry import build_model, init_params

ASPIRIN_Z = np.array([6, 6, 6, 6, 6, 6, 6, 8, 8, 8, 6, 6, 8, 1, 1, 1, 1, 1, 1, 1, 1])


def _geometry(n_replicas: int, key) -> np.ndarray:
    """Replicas of a relaxed-looking aspirin-sized cluster: a jittered grid, 1.45 Å apart."""
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)[:21]
    base = 1.45 * grid.astype(np.float32)
    noise = 0.02 * np.asarray(jax.random.normal(key, (n_replicas, 21, 3)), np.float32)
    return base[None] + noise


def run_jax(params, potential, positions, n_steps, dt, kT):
    sim = md.make_simulator(
        potential.energy_fn,
        md.masses_from_atomic_numbers(ASPIRIN_Z),
        dt=dt,
        kT=kT,
        space=md.free_space(),
        tau=md.tau_from_ttime(20, dt),
    )
    state = sim.init(params, jax.random.PRNGKey(0), jnp.asarray(positions))
    started = time.perf_counter()
    state, _ = sim.simulate(params, state, n_steps)
    jax.block_until_ready(state.md.position)
    warm = time.perf_counter() - started
    started = time.perf_counter()
    state, _ = sim.simulate(params, state, n_steps)
    jax.block_until_ready(state.md.position)
    return warm, n_steps / (time.perf_counter() - started)


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", default="1,32,128")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    import torch

    dt, kT = units.fs_to_internal(0.5), units.kT(500.0)
    module = build_model("schnet")
    params = init_params(module, ASPIRIN_Z, jax.random.PRNGKey(0))
    potential = make_potential(module, ASPIRIN_Z, md.free_space().displacement_fn)
    rows = []
    for n_rep in [int(r) for r in args.replicas.split(",")]:
        positions = _geometry(n_rep, jax.random.PRNGKey(n_rep))
        jw, jr = run_jax(params, potential, positions, args.steps, dt, kT)
        tw, tr = run_torch(params, positions, args.steps, dt, kT)
        rows.append((n_rep, jw, jr, tw, tr))
        print(
            f"R={n_rep:4d}  JAX {jr * n_rep * 21:9.0f} atom-steps/s (warm-up {jw:.1f} s)  "
            f"PyTorch {tr * n_rep * 21:9.0f} (warm-up {tw:.2f} s)  ratio {jr / tr:.2f}"
        )
    lines = [
        "# JAX (stabie_jax) vs PyTorch MD throughput, same SchNet and weights",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {platform.machine()}, {platform.processor() or 'CPU'}, "
        f"torch threads {torch.get_num_threads()}",
        f"- versions: python {platform.python_version()}, jax {jax.__version__}, "
        f"torch {torch.__version__}",
        f"- command: `python {' '.join(sys.argv)}`",
        "",
        "| R | JAX atom-steps/s | JAX warm-up (s) | PyTorch atom-steps/s | PyTorch warm-up (s) "
        "| JAX/PyTorch |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n_rep, jw, jr, tw, tr in rows:
        lines.append(
            f"| {n_rep} | {jr * n_rep * 21:.0f} | {jw:.1f} | {tr * n_rep * 21:.0f} | {tw:.2f} | "
            f"{jr / tr:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
