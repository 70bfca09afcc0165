"""MD throughput of the replica engine (stabie_jax.md) with a SchNet-sized model.

Systems:

* ``aspirin``: 21 atoms, free space, SchNet (hidden 64, 64 filters, 6 interactions, 25 Gaussians,
  cutoff 5 Å: the paper's aspirin model, randomly initialised), dt 0.5 fs, 500 K, for
  R replicas; edges either ``dense`` (all 420 ordered pairs, no neighbour list) or ``nl``
  (per-replica JAX-MD neighbour lists, cutoff 5 Å + 0.3 Å skin, rebuilt every step). A
  ``-map`` suffix (``dense-map``, ``nl-map``) steps the replicas one after another with
  ``lax.map`` (``replica_batch_size=1``) instead of ``vmap``; a ``pairs`` mode (``pairs``,
  ``nl-pairs``) lists each pair once (``SchNet(undirected_edges=True)``, JAX-MD
  ``OrderedSparse`` lists), the configs' default; a ``-cores`` suffix (``pairs-cores``,
  ``nl-pairs-cores``) splits the replicas over one fake XLA CPU device per core
  (``make_simulator(mesh=...)``) and steps them in chunks of 2 replicas per core
  (``replica_batch_size=2``), the fast CPU layout of ``benchmarks/compare.py``;
* ``ala3``: Ac-Ala3-NHMe, 42 atoms, free space, the same SchNet and MD settings as aspirin
  (staged MD22 frame, else the built-in xTB set, else a synthetic grid);
* ``water``: 64 H₂O (192 atoms), cubic periodic box 12.43 Å, the same SchNet with neighbour lists
  (dense all-pairs for 192 atoms = 36,672 edges is also measured when ``--modes`` has ``dense``),
  dt 1 fs, 300 K.

Initial positions come from ``../shared/data`` when present (rMD17 aspirin frame 0, SPC/Fw water
frame 0) and otherwise from a synthetic geometry (said so in the table).

Measured per configuration, each in a fresh subprocess (so peak memory is per configuration):

* ``compile s``: first ``simulate`` call (trace + XLA compile + one run) minus one steady run;
* ``steps/s``: MD steps per second of the whole batch (every replica advances one step), from
  the best of ``--repeats`` steady calls of ``simulate(n_steps=--steps, sample_every=--steps)``;
* ``atom-steps/s`` = steps/s × R × N;
* ``peak RSS MiB``: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the subprocess (host memory;
  includes the Python/JAX runtime, ~300-400 MiB on CPU);
* ``device peak MiB``: ``jax.devices()[0].memory_stats()['peak_bytes_in_use']`` on accelerators.

Usage::

    python benchmarks/md_throughput.py                                  # full table
    python benchmarks/md_throughput.py --replicas 1,8 --steps 20 \\
        --water-replicas 1 --output /tmp/md_quick.md                      # ~2 min on 2 cores
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

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def _ala3_geometry():
    """Ac-Ala3-NHMe (42 atoms): staged MD22 frame, the built-in xTB set, or a jittered grid."""
    import numpy as np

    path = SHARED / "md22_ac_ala3_nhme"
    for candidate in sorted(path.glob("*.npz")) if path.is_dir() else []:
        d = np.load(candidate)
        if "R" in d and "z" in d:
            return d["R"][0].astype(np.float32), d["z"].astype(int), "MD22 frame"
    try:
        from stabie_jax.data import load_dataset

        d = load_dataset("builtin:ala3_xtb_500K")
        return d.positions[0].astype(np.float32), np.asarray(d.atomic_numbers), "xTB frame"
    except (ValueError, OSError, KeyError):
        pass
    z = np.array([6] * 12 + [7] * 4 + [8] * 4 + [1] * 22)
    grid = np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3)[:42]
    rng = np.random.default_rng(0)
    return (1.45 * grid + 0.05 * rng.normal(size=(42, 3))).astype(np.float32), z, "synthetic"


def _water_geometry():
    import numpy as np

    path = SHARED / "spcfw_water_64" / "spcfw_water_64_300K.npz"
    if path.exists():
        d = np.load(path)
        box = float(d["cell"][0, 0])
        return d["R"][0].astype(np.float32), d["z"].astype(int), box, "SPC/Fw frame"
    box = 12.4297
    site = np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3)
    site = (site + 0.5) * box / 4
    mol = np.array([[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    pos = (site[:, None, :] + mol[None]).reshape(-1, 3)
    return pos.astype(np.float32), np.array([8, 1, 1] * 64), box, "synthetic lattice"


def run_single(system: str, mode: str, n_rep: int, steps: int, repeats: int, dtype: str) -> dict:
    """One configuration in this process; returns the measurements."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    from jax_md import partition

    from stabie_jax import units
    from stabie_jax.md import (
        free_space,
        make_simulator,
        masses_from_atomic_numbers,
        periodic_space,
        replica_mesh,
    )
    from stabie_jax.models import make_potential
    from stabie_jax.models.graph import build_graph, dense_edges

    if system in ("aspirin", "ala3"):
        pos, z, source = harness.aspirin_geometry() if system == "aspirin" else _ala3_geometry()
        sp = free_space()
        dt, kT = units.fs_to_internal(0.5), units.kT(500.0)
    else:
        pos, z, box, source = _water_geometry()
        sp = periodic_space(box)
        dt, kT = units.fs_to_internal(1.0), units.kT(300.0)
    n_atoms = len(z)
    pairs = "pairs" in mode  # each pair once (undirected SchNet, OrderedSparse lists)
    model = harness.paper_schnet()
    senders, receivers = dense_edges(n_atoms)
    graph = build_graph(sp.displacement_fn, jnp.asarray(pos), senders, receivers)
    params = model.init(jax.random.PRNGKey(0), jnp.asarray(z), graph)["params"]
    params = jax.tree_util.tree_map(lambda x: x.astype(dtype), params)
    model = model.clone(undirected_edges=pairs)
    use_nl = mode.startswith("nl")
    replica_batch_size = 1 if mode.endswith("-map") else None
    mesh = None
    if mode.endswith("-cores"):
        mesh = replica_mesh(n_rep)
        per_device = n_rep // (mesh.devices.size if mesh is not None else 1)
        replica_batch_size = 2 if per_device > 2 else None
    pot = make_potential(model, z, sp.displacement_fn, use_neighbor_list=use_nl)
    sim = make_simulator(
        pot.energy_fn,
        masses_from_atomic_numbers(z),
        dt=dt,
        kT=kT,
        space=sp,
        cutoff=5.0 if use_nl else None,
        history_every=steps,
        dtype=jnp.dtype(dtype),
        replica_batch_size=replica_batch_size,
        neighbor_format=partition.OrderedSparse if pairs else partition.Sparse,
        mesh=mesh,
    )
    key = jax.random.PRNGKey(1)
    r0 = jnp.asarray(pos, dtype)[None] + 0.01 * jax.random.normal(key, (n_rep, n_atoms, 3), dtype)
    state = sim.init(params, key, r0)
    jax.block_until_ready(state)

    t0 = time.perf_counter()
    out, _ = sim.simulate(params, state, steps, steps)
    jax.block_until_ready(out)
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out, _ = sim.simulate(params, out, steps, steps)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t0)
    best = min(times)
    device_peak = None
    stats = jax.devices()[0].memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        device_peak = stats["peak_bytes_in_use"] / 2**20
    if use_nl:
        capacity = int(out.neighbor.idx.shape[-1])
    else:
        capacity = n_atoms * (n_atoms - 1) // (2 if pairs else 1)
    return dict(
        system=system,
        mode=mode,
        replicas=n_rep,
        atoms=n_atoms,
        edges=capacity,
        source=source,
        steps=steps,
        compile_s=max(first - best, 0.0),
        steps_per_s=steps / best,
        atom_steps_per_s=steps * n_rep * n_atoms / best,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        device_peak_mib=device_peak,
        finite=bool(np.all(np.isfinite(np.asarray(out.positions)))),
        alive=int(np.sum(np.asarray(out.alive))),
        device=str(jax.devices()[0].device_kind),
    )


def _report_row(res: dict, rows: list, args) -> None:
    """Append, print, and rewrite the outputs (a run stopped early keeps what it measured)."""
    rows.append(res)
    print(
        f"{res['system']:8s} {res['mode']:5s} R={res['replicas']:4d}  "
        f"compile {res['compile_s']:6.1f} s  {res['steps_per_s']:9.1f} steps/s  "
        f"{res['atom_steps_per_s']:11.0f} atom-steps/s  RSS {res['peak_rss_mib']:7.0f} MiB",
        flush=True,
    )
    if args.output:
        write_table(rows, args)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", default="1,8,32,128,256", help="aspirin R values")
    parser.add_argument("--ala3-replicas", default="1,8,32", help="Ac-Ala3-NHMe R ('' = none)")
    parser.add_argument("--water-replicas", default="1,8", help="water R values ('' = none)")
    parser.add_argument(
        "--modes",
        default="dense,pairs,nl",
        help="molecule edge modes: dense, pairs (each pair once), nl, nl-pairs, *-map, *-cores",
    )
    parser.add_argument("--water-modes", default="nl,nl-pairs", help="water edge modes")
    parser.add_argument("--steps", type=int, default=100, help="MD steps per timed call")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls (best is kept)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--output", default=None, help="write a markdown table here")
    parser.add_argument("--plot", default=None, help="write throughput-vs-R/atoms PNG here")
    parser.add_argument("--json", default=None, help="write the raw rows as JSON here")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="measure every configuration in this process (one runtime start; faster on a GPU "
        "machine; peak memory becomes a high-water mark)",
    )
    parser.add_argument("--single", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.single:
        system, mode, n_rep = args.single.split(":")
        result = run_single(system, mode, int(n_rep), args.steps, args.repeats, args.dtype)
        print("RESULT " + json.dumps(result))
        return

    configs = []
    for mode in filter(None, args.modes.split(",")):
        for r in filter(None, args.replicas.split(",")):
            configs.append(("aspirin", mode, int(r)))
        for r in filter(None, args.ala3_replicas.split(",")):
            configs.append(("ala3", mode, int(r)))
    for mode in filter(None, args.water_modes.split(",")):
        for r in filter(None, args.water_replicas.split(",")):
            configs.append(("water", mode, int(r)))

    rows = []
    for system, mode, n_rep in configs:
        if args.in_process:
            res = run_single(system, mode, n_rep, args.steps, args.repeats, args.dtype)
            _report_row(res, rows, args)
            continue
        cmd = [
            sys.executable,
            __file__,
            "--single",
            f"{system}:{mode}:{n_rep}",
            "--steps",
            str(args.steps),
            "--repeats",
            str(args.repeats),
            "--dtype",
            args.dtype,
        ]
        env = dict(os.environ)
        if mode.endswith("-cores"):
            flag = f"--xla_force_host_platform_device_count={os.cpu_count()}"
            env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}".strip()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            print(f"{system} {mode} R={n_rep}: FAILED\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        _report_row(json.loads(line[0][7:]), rows, args)

    if args.plot and rows:
        plot_scaling(rows, args.plot)


def plot_scaling(rows, path):
    """Two panels: atom-steps/s vs R (per system and edge mode) and vs atoms at each R."""
    from stabie_jax.evaluation.plots import plot_log_log_panels

    def curve(keep, x_key):
        points = sorted((r[x_key], r["atom_steps_per_s"]) for r in rows if keep(r))
        return [x for x, _ in points], [y for _, y in points]

    by_replicas = {
        f"{system}, {mode}": curve(
            lambda r, s=system, m=mode: (r["system"], r["mode"]) == (s, m), "replicas"
        )
        for system, mode in sorted({(r["system"], r["mode"]) for r in rows})
    }
    # Edge lists as families: each pair once (pairs, nl-pairs) or both directions (dense, nl),
    # so the 192-atom water (neighbour lists) lines up with the dense molecules.
    family = {
        r["mode"]: ("pair-once" if "pairs" in r["mode"] else "directed")
        + (", device per core" if r["mode"].endswith("-cores") else "")
        for r in rows
    }
    by_atoms = {}
    for fam in sorted(set(family.values())):
        for n_rep in sorted({r["replicas"] for r in rows}):
            pts = curve(
                lambda r, f=fam, n=n_rep: (
                    family[r["mode"]] == f and r["replicas"] == n and "map" not in r["mode"]
                ),
                "atoms",
            )
            if len(pts[0]) > 1:
                by_atoms[f"{fam}, R = {n_rep}"] = pts
    plot_log_log_panels(
        [
            dict(
                title="throughput vs replicas (SchNet 64×6)",
                xlabel="replicas R",
                ylabel="atom-steps / s",
                series=by_replicas,
            ),
            dict(
                title="throughput vs system size",
                marker="s-",
                ylabel="atom-steps / s",
                xlabel="atoms per replica (21 aspirin, 42 Ac-Ala3, 192 water)",
                series=by_atoms,
            ),
        ],
        path,
    )
    print(f"wrote {path}")


def write_table(rows, args):
    device = rows[0]["device"]
    lines = [
        "# MD throughput (stabie_jax.md, SchNet 64×6)",
        "",
        *harness.environment_lines(extra=f"device {device}"),
        f"- dtype {args.dtype}; SchNet randomly initialised (same cost as trained); "
        "`edges` = dense pair count or neighbour-list capacity",
        "",
        "| system | edges mode | R | atoms | edges/replica | compile s | steps/s | atom-steps/s "
        "| peak RSS MiB | device peak MiB | geometry |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        dev = "-" if r["device_peak_mib"] is None else f"{r['device_peak_mib']:.0f}"
        lines.append(
            f"| {r['system']} | {r['mode']} | {r['replicas']} | {r['atoms']} | {r['edges']} | "
            f"{r['compile_s']:.1f} | {r['steps_per_s']:.1f} | {r['atom_steps_per_s']:.0f} | "
            f"{r['peak_rss_mib']:.0f} | {dev} | {r['source']} |"
        )
    path = pathlib.Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
