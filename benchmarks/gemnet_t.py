"""Benchmark: full-size GemNet-T energy + forces on 64 periodic waters (192 atoms), CPU.

Measures, for the authors' water configuration (1.89 M parameters, cutoff 5 Å):

* one system: ``jit(value_and_grad)`` of the energy with a JAX-MD ``Sparse`` neighbour list;
* 8 replicas (8 frames) under ``vmap``, each with its own neighbour list of the same capacity.

Compile time (lower + compile, ahead of time) is reported separately from the time per call
after a warm-up call (mean of ``--repeats`` calls, ``block_until_ready``).

Positions: frame 0.. of ``../shared/data/spcfw_water_64/spcfw_water_64_300K.npz`` (key ``R``,
box from ``cell``) when present, else a generated jittered lattice of waters in a 12.43 Å box.

Usage::

    python benchmarks/gemnet_t.py [--repeats 3] [--replicas 8]

Prints a markdown table and writes it to ``benchmarks/results/gemnet_t_cpu.md``.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import harness  # benchmarks/harness.py: this script's folder is on sys.path
import jax
import jax.numpy as jnp
import numpy as np
from jax_md import partition, space

from stabie_jax.models import build_graph, edges_from_neighbor_list, make_potential
from stabie_jax.models.gemnet_t import GemNetT, count_parameters, make_table_status_fn
from stabie_jax.models.gemnet_table import check_table_status

REPO = pathlib.Path(__file__).resolve().parents[1]
WATER = REPO.parent / "shared" / "data" / "spcfw_water_64" / "spcfw_water_64_300K.npz"
BOX_ANGSTROM = 12.4297


def water_frames(n_frames: int):
    """``(positions [n_frames, 192, 3] Å wrapped, atomic_numbers [192], box Å, source)``."""
    if WATER.exists():
        data = np.load(WATER)
        box = float(data["cell"][0, 0])
        frames = np.mod(np.asarray(data["R"][: 10 * n_frames : 10], np.float32), box)
        return frames, np.asarray(data["z"], np.int32), box, str(WATER.name)
    rng = np.random.default_rng(0)
    half = np.deg2rad(104.5) / 2
    local = 0.96 * np.array(
        [[0, 0, 0], [np.sin(half), np.cos(half), 0], [-np.sin(half), np.cos(half), 0]]
    )
    spacing = BOX_ANGSTROM / 4
    frames = []
    for _ in range(n_frames):
        mols = []
        for idx in np.ndindex(4, 4, 4):
            q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
            mols.append((np.array(idx) + 0.5) * spacing + rng.normal(0, 0.2, 3) + local @ q.T)
        frames.append(np.mod(np.concatenate(mols), BOX_ANGSTROM))
    z = np.tile([8, 1, 1], 64).astype(np.int32)
    return np.asarray(frames, np.float32), z, BOX_ANGSTROM, "generated lattice"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gemnet_t_cpu.md"))
    args = parser.parse_args()

    frames, z, box, source = water_frames(args.replicas)
    model = GemNetT()
    displacement, _ = space.periodic(box)
    neighbor_fn = partition.neighbor_list(
        displacement, box, model.cutoff, dr_threshold=0.5, format=partition.Sparse
    )
    # One capacity for all replicas: the largest list any frame needs (then updated per frame).
    allocated = [neighbor_fn.allocate(jnp.asarray(r)) for r in frames]
    template = max(allocated, key=lambda n: n.idx.shape[1])
    neighbors = [neighbor_fn.update(jnp.asarray(r), template) for r in frames]
    nbrs0 = neighbors[0]
    if any(bool(n.did_buffer_overflow) for n in neighbors):
        raise RuntimeError("neighbour list overflow in the benchmark; raise extra_capacity")
    stacked = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *neighbors)

    pot = make_potential(model, z, displacement, use_neighbor_list=True)
    r0 = jnp.asarray(frames[0])
    params = jax.jit(model.init)(jax.random.key(0), jnp.asarray(z), _graph(r0, nbrs0, displacement))
    params = params["params"]
    n_params = count_parameters(params)
    status = jax.jit(make_table_status_fn(model, z, displacement, use_neighbor_list=True))
    check_table_status(status(r0, nbrs0), model.neighbor_capacity)

    value_and_forces = jax.value_and_grad(pot.energy_fn, argnums=1)
    single = jax.jit(value_and_forces)
    batched = jax.jit(jax.vmap(value_and_forces, in_axes=(None, 0, 0)))
    rows = []
    for label, fn, call_args in [
        ("1 x 192 atoms", single, (params, r0, nbrs0)),
        (f"{args.replicas} x 192 atoms (vmap)", batched, (params, jnp.asarray(frames), stacked)),
    ]:
        start = time.perf_counter()
        compiled = fn.lower(*call_args).compile()
        compile_s = time.perf_counter() - start
        memory = compiled.memory_analysis()
        temp_gb = memory.temp_size_in_bytes / 1e9 if memory is not None else float("nan")
        per_call = harness.time_call(compiled, *call_args, repeats=args.repeats)["median_s"]
        energy, grad = compiled(*call_args)
        assert np.all(np.isfinite(np.asarray(energy))) and np.all(np.isfinite(np.asarray(grad)))
        rows.append((label, compile_s, per_call, temp_gb))
        print(f"{label}: compile {compile_s:.1f} s, {per_call:.3f} s per call", flush=True)

    n_edges = int(nbrs0.idx.shape[1])
    header = (
        f"GemNet-T energy+forces (jit(value_and_grad)), float32, {n_params} parameters, "
        f"cutoff {model.cutoff} Å, neighbour-list capacity {n_edges} edges, "
        f"neighbor_capacity {model.neighbor_capacity}; positions: {source}.\n\n"
        + "\n".join(harness.environment_lines())
        + "\n\n"
    )
    table = (
        "| model | system | device | compile (s) | time per call (s) | per replica (s) "
        "| XLA temp memory (GB) |\n"
    )
    table += "|---|---|---|---|---|---|---|\n"
    for label, compile_s, per_call, temp_gb in rows:
        n_rep = args.replicas if "vmap" in label else 1
        table += (
            f"| GemNet-T | {label} | CPU | {compile_s:.1f} | {per_call:.3f} | "
            f"{per_call / n_rep:.3f} | {temp_gb:.2f} |\n"
        )
    print(header + table)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# GemNet-T benchmark (CPU)\n\n" + header + table)


def _graph(positions, neighbor, displacement):
    return build_graph(displacement, positions, *edges_from_neighbor_list(neighbor))


if __name__ == "__main__":
    main()
