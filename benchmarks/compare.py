"""Side by side: stabie_jax (JAX-MD, vmapped replicas) vs a batched PyTorch Nosé–Hoover MD,
same SchNet, same weights, same machine, same process.

  python benchmarks/compare.py --replicas 1,32,128 --steps 50 \
      --output benchmarks/results/compare_cpu.md

Both sides run the paper-size SchNet (hidden 64, 64 filters, 6 interactions, 25 Gaussians, 5 Å;
random weights, shared) on aspirin (21 atoms, dense all-pairs), float32, Nosé–Hoover chain at
500 K with dt = 0.5 fs. JAX: ``stabie_jax.md.make_simulator`` (one jitted ``lax.scan`` over the
steps); PyTorch: ``benchmarks/torch_reference`` (autograd forces, all replicas batched).
Reported: replica-steps/s and atom-steps/s after warm-up, warm-up (compile) time separately, the
JAX/PyTorch ratio. Needs the ``torch`` extra (``torch==2.13.0``, ``torch_geometric``).

PyTorch sides: ``torch_geometric`` is the authors' own stack, what MDsim runs:
``torch_geometric.nn.SchNet`` loaded with the same weights (through
``stabie_jax.interop.schnet_layout``), the R replicas as one batch whose radius graph is built in
torch, autograd forces and MDsim's single Nosé–Hoover thermostat
(``benchmarks/torch_reference/mdsim_torch.py``; its energies, forces and steps are tested against
stabie_jax in float64). ``torch`` / ``torch_chunked`` are this project's compact PyTorch SchNet
with JAX-MD's Nosé–Hoover chain, kept as a second reference. The integrators differ (one
thermostat variable vs a chain of three); their cost is a few elementwise operations per step
against the model's forward and backward pass.

JAX sides: ``jax`` (directed edges, as torch_geometric), ``jax_pairs`` (each pair once) and, on a
CPU, ``jax_pairs_cores``: the same model with the replicas split over one fake XLA CPU device per
core (``--xla_force_host_platform_device_count``, ``make_simulator(mesh=...)``) and stepped in
chunks of ``--replica-chunk`` replicas per core (``replica_batch_size``), so each core works on
cache-sized arrays. FLOPs per replica-step are counted on the plain single-device program (the
model's work does not depend on how replicas are laid out).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

import harness  # benchmarks/harness.py: this script's folder is on sys.path
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


def _simulator(potential, dt, kT, n_steps, mesh=None, replica_batch_size=None):
    """The replica engine as the training loop uses it: one ring-buffer save per call."""
    return md.make_simulator(
        potential.energy_fn,
        md.masses_from_atomic_numbers(ASPIRIN_Z),
        dt=dt,
        kT=kT,
        space=md.free_space(),
        tau=md.tau_from_ttime(20, dt),
        history_every=n_steps,
        mesh=mesh,
        replica_batch_size=replica_batch_size,
    )


def run_jax(params, potential, positions, n_steps, dt, kT, mesh=None, replica_batch_size=None):
    sim = _simulator(potential, dt, kT, n_steps, mesh, replica_batch_size)
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
    sim = _simulator(potential, dt, kT, 1)
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


def _time_torch_steps(step, state, n_steps: int, device: str) -> tuple[float, float]:
    """``(warm-up s, steps/s)``: one step timed alone, then ``n_steps`` timed together."""
    import torch

    def synchronize():
        if device != "cpu":
            torch.cuda.synchronize()

    synchronize()
    started = time.perf_counter()
    state = step(state)
    synchronize()
    warm = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(n_steps):
        state = step(state)
    synchronize()
    return warm, n_steps / (time.perf_counter() - started)


def run_torch(params, positions, n_steps, dt, kT, device="cpu", chunk=None):
    """PyTorch Nosé–Hoover MD; ``chunk`` evaluates the forces that many replicas at a time."""
    import torch

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # repository root

    from benchmarks.torch_reference.nose_hoover_torch import init_state, make_nose_hoover_step
    from benchmarks.torch_reference.schnet_torch import TorchSchNet

    config = SchNetConfig(
        hidden_channels=64, num_filters=64, num_interactions=6, num_gaussians=25, cutoff=5.0
    )
    model = TorchSchNet.from_stabie_params(params, config, dtype=torch.float32).to(device)
    z = torch.as_tensor(ASPIRIN_Z, device=device)
    masses = torch.as_tensor(
        md.masses_from_atomic_numbers(ASPIRIN_Z), dtype=torch.float32, device=device
    )

    def batch_force(r):
        r = r.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(model.energy(z, r).sum(), r)
        return -grad

    def force_fn(r):
        if chunk is None or chunk >= r.shape[0]:
            return batch_force(r)
        return torch.cat([batch_force(part) for part in torch.split(r, chunk)])

    r0 = torch.as_tensor(positions, device=device)
    p0 = torch.randn_like(r0) * torch.sqrt(masses.reshape(1, -1, 1) * kT)
    step = make_nose_hoover_step(
        force_fn, dt, kT, tau=20 * dt, chain_length=3, degrees_of_freedom=3 * 21
    )
    state = init_state(r0, p0, masses, force_fn, chain_length=3)
    return _time_torch_steps(step, state, n_steps, device)


def run_torch_geometric(params, positions, n_steps, dt, kT, device="cpu"):
    """The authors' stack: ``torch_geometric.nn.SchNet`` on the same weights, all replicas as one
    torch_geometric batch with a radius graph built in torch, autograd forces, MDsim's
    Nosé–Hoover (``benchmarks/torch_reference/mdsim_torch.py``)."""
    import torch

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # repository root

    from benchmarks.torch_reference import mdsim_torch

    config = SchNetConfig(
        hidden_channels=64, num_filters=64, num_interactions=6, num_gaussians=25, cutoff=5.0
    )
    model = mdsim_torch.schnet_from_params(params, config, len(ASPIRIN_Z)).to(device)
    energy_force = mdsim_torch.make_energy_force(model, ASPIRIN_Z, config)
    masses = md.masses_from_atomic_numbers(ASPIRIN_Z)
    init, step = mdsim_torch.make_mdsim_nose_hoover(energy_force, masses, dt, kT, ttime_steps=20)
    r0 = torch.as_tensor(positions, device=device)
    m = torch.as_tensor(np.asarray(masses), dtype=r0.dtype, device=device).reshape(1, -1, 1)
    state = init(r0, torch.randn_like(r0) * torch.sqrt(m * kT))

    return _time_torch_steps(step, state, n_steps, device)


_STARTED = time.perf_counter()


def _stage(side: str, n_rep: int, what: str) -> None:
    """One progress line on stderr, so a stalled or killed measurement shows where it was."""
    elapsed = time.perf_counter() - _STARTED
    print(f"[compare {side} R={n_rep} +{elapsed:.1f}s] {what}", file=sys.stderr, flush=True)


def _worker(
    side: str, n_rep: int, n_steps: int, device: str, chunk: int = 2, torch_chunk: int = 8
) -> dict:
    """One measurement in this (child) process: rate, warm-up, FLOPs and peak RSS."""
    _stage(side, n_rep, f"start on {jax.default_backend()}")
    dt, kT = units.fs_to_internal(0.5), units.kT(500.0)
    directed = build_model("schnet")
    params = init_params(directed, ASPIRIN_Z, jax.random.PRNGKey(0))
    positions = _geometry(n_rep, jax.random.PRNGKey(n_rep))
    out = {"side": side, "replicas": n_rep}
    if side == "torch_geometric":
        _stage(side, n_rep, f"torch_geometric on {device}: warm-up step, then the timed steps")
        out["warm_s"], out["replica_steps_per_s"] = run_torch_geometric(
            params, positions, n_steps, dt, kT, device
        )
    elif side.startswith("torch"):
        torch_chunk = torch_chunk if side == "torch_chunked" else None
        _stage(side, n_rep, f"PyTorch on {device}: warm-up step, then the timed steps")
        out["warm_s"], out["replica_steps_per_s"] = run_torch(
            params, positions, n_steps, dt, kT, device, torch_chunk
        )
        out["replica_chunk"] = torch_chunk
    else:
        module = directed.clone(undirected_edges=side.startswith("jax_pairs"))
        potential = make_potential(module, ASPIRIN_Z, md.free_space().displacement_fn)
        mesh, batch = None, None
        if side == "jax_pairs_cores":
            devices = jax.devices()
            usable = max(d for d in range(1, len(devices) + 1) if n_rep % d == 0)
            mesh = md.replica_mesh(n_rep, devices[:usable])
            batch = chunk if n_rep // usable > chunk else None  # vmap when one chunk
            out["devices"], out["replica_chunk"] = usable, batch
        _stage(side, n_rep, "JAX simulate: compile + warm-up, then the timed call")
        warm, rate = run_jax(params, potential, positions, n_steps, dt, kT, mesh, batch)
        out["warm_s"], out["replica_steps_per_s"] = warm, rate * n_rep
        _stage(side, n_rep, f"timed ({rate * n_rep * 21:.0f} atom-steps/s); XLA cost analysis")
        out["flops_per_replica_step"] = flops_per_replica_step(params, potential, positions, dt, kT)
    if side.startswith("torch"):
        out["replica_steps_per_s"] *= n_rep
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    out["peak_device_mib"] = _peak_device_mib(side, device)
    _stage(side, n_rep, "done")
    return out


def _peak_device_mib(side: str, device: str) -> float | None:
    """Peak accelerator memory of this process (None on CPU, where RSS is the measure)."""
    if device == "cpu":
        return None
    if side.startswith("torch"):
        import torch

        peak = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
        return peak
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


def _measure(
    side: str,
    n_rep: int,
    n_steps: int,
    device: str,
    in_process: bool,
    chunk: int,
    torch_chunk: int,
    timeout: float,
) -> dict:
    """Run :func:`_worker` in a child process (isolated peak memory, same machine).

    ``in_process`` runs it here instead (one runtime start for all measurements, which on a GPU
    machine saves tens of seconds each; peak memory is then the high-water mark so far; the
    ``jax_pairs_cores`` side then uses the devices this process already has).
    """
    if in_process:
        return _worker(side, n_rep, n_steps, device, chunk, torch_chunk)
    command = [sys.executable, __file__, "--worker", side, str(n_rep), str(n_steps), device]
    command += ["--replica-chunk", str(chunk), "--torch-chunk", str(torch_chunk)]
    env = dict(os.environ)
    if side == "jax_pairs_cores":
        flag = f"--xla_force_host_platform_device_count={os.cpu_count()}"
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}".strip()
    failed = {"side": side, "replicas": n_rep}
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, check=False, env=env, timeout=timeout
        )
    except subprocess.TimeoutExpired as expired:
        stderr = expired.stderr.decode() if isinstance(expired.stderr, bytes) else expired.stderr
        failed["failed"] = f"timed out after {timeout:g} s; last stage: {_last_stage(stderr)}"
        print(f"{side} R={n_rep}: {failed['failed']}", file=sys.stderr)
        return failed
    if done.returncode:
        print(f"{side} R={n_rep} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
        failed["failed"] = f"exit {done.returncode}; last stage: {_last_stage(done.stderr)}"
        return failed
    return json.loads(done.stdout.strip().splitlines()[-1])


def _last_stage(stderr: str | None) -> str:
    """The last progress line a worker printed (see :func:`_stage`), or ``none``."""
    lines = [line for line in (stderr or "").splitlines() if line.startswith("[compare ")]
    return lines[-1] if lines else "none (before the first stage)"


def _memory(measurement: dict) -> str:
    """``RSS`` or ``RSS [device peak]`` in MiB."""
    device = measurement.get("peak_device_mib")
    rss = f"{measurement['peak_rss_mib']:.0f}"
    return rss if device is None else f"{rss} [{device:.0f}]"


SIDES = {
    "jax": "JAX, directed edges (as torch_geometric)",
    "jax_pairs": "JAX, each pair once (`undirected_edges=True`, the default of the configs)",
    "jax_pairs_cores": "JAX, each pair once, replicas split over one fake CPU device per core "
    "(`make_simulator(mesh=...)`) in chunks of `replica_batch_size` replicas per core",
    "torch_geometric": "the authors' stack: `torch_geometric.nn.SchNet` (same weights), all "
    "replicas as one batch with a radius graph built in torch, autograd forces, MDsim's "
    "Nosé–Hoover (`benchmarks/torch_reference/mdsim_torch.py`)",
    "torch": "PyTorch, this project's compact SchNet (`benchmarks/torch_reference`), batched, "
    "autograd forces, JAX-MD's Nosé–Hoover chain",
    "torch_chunked": "PyTorch, forces evaluated `--torch-chunk` replicas at a time (its best "
    "chunking on the 2-core CPU)",
}


def _table(rows: list[dict], sides: list[str], jax_sides: list[str], peak: float) -> list[str]:
    """Markdown rows: atom-steps/s per side, JAX/PyTorch ratios, warm-up, FLOPs, memory.

    A measurement that failed or timed out shows ``failed`` (its reason is listed below the
    table by :func:`_failures`); ratios involving it show ``-``.
    """

    def ok(m) -> bool:
        return "failed" not in m

    def each(measurements, fmt):
        return " / ".join(fmt(m) if ok(m) else "failed" for m in measurements)

    def rate(m) -> float | None:
        return m["replica_steps_per_s"] if ok(m) else None

    slash = " / ".join
    torch_sides = [s for s in sides if s.startswith("torch")]
    ratios = [(s, t) for s in jax_sides for t in torch_sides]
    header = (
        "| R | "
        + " | ".join(f"{s} atom-steps/s" for s in sides)
        + " | "
        + " | ".join(f"{s} / {t}" for s, t in ratios)
        + f" | warm-up s ({slash(sides)}) | GFLOP per replica-step ({slash(jax_sides)}) "
        f"| FLOP utilisation ({slash(jax_sides)}) "
        f"| peak memory MiB, host RSS [device] ({slash(sides)}) |"
    )
    lines = [header, "|" + "---:|" * (1 + len(sides) + len(ratios)) + "---|" * 4]
    for row in rows:
        cells = [str(row["torch"]["replicas"])]
        cells += [f"{rate(row[s]) * 21:.0f}" if ok(row[s]) else "failed" for s in sides]
        cells += [
            f"{rate(row[s]) / rate(row[t]):.2f}" if ok(row[s]) and ok(row[t]) else "-"
            for s, t in ratios
        ]
        cells.append(each([row[s] for s in sides], lambda m: f"{m['warm_s']:.2f}"))
        cells.append(
            each([row[s] for s in jax_sides], lambda m: f"{m['flops_per_replica_step'] / 1e9:.4f}")
        )
        cells.append(
            each(
                [row[s] for s in jax_sides],
                lambda m: f"{m['flops_per_replica_step'] * m['replica_steps_per_s'] / peak:.1%}",
            )
        )
        cells.append(each([row[s] for s in sides], _memory))
        lines.append("| " + " | ".join(cells) + " |")
    return lines + _failures(rows)


def _failures(rows: list[dict]) -> list[str]:
    """One line per failed or timed-out measurement, with the last stage it reached."""
    failed = [m for row in rows for m in row.values() if "failed" in m]
    if not failed:
        return []
    return ["", *(f"- {m['side']} R = {m['replicas']}: {m['failed']}" for m in failed)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", default="1,32,128,256")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--output", default=None)
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where PyTorch runs (auto: cuda when JAX's default backend is a GPU); JAX runs on "
        "its default backend (JAX_PLATFORMS=cpu forces the CPU)",
    )
    parser.add_argument(
        "--matmul-size", type=int, default=None, help="peak matmul size n (CPU 2048, GPU 8192)"
    )
    parser.add_argument(
        "--sides",
        default=None,
        help=f"comma-separated subset of {list(SIDES)} (default: all on a CPU; without "
        "jax_pairs_cores and torch_chunked on an accelerator)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="seconds per child measurement; a side that runs longer is recorded as timed out "
        "with the last stage it reached, and the run goes on",
    )
    parser.add_argument(
        "--torch-chunk",
        type=int,
        default=8,
        help="replicas per force evaluation for the torch_chunked side",
    )
    parser.add_argument(
        "--replica-chunk",
        type=int,
        default=2,
        help="replicas per lax.map chunk on each core for the jax_pairs_cores side",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="measure in this process, not one child per measurement (faster start-up; peak "
        "memory becomes a high-water mark)",
    )
    parser.add_argument(
        "--worker", nargs=4, metavar=("SIDE", "R", "STEPS", "DEVICE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.worker:
        side, n_rep, n_steps, device = args.worker
        measured = _worker(
            side, int(n_rep), int(n_steps), device, args.replica_chunk, args.torch_chunk
        )
        print(json.dumps(measured))
        return
    on_gpu = jax.default_backend() == "gpu"
    cpu_only = ("jax_pairs_cores", "torch_chunked")
    default_sides = [s for s in SIDES if not (on_gpu and s in cpu_only)]
    sides = [side for side in (args.sides or ",".join(default_sides)).split(",") if side]
    if not set(sides) <= set(SIDES) or "torch" not in sides:
        parser.error(f"--sides must include torch and be a subset of {list(SIDES)}")

    device = args.device if args.device != "auto" else ("cuda" if on_gpu else "cpu")
    n = args.matmul_size or (8192 if on_gpu else 2048)
    peak = matmul_flop_rate(n)
    print(f"float32 matmul {n}^3 on {jax.default_backend()}: {peak / 1e9:.1f} GFLOP/s")
    jax_sides = [side for side in sides if not side.startswith("torch")]
    rows = []
    for n_rep in [int(r) for r in args.replicas.split(",")]:
        row = {
            side: _measure(
                side,
                n_rep,
                args.steps,
                device,
                args.in_process,
                args.replica_chunk,
                args.torch_chunk,
                args.timeout,
            )
            for side in sides
        }
        rows.append(row)
        rates = {s: m["replica_steps_per_s"] * 21 for s, m in row.items() if "failed" not in m}
        print(
            f"R={n_rep:4d}  "
            + "  ".join(f"{side} {rate:9.0f} atom-steps/s" for side, rate in rates.items())
            + "".join(
                f"  {s}/torch {rates[s] / rates['torch']:.2f}"
                for s in jax_sides
                if s in rates and "torch" in rates
            )
        )
        if args.output:  # after every R, so a run stopped early keeps what it measured
            pathlib.Path(args.output).write_text(_report(rows, sides, jax_sides, peak, n, device))
    print(_report(rows, sides, jax_sides, peak, n, device))


def _report(rows, sides, jax_sides, peak, n, device) -> str:
    """The markdown report: machine, versions, command, matmul peak and the table."""
    import torch

    on_gpu = jax.default_backend() == "gpu"
    accelerator = jax.devices()[0].device_kind if on_gpu else "none"
    lines = [
        "# JAX (stabie_jax) vs PyTorch MD throughput, same SchNet and weights",
        "",
        *harness.environment_lines(
            extra=f"torch threads {torch.get_num_threads()}; accelerator: {accelerator}; "
            f"PyTorch on {device}"
        ),
        f"- float32 matmul ({n}³, XLA, default precision) on this machine: "
        f"{peak / 1e9:.1f} GFLOP/s",
        "",
        "Sides: " + "; ".join(f"`{k}` = {SIDES[k]}" for k in sides) + ".",
        *_layout_note(rows, sides),
        "",
        *_table(rows, sides, jax_sides, peak),
    ]
    return "\n".join(lines) + "\n"


def _layout_note(rows, sides) -> list[str]:
    """How ``jax_pairs_cores`` split each R (devices used, replicas per chunk)."""
    if "jax_pairs_cores" not in sides:
        return []
    parts = [
        f"R = {row['torch']['replicas']}: {m['devices']} device(s), "
        + (f"chunks of {m['replica_chunk']}" if m["replica_chunk"] else "vmap, no chunks")
        for row in rows
        for m in [row["jax_pairs_cores"]]
        if "failed" not in m
    ]
    return ["", "`jax_pairs_cores` layout: " + "; ".join(parts) + "."]


if __name__ == "__main__":
    main()
