"""MD steps, each chunk's forces as one flat graph (``custom_vmap``) vs ``vmap``, a device per core.

Follows ``chunk_forces.py`` (forces alone, one device) into the setting that matters: JAX-MD's
``nvt_nose_hoover`` stepping every replica under ``lax.map`` chunks, the replicas split over one
fake CPU device per core with ``shard_map``, as the default layout does. The ``flat`` side gives
JAX-MD a force function whose batching rule (``jax.custom_batching.custom_vmap``) evaluates a
vmapped chunk as ONE graph of ``c·21`` atoms; the ``vmap`` side gives it the energy, as the
library does. Both must end at the same positions. Paper-size SchNet, each pair once, aspirin,
500 K, 0.5 fs; best of 3 calls of ``--steps`` steps.

    python benchmarks/flat_graph_md.py --replicas 128 --chunks 2,4,8 \\
        --output benchmarks/results/flat_graph_md_cpu.md
"""

from __future__ import annotations

import os

import host_devices  # before anything starts JAX's backend

if __name__ == "__main__":
    host_devices.request(os.cpu_count())

import argparse

import compare
import harness
import jax
import numpy as np
from chunk_forces import chunk_force_fns
from jax.custom_batching import custom_vmap
from jax.sharding import Mesh, PartitionSpec
from jax_md import simulate, space

from stabie_jax import md, units
from stabie_jax.models import make_potential
from stabie_jax.models.registry import build_model, init_params


def step_time(n_rep: int, chunk: int, side: str, steps: int) -> tuple[float, np.ndarray]:
    z, n_atoms = compare.ASPIRIN_Z, len(compare.ASPIRIN_Z)
    module = build_model("schnet").clone(undirected_edges=True)
    params = init_params(module, z, jax.random.PRNGKey(0))
    potential = make_potential(module, z, md.free_space().displacement_fn)
    flat = {}

    @custom_vmap
    def force(p, x):
        return potential.force_fn(p, x)

    @force.def_vmap
    def _batched(axis_size, in_batched, p, x):
        if axis_size not in flat:
            flat[axis_size] = chunk_force_fns(module, params, n_atoms, axis_size)["flat"]
        return flat[axis_size](p, x), True

    if side == "flat":
        fn = lambda r, **kw: force(kw["params"], r)
    else:
        fn = lambda r, **kw: potential.energy_fn(kw["params"], r)
    dt, kT = units.fs_to_internal(0.5), units.kT(500.0)
    init, apply = simulate.nvt_nose_hoover(fn, space.free()[1], dt, kT, tau=100 * dt)
    positions = jax.numpy.asarray(compare._geometry(n_rep, jax.random.PRNGKey(1)))
    keys = jax.random.split(jax.random.PRNGKey(0), n_rep)
    states = jax.vmap(lambda k, x: init(k, x, mass=12.0, params=params))(keys, positions)
    mesh = Mesh(np.asarray(jax.devices()), ("replica",))

    def local(st):
        def body(st, _):
            return jax.lax.map(lambda s: apply(s, params=params), st, batch_size=chunk), None

        return jax.lax.scan(body, st, None, length=steps)[0]

    spec = PartitionSpec("replica")
    run = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False))
    best = harness.time_call(run, states, repeats=3)["best_s"]  # compiles first
    return best / steps, np.asarray(run(states).position)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=128)
    parser.add_argument("--chunks", default="2,4,8")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    lines = [
        "# MD steps: each chunk's forces as one flat graph vs vmap, one device per core",
        "",
        *harness.environment_lines(),
        "",
        "| chunk | vmap ms per step | flat ms per step | flat / vmap | positions equal |",
        "|---:|---:|---:|---:|---|",
    ]
    for chunk in [int(c) for c in args.chunks.split(",")]:
        t_v, x_v = step_time(args.replicas, chunk, "vmap", args.steps)
        t_f, x_f = step_time(args.replicas, chunk, "flat", args.steps)
        same = bool(np.allclose(x_v, x_f, rtol=0, atol=1e-5))
        lines.append(f"| {chunk} | {1e3 * t_v:.1f} | {1e3 * t_f:.1f} | {t_f / t_v:.3f} | {same} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    harness.print_and_write(text, args.output)


if __name__ == "__main__":
    main()
