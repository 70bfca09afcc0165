"""Cost of the Boltzmann-estimator routes vs one batched forward+backward (SchNet, aspirin).

For N sampled aspirin configurations and the paper's h(r) observable (all ordered pair distances,
Gaussian-smeared, 500 bins on [1e-6, 10] Å, σ = 0.01 Å, normalised to sum 100) with an MSE loss,
this times and sizes the gradient of the loss w.r.t. SchNet's parameters by:

* ``fwd+bwd``: baseline, ``jax.grad(Σ_i U_θ(x_i))`` over the same N samples (one batched
  forward+backward; not an estimator, just the reference cost);
* ``jacobian``: :func:`stabie_jax.estimator.boltzmann_jacobian` (full ``[n_obs, n_params]``
  Jacobian from N per-sample gradients, returned as an output), contracted with ``∂L/∂⟨g⟩``;
* ``jacobian B=40``: the same with minibatches of 40 (per-sample gradients for one batch at a
  time, ``lax.scan``);
* ``flat B=40``: ``jax.value_and_grad`` of the loss of
  :func:`stabie_jax.estimator.boltzmann_expectation` (``batch_size=40``): one backward pass of a
  weighted energy sum;
* ``flat B=40 chunk=40``: the same with the backward pass scanned over chunks of 40 samples.

Time: median wall-clock of ``--repeats`` calls of the jitted function after one warm-up call
(compilation excluded). Memory: XLA's compiled memory analysis
(``jax.jit(f).lower(...).compile().memory_analysis()``): ``temp`` = the temporary buffers XLA
allocates for the computation (activations, per-sample gradients, Jacobian), and ``peak`` =
arguments + outputs + temp - aliased bytes. This is the static allocation plan, not a measured
RSS; on CPU it is the best available per-function number.

Usage::

    python benchmarks/estimator.py                      # N in {40, 160, 640, 2560}
    python benchmarks/estimator.py --max-n 160          # quick run
    python benchmarks/estimator.py --output benchmarks/results/estimator_cpu.md
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import time

import harness  # benchmarks/harness.py: this script's folder is on sys.path
import jax
import jax.numpy as jnp
import numpy as np

from stabie_jax import estimator as est
from stabie_jax import units

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASPIRIN_GLOB = os.path.join(REPO_ROOT, "..", "shared", "data", "rmd17_aspirin", "*_test_0*.npz")
ASPIRIN_Z = [6, 6, 6, 6, 6, 6, 6, 8, 8, 8, 6, 6, 8, 1, 1, 1, 1, 1, 1, 1, 1]


def load_positions(n_max: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Up to ``n_max`` rMD17 aspirin frames (Å) and atomic numbers; synthetic if data absent."""
    files = sorted(glob.glob(ASPIRIN_GLOB))
    frames, z = [], None
    for path in files:
        with np.load(path) as data:
            frames.append(np.asarray(data["coords"], np.float32))
            z = np.asarray(data["nuclear_charges"], np.int32)
        if sum(len(f) for f in frames) >= n_max:
            break
    if frames and sum(len(f) for f in frames) >= n_max:
        source = "rMD17 aspirin test frames (../shared/data/rmd17_aspirin)"
        return np.concatenate(frames)[:n_max], z, source
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)[:21]
    base = 1.4 * grid.astype(np.float32)
    positions = base + 0.05 * rng.normal(size=(n_max, 21, 3)).astype(np.float32)
    return positions, np.asarray(ASPIRIN_Z, np.int32), "SYNTHETIC 21-atom frames (data absent)"


def build_model(atomic_numbers):
    """SchNet (paper aspirin settings) wrapped by make_potential; a labelled stand-in if absent."""
    from jax_md import space

    from stabie_jax.models import make_potential

    try:
        from stabie_jax.models.schnet import SchNet

        module, label = (
            SchNet(),
            "stabie_jax.models.schnet.SchNet (64/64, 6 interactions, 25 G, 5 Å)",
        )
    except ImportError:
        import flax.linen as nn

        class StandIn(nn.Module):
            """NOT SchNet: a pair MLP of about SchNet's parameter count (118k)."""

            @nn.compact
            def __call__(self, atomic_numbers, graph):
                r = graph.edge_lengths
                rbf = jnp.exp(-((r[:, None] - jnp.linspace(0.0, 5.0, 25)) ** 2) / 0.1)
                h = rbf
                for width in (192, 192, 192, 64):
                    h = nn.softplus(nn.Dense(width)(h))
                pair = nn.Dense(1)(h)[:, 0] * graph.edge_mask
                n = atomic_numbers.shape[0]
                return jax.ops.segment_sum(pair, graph.receivers, num_segments=n)

        module, label = StandIn(), "STAND-IN pair MLP (stabie_jax.models.schnet not found)"
    potential = make_potential(module, atomic_numbers, space.free()[0])
    return module, potential, label


def h_r(positions, n_bins=500, r_max=10.0, sigma=0.01):
    """Paper's h(r): all ordered pair distances, Gaussian-smeared, normalised to sum 100."""
    n = positions.shape[0]
    i, j = np.where(~np.eye(n, dtype=bool))
    r = jnp.sqrt(jnp.sum((positions[i] - positions[j]) ** 2, axis=-1))
    centres = jnp.linspace(1e-6, r_max, n_bins)
    hist = jnp.sum(jnp.exp(-0.5 * ((r[:, None] - centres) / sigma) ** 2), axis=0)
    return 100.0 * hist / jnp.sum(hist)


def measure(fn, args, repeats, run=True):
    """(median wall s, median process-CPU s, temp bytes, peak bytes); times None if not run."""
    compiled = jax.jit(fn).lower(*args).compile()
    mem = compiled.memory_analysis()
    temp = mem.temp_size_in_bytes
    peak = (
        mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        + mem.temp_size_in_bytes
        - mem.alias_size_in_bytes
    )
    if not run:
        return None, None, temp, peak
    jax.block_until_ready(compiled(*args))
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(compiled(*args))
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu), temp, peak


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[40, 160, 640, 2560])
    parser.add_argument("--max-n", type=int, default=None, help="drop sizes above this N")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=40)
    parser.add_argument(
        "--time-max-n",
        type=int,
        default=640,
        help="above this N only compile and report memory (no run: the batched baseline needs "
        "about 3.6 MiB of activations per sample)",
    )
    parser.add_argument("--output", default=None, help="write a markdown table here")
    parser.add_argument("--plot", default=None, help="write cost-vs-N PNG here")
    args = parser.parse_args(argv)
    sizes = [n for n in args.sizes if args.max_n is None or n <= args.max_n]
    b = args.batch_size

    positions_all, z, source = load_positions(max(sizes))
    module, potential, label = build_model(z)
    params = jax.jit(module.init)(
        jax.random.key(0), jnp.asarray(z), _graph(positions_all[0], potential)
    )["params"]
    n_params = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(params))
    kT = units.kT(500.0)
    energy_fn = potential.energy_fn
    g_ref = jax.jit(jax.vmap(h_r))(jnp.asarray(positions_all[:40])).mean(0) * 1.01

    def loss_of(mean_g):
        return jnp.mean((mean_g - g_ref) ** 2)

    def baseline(p, x):
        return jax.value_and_grad(lambda q: jnp.sum(jax.vmap(energy_fn, (None, 0))(q, x)))(p)

    def jac_route(batch):
        jac_fn = est.boltzmann_jacobian(energy_fn, h_r, kT, batch_size=batch)

        def grad_fn(p, x):
            # ⟨g⟩ for v = ∂L/∂⟨g⟩, in chunks of B like the estimator itself (else the [N, pairs,
            # bins] smearing intermediate would dominate the minibatched route's memory).
            g = jax.vmap(h_r)(x) if batch is None else jax.lax.map(h_r, x, batch_size=batch)
            mean_g = jnp.mean(g, axis=0)
            v = jax.grad(loss_of)(mean_g)
            jac = jac_fn(p, x)
            grad = jax.tree_util.tree_map(lambda j: jnp.tensordot(v, j, 1), jac)
            # The Jacobian is returned too (what this route is for), so XLA cannot contract
            # vᵀJ first and skip materialising J.
            return loss_of(mean_g), grad, jac

        return grad_fn

    def flat_route(batch, chunk):
        expect = est.boltzmann_expectation(energy_fn, h_r, kT, batch_size=batch, chunk_size=chunk)
        return lambda p, x: jax.value_and_grad(lambda q: loss_of(expect(q, x)))(p)

    routes = [
        ("fwd+bwd (baseline)", lambda n: baseline),
        ("jacobian", lambda n: jac_route(None)),
        (f"jacobian B={b}", lambda n: jac_route(b)),
        (f"flat B={b}", lambda n: flat_route(b, None)),
        (f"flat B={b} chunk={b}", lambda n: flat_route(b, b)),
    ]
    rows = []
    for n in sizes:
        x = jnp.asarray(positions_all[:n])
        run = n <= args.time_max_n
        base = None
        for name, make in routes:
            wall, cpu, temp, peak = measure(make(n), (params, x), args.repeats, run=run)
            if base is None:
                base = (wall, cpu, peak)
            ratio = lambda a, b: None if a is None else a / b
            rows.append(
                (
                    n,
                    name,
                    wall,
                    ratio(wall, base[0]),
                    cpu,
                    ratio(cpu, base[1]),
                    temp,
                    peak,
                    peak / base[2],
                )
            )
            print(_row(rows[-1]), flush=True)
        if args.output:  # after every N, so a run stopped early keeps what it measured
            os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
            with open(args.output, "w") as fh:
                fh.write(_markdown(rows, label, source, n_params, args, b))

    print(_markdown(rows, label, source, n_params, args, b))
    if args.plot:
        plot_cost(rows, args.plot)


def plot_cost(rows, path):
    """Wall time and XLA peak memory vs number of samples N, one line per route."""
    from stabie_jax.evaluation.plots import plot_log_log_panels

    routes = list(dict.fromkeys(r[1] for r in rows))
    ran = {route: [r for r in rows if r[1] == route and r[2] is not None] for route in routes}
    timed = {route: ([r[0] for r in rs], [r[2] for r in rs]) for route, rs in ran.items() if rs}
    memory = {
        route: (
            [r[0] for r in rows if r[1] == route],
            [r[7] / 2**20 for r in rows if r[1] == route],
        )
        for route in routes
    }
    plot_log_log_panels(
        [
            dict(
                title="estimator cost vs N (SchNet, aspirin, h(r))",
                xlabel="MD samples N",
                ylabel="wall time per call (s)",
                series=timed,
            ),
            dict(
                title="memory vs N",
                xlabel="MD samples N",
                ylabel="XLA peak memory (MiB)",
                marker="s-",
                series=memory,
            ),
        ],
        path,
    )
    print(f"wrote {path}")


def _graph(positions, potential):
    from jax_md import space

    from stabie_jax.models.graph import build_graph, dense_edges

    senders, receivers = dense_edges(positions.shape[0])
    return build_graph(space.free()[0], jnp.asarray(positions), senders, receivers)


def _row(row):
    n, name, wall, wall_ratio, cpu, cpu_ratio, temp, peak, peak_ratio = row
    ms = lambda t: "not run" if t is None else f"{t * 1e3:.0f}"
    x = lambda r: "" if r is None else f"{r:.2f}"
    return (
        f"| {n} | {name} | {ms(wall)} | {x(wall_ratio)} | {ms(cpu)} | {x(cpu_ratio)} | "
        f"{temp / 2**20:.1f} | {peak / 2**20:.1f} | {peak_ratio:.2f} |"
    )


def _markdown(rows, label, source, n_params, args, b):

    lines = [
        "# Boltzmann-estimator cost: time and memory vs one batched forward+backward",
        "",
        *harness.environment_lines(),
        f"- model: {label}, {n_params} parameters, float32, dense edges (all 420 ordered pairs)",
        f"- samples: {source}",
        "- observable: h(r), 500 bins on [1e-6, 10] Å, σ = 0.01 Å; loss: MSE to a fixed g_ref",
        f"- time: median of {args.repeats} calls after warm-up (compile excluded), wall-clock "
        "and process CPU time (all threads; less sensitive to other jobs on a shared machine); "
        f"ratio = / fwd+bwd; N > {args.time_max_n}: compiled for memory analysis only, not run",
        "- memory: XLA compiled memory analysis; temp = temporary buffers, peak = arguments + "
        "outputs + temp - aliases (static allocation plan, not RSS); ratio = peak / fwd+bwd peak",
        "",
        "| N | route | wall (ms) | wall ratio | CPU (ms) | CPU ratio | temp (MiB) | peak (MiB) "
        "| peak ratio |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [_row(r) for r in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
