"""Forces of one device's replicas by chunks: ``vmap`` over a chunk vs the chunk as one flat graph.

The default CPU layout (``compare.py``'s ``jax_pairs_cores``) evaluates each device's replicas
in ``lax.map`` chunks of ``c`` replicas, ``vmap``-ed inside a chunk. The profile
(``profile_md_step.py``) puts 17 % of the step's thread time into copies that transpose the
vmapped per-edge arrays. This script measures, on one device, what the forces of ``--replicas``
replicas cost when each chunk is instead ONE graph of ``c·N`` atoms (pair indices offset per
replica; the same model, the same pairs, no ``vmap``), and checks that both give the same forces.
Only the force evaluation is timed (no integrator); paper-size SchNet, each pair once, aspirin.

    python benchmarks/chunk_forces.py --replicas 64 --chunks 2,4,8 \\
        --output benchmarks/results/chunk_forces_cpu.md
"""

from __future__ import annotations

import argparse

import compare  # benchmarks/compare.py: the same model and geometry
import harness
import jax
import jax.numpy as jnp
import numpy as np

from stabie_jax import md
from stabie_jax.models import make_potential
from stabie_jax.models.graph import build_graph, dense_pairs
from stabie_jax.models.registry import build_model, init_params


def chunk_force_fns(module, params, n_atoms: int, chunk: int):
    """``{"vmap": f, "flat": f}``, each ``(params, R [chunk, n_atoms, 3]) -> forces`` eV/Å."""
    z = compare.ASPIRIN_Z
    displacement = md.free_space().displacement_fn
    potential = make_potential(module, z, displacement)
    senders, receivers = dense_pairs(n_atoms)
    offsets = n_atoms * np.arange(chunk)[:, None]
    flat_s = (senders[None] + offsets).reshape(-1).astype(np.int32)
    flat_r = (receivers[None] + offsets).reshape(-1).astype(np.int32)
    flat_z = np.tile(z, chunk)

    def flat_energy(p, r):
        graph = build_graph(displacement, r.reshape(chunk * n_atoms, 3), flat_s, flat_r)
        return jnp.sum(module.apply({"params": p}, flat_z, graph))

    return {
        "vmap": lambda p, r: jax.vmap(potential.force_fn, (None, 0))(p, r),
        "flat": lambda p, r: -jax.grad(flat_energy, argnums=1)(p, r),
    }


def measure(n_rep: int, chunk: int, repeats: int) -> dict:
    n_atoms = len(compare.ASPIRIN_Z)
    module = build_model("schnet").clone(undirected_edges=True)
    params = init_params(module, compare.ASPIRIN_Z, jax.random.PRNGKey(0))
    positions = jnp.asarray(compare._geometry(n_rep, jax.random.PRNGKey(1)))
    out = {}
    for name, force in chunk_force_fns(module, params, n_atoms, chunk).items():
        run = jax.jit(
            lambda p, x, f=force: jax.lax.map(lambda r: f(p, r), x.reshape(-1, chunk, n_atoms, 3))
        )
        timing = harness.time_call(run, params, positions, repeats=repeats)  # compiles first
        forces = np.asarray(run(params, positions))
        out[name] = {"median_s": timing["median_s"], "min_s": timing["best_s"], "forces": forces}
    scale = np.max(np.abs(out["vmap"]["forces"]))
    diff = float(np.max(np.abs(out["vmap"]["forces"] - out["flat"]["forces"])) / scale)
    return {"chunk": chunk, "vmap": out["vmap"], "flat": out["flat"], "max_rel_diff": diff}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=64)
    parser.add_argument("--chunks", default="2,4,8")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    rows = [measure(args.replicas, int(c), args.repeats) for c in args.chunks.split(",")]
    base = rows[0]["vmap"]["median_s"]
    lines = [
        "# Forces of one device's replicas: vmap over a chunk vs one flat graph per chunk",
        "",
        *harness.environment_lines(),
        "",
        f"{args.replicas} replicas on one device, `lax.map` over chunks; median (min) of "
        f"{args.repeats} calls; speed-up against vmap in chunks of {rows[0]['chunk']} "
        "(the default layout's chunk).",
        "",
        "| chunk | vmap ms | flat graph ms | flat / vmap | vs default (vmap, first chunk) "
        "| max rel. force difference |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        v, f = row["vmap"], row["flat"]
        lines.append(
            f"| {row['chunk']} | {1e3 * v['median_s']:.1f} ({1e3 * v['min_s']:.1f}) | "
            f"{1e3 * f['median_s']:.1f} ({1e3 * f['min_s']:.1f}) | "
            f"{f['median_s'] / v['median_s']:.3f} | {base / f['median_s']:.2f}× | "
            f"{row['max_rel_diff']:.1e} |"
        )
    text = "\n".join(lines) + "\n"
    harness.print_and_write(text, args.output)


if __name__ == "__main__":
    main()
