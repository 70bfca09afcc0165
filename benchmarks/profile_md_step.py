"""Where one MD step's time goes: an XLA CPU trace of the default per-core layout, by kind of work.

Builds the ``jax_pairs_cores`` side of ``compare.py`` (paper-size SchNet, each pair once, the
replicas split over one fake CPU device per core in chunks of ``--replica-chunk``), traces
``--steps`` MD steps with ``jax.profiler`` and sums the traced XLA operations by what they do,
read from the compiled HLO: a fusion that contains a ``dot`` (or a oneDNN/YNNPACK matmul call)
counts as matmul, one with a ``scatter`` as scatter, a ``gather`` as gather, an ``exponential``
/ ``log`` / ``tanh`` as transcendental, a ``copy`` / ``transpose`` as layout copies, and the
rest as other elementwise work; loops and calls are containers and not counted themselves.
Thread time (summed over the cores' threads) per MD step and each kind's share are printed and
written as a markdown table (``--output``), with the step's wall time and its XLA FLOPs as a
fraction of the machine's matmul rate (``compare.py``'s FLOP utilisation).

    python benchmarks/profile_md_step.py --replicas 128 --steps 20 \\
        --output benchmarks/results/profile_md_step_cpu.md
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import host_devices  # before anything starts JAX's backend

if __name__ == "__main__":
    host_devices.request(os.cpu_count())

import compare  # benchmarks/compare.py: the sides being explained
import harness
import jax
import jax.numpy as jnp

from stabie_jax import md, units
from stabie_jax.models import make_potential
from stabie_jax.models.registry import build_model, init_params

KINDS = ("matmul", "scatter", "gather", "transcendental", "layout copy", "other elementwise")
_OPS = {
    "matmul": re.compile(r"\b(dot|convolution)\(|custom_call_target=\"(__onednn|__xnn|ynn)"),
    "scatter": re.compile(r"\bscatter\("),
    "gather": re.compile(r"\bgather\("),
    "transcendental": re.compile(r"\b(exponential|log|log-plus-one|tanh|logistic|power)\("),
    "layout copy": re.compile(r"\b(copy|transpose)\("),
}


_CONTAINERS = re.compile(r"\b(while|conditional|call)\(")


def classify_instructions(hlo_text: str) -> dict[str, str | None]:
    """``{instruction name: kind}`` for every instruction of the HLO module text.

    A fusion takes the first kind of :data:`KINDS` that its fused computation contains; a
    plain instruction is classified by its own opcode; loops, conditionals and calls map to
    None (their time is that of the instructions they run).
    """
    computations: dict[str, str] = {}
    current, body = None, []
    for line in hlo_text.splitlines():
        header = re.match(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s*(?:\(|\{)", line)
        if header and line.rstrip().endswith("{"):
            current, body = header.group(1), []
            continue
        if line.strip() == "}" and current is not None:
            computations[current] = "\n".join(body)
            current = None
            continue
        if current is not None:
            body.append(line)

    def kind_of(text: str) -> str:
        for kind, pattern in _OPS.items():
            if pattern.search(text):
                return kind
        return "other elementwise"

    kinds = {}
    for text in computations.values():
        for line in text.splitlines():
            m = re.match(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=", line)
            if not m:
                continue
            fused = re.search(r"calls=%?([\w.\-]+)", line)
            if _CONTAINERS.search(line.split("metadata=")[0]):
                kinds[m.group(1)] = None
            elif " fusion(" in line and fused and fused.group(1) in computations:
                kinds[m.group(1)] = kind_of(computations[fused.group(1)])
            else:
                kinds[m.group(1)] = kind_of(line)
    return kinds


def traced_op_seconds(logdir: str) -> dict[str, float]:
    """Summed duration (s) of every traced event name in the profile written to ``logdir``."""
    paths = glob.glob(os.path.join(logdir, "**", "*.trace.json.gz"), recursive=True)
    if not paths:
        raise FileNotFoundError(f"no *.trace.json.gz under {logdir}: was the profiler active?")
    with gzip.open(max(paths, key=os.path.getmtime), "rt") as f:
        events = json.load(f)["traceEvents"]
    total: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("ph") == "X" and "dur" in e:
            total[e["name"]] += e["dur"] * 1e-6
    return total


def profile(n_rep: int, n_steps: int, chunk: int) -> dict:
    """Trace ``n_steps`` steps of the default CPU layout at ``n_rep`` replicas."""
    dt, kT = units.fs_to_internal(0.5), units.kT(500.0)
    directed = build_model("schnet")
    params = init_params(directed, compare.ASPIRIN_Z, jax.random.PRNGKey(0))
    positions = compare._geometry(n_rep, jax.random.PRNGKey(n_rep))
    module = directed.clone(undirected_edges=True)
    potential = make_potential(module, compare.ASPIRIN_Z, md.free_space().displacement_fn)
    devices = jax.devices()
    usable = max(d for d in range(1, len(devices) + 1) if n_rep % d == 0)
    mesh = md.replica_mesh(n_rep, devices[:usable])
    batch = chunk if n_rep // usable > chunk else None
    sim = compare._simulator(potential, dt, kT, n_steps, mesh, batch)
    state = sim.init(params, jax.random.PRNGKey(0), jnp.asarray(positions))
    if mesh is not None:  # inputs laid out as the program wants them: no copies per call
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        params = jax.device_put(params, replicated)
    run = jax.jit(lambda p, s: sim.simulate(p, s, n_steps)[0])
    hlo = run.lower(params, state).compile().as_text()
    for _ in range(2):  # compile for the initial state, then for the sharded state it returns
        state = jax.block_until_ready(run(params, state))
    started = time.perf_counter()
    jax.block_until_ready(run(params, state))
    wall = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as logdir:
        with jax.profiler.trace(logdir):
            jax.block_until_ready(run(params, state))
        op_seconds = traced_op_seconds(logdir)
    kinds = classify_instructions(hlo)
    by_kind: dict[str, float] = collections.defaultdict(float)
    for name, seconds in op_seconds.items():
        if name not in kinds:
            continue  # host-side events (Python, dispatch, the executor's own spans)
        if kinds[name] is not None:
            by_kind[kinds[name]] += seconds
    flops = compare.flops_per_replica_step(params, potential, positions, dt, kT)
    return {
        "replicas": n_rep,
        "devices": usable,
        "chunk": batch,
        "steps": n_steps,
        "wall_s_per_step": wall / n_steps,
        "thread_s_per_step": {k: by_kind.get(k, 0.0) / n_steps for k in KINDS},
        "flops_per_step": flops * n_rep,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--replica-chunk", type=int, default=2)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    peak = compare.matmul_flop_rate(2048)
    out = profile(args.replicas, args.steps, args.replica_chunk)
    busy = sum(out["thread_s_per_step"].values())
    lines = [
        "# Where one MD step's time goes (default CPU layout)",
        "",
        *harness.environment_lines(),
        "",
        f"R = {out['replicas']} on {out['devices']} device(s), chunks of {out['chunk']}; "
        f"wall {1e3 * out['wall_s_per_step']:.1f} ms per step "
        f"({out['replicas'] * 21 / out['wall_s_per_step']:.0f} atom-steps/s); traced thread "
        f"time {1e3 * busy:.1f} ms per step; XLA FLOPs "
        f"{out['flops_per_step'] / 1e9:.2f} GFLOP per step = "
        f"{out['flops_per_step'] / out['wall_s_per_step'] / peak:.1%} of the "
        f"{peak / 1e9:.1f} GFLOP/s matmul rate.",
        "",
        "| kind of work | thread ms per step | share of traced time |",
        "|---|---:|---:|",
    ]
    for kind, seconds in out["thread_s_per_step"].items():
        lines.append(f"| {kind} | {1e3 * seconds:.1f} | {seconds / busy:.1%} |")
    text = "\n".join(lines) + "\n"
    harness.print_and_write(text, args.output)
    json.dump(out, sys.stderr)


if __name__ == "__main__":
    main()
