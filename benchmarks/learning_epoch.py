"""Cost of one paper-scale aspirin learning epoch, part by part.

A learning epoch simulates all R replicas for t steps from their anchors, recording every S-th
frame, then takes ONE optimizer step on ``L_obs + λ·L_QM``. This script builds that epoch
exactly as ``python -m experiments.aspirin --config=experiments/configs/aspirin.py`` does (the
paper config, its replica layout: one CPU device per physical core unless ``--devices``), from a
saved stabie_jax model, and times, on the trajectory of a real learning epoch:

* ``md``: the t-step simulation of the R replicas (frames and energies recorded);
* ``stability``: the bond-length criterion over the recorded frames, on the host;
* ``learning step``: the whole step in the configured layout (both gradients, their
  diagnostics, clip, update, the host checks);
* ``learning epoch``: the driver's whole epoch function (MD + everything else);
* ``obs gradient``: the observable loss's gradient by the Boltzmann estimator over the F·R
  recorded frames (the configured minibatches and VJP form), side by side: on one device in
  one pass (the layout before the split) and split over the devices in chunks
  (``--obs-chunks``);
* ``qm gradient``: ``∇L_QM`` over the training frames, the same way (``--qm-chunks``).

Every part is timed after a first call that compiles it (``first_s``); ``median_s`` of
``--repeats`` calls. The part outside the MD is ``learning epoch − md``.

Usage (from the repository root)::

    python benchmarks/learning_epoch.py --model WORKDIR/model_pretrained \\
        --data '../shared/data/rmd17_aspirin/rmd17_aspirin_train_0*.npz' \\
        --output benchmarks/results/learning_epoch_cpu.md

``--model`` is any stabie_jax model checkpoint of the paper's SchNet (the ``model_pretrained``
folder of an aspirin workdir, or the authors' model imported with ``python -m
stabie_jax.interop import-schnet``). ``--replicas`` and ``--steps`` shrink the problem for a
quick look; ``--set stabie.KEY=VALUE`` overrides any config field.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import host_devices  # benchmarks/host_devices.py: no imports that start JAX

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # repository root


def _set_cpu_devices(argv) -> None:
    """One XLA CPU device per physical core (or ``--devices``), as the entry points do; must
    run before anything imports jax_md, which starts JAX's backend."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--devices", type=int, default=None)
    n = early.parse_known_args(argv)[0].devices
    if n is None:
        from experiments.app import physical_cores

        n = physical_cores()
    host_devices.request(n)


if __name__ == "__main__":
    _set_cpu_devices(sys.argv[1:])

import harness  # noqa: E402  (benchmarks/harness.py: this script's folder is on sys.path)


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def build(args):
    """The paper aspirin problem, settings and initial state, as the entry point builds them,
    and what the loss variants need."""
    import jax

    from experiments import config_reader
    from experiments import molecule as molecule_app
    from experiments.configs import aspirin
    from stabie_jax import checkpoint, data, md, units, workflows
    from stabie_jax import stabie as stabie_lib

    config = aspirin.get_config()
    with config.unlocked():
        config.data.source = args.data
        config.data.labels = args.labels
        config.stabie.n_replicas = args.replicas
        config.stabie.steps_per_epoch = args.steps
        for item in args.set:
            key, _, value = item.partition("=")
            section, field = key.split(".", 1)
            config[section][field] = _parse_value(value)
    d = config.data
    molecule = data.load_molecule_data(
        d.source, test_source=d.test_source, **config_reader.data_split_kwargs(d)
    )
    observable = molecule_app.training_observable(config, molecule)
    inputs = config_reader.molecule_stabie_inputs(config)
    loaded = checkpoint.load_model_checkpoint(args.model)
    problem = workflows.molecule_problem(loaded, molecule, inputs, observable)
    settings, _ = workflows.stabie_settings(
        inputs.learning, units.kT(inputs.temperature_kelvin), observable.size
    )
    state, _ = stabie_lib.init_from_frames(
        problem,
        settings,
        loaded.params,
        molecule.train.positions,
        n_replicas=inputs.n_replicas,
        key=jax.random.PRNGKey(0),
        rescale_velocities=inputs.rescale_velocities,
    )
    if md.splits_replicas(inputs.n_replicas):
        state = stabie_lib.shard_state(state)
    return config, molecule, observable, inputs, loaded, problem, settings, state


def loss_builders(molecule, observable, inputs, loaded):
    """``obs(chunk, mesh)`` and ``qm(chunk, mesh)``: the problem's two losses in a given layout
    (``mesh=None``: one device, as before the split; ``chunk=None``: one pass / QM batches)."""
    import jax.numpy as jnp

    from stabie_jax import checkpoint, losses, md, trajectory_losses, units

    potential = checkpoint.make_model_potential(
        loaded.module, loaded.metadata, md.free_space().displacement_fn
    )
    frames = losses.LabelledFrames.from_dataset(molecule.train)

    def obs(chunk, mesh):
        return trajectory_losses.global_observable_loss(
            potential.energy_fn,
            observable.frame_fn,
            jnp.asarray(observable.reference),
            units.kT(inputs.temperature_kelvin),
            batch_size=inputs.learning.minibatch_size,
            reduction=inputs.learning.observable_reduction,
            vjp=inputs.learning.observable_vjp,
            chunk_size=chunk,
            mesh=mesh,
        )

    def qm(chunk, mesh):
        return losses.make_training_set_qm_loss(
            potential,
            frames,
            batch_size=inputs.qm_batch_size,
            batches_per_step=inputs.qm_batches_per_step,
            energy_weight=inputs.qm_energy_weight,
            force_weight=inputs.qm_force_weight,
            chunk_size=chunk,
            mesh=mesh,
        )

    return obs, qm


def _chunks(text: str) -> list:
    return [None if c in ("0", "none") else int(c) for c in text.split(",") if c]


def measure(args) -> list[dict]:
    import jax
    import numpy as np

    from stabie_jax import md
    from stabie_jax import stabie as stabie_lib
    from stabie_jax.host import to_host
    from stabie_jax.plateau import PlateauState

    config, molecule, observable, inputs, loaded, problem, settings, state = build(args)
    sim = problem.simulator
    params, opt_state = state.train.params, state.train.opt_state
    t, every = settings.steps_per_epoch, settings.sample_every
    rows = []

    def row(name, timing, note=""):
        rows.append({"part": name, **timing, "note": note})
        print(f"{name:>28}: first {timing['first_s']:.2f} s, median {timing['median_s']:.2f} s")

    # A learning epoch starts from anchors with every replica alive.
    anchors = state.anchors
    counters = state.train.counters._replace(phase=np.asarray(stabie_lib.LEARNING, np.int64))
    plateau = PlateauState(settings.learning_rate, float("inf"), 0, 0)
    learning_state = state._replace(
        train=state.train._replace(counters=counters.with_plateau(plateau)), replicas=anchors
    )
    epoch = stabie_lib.make_learning_epoch(problem, settings)
    key = jax.random.PRNGKey(1)
    row(
        "learning epoch",
        harness.time_call(lambda: epoch(learning_state, key)[0].train.params, repeats=args.repeats),
        "the driver's epoch function, configured layout",
    )

    def simulate():
        return sim.simulate(params, anchors, t, every, record_energy=True)

    row("md", harness.time_call(simulate, repeats=args.repeats), f"R = {args.replicas}, t = {t}")
    replicas, traj = simulate()

    def stability():
        return to_host(problem.stable_fn(traj)) & ~to_host(replicas.nonfinite)

    row("stability", harness.time_call(stability, repeats=args.repeats), "bond criterion, host")
    step = stabie_lib.make_learning_step(problem, settings)
    row(
        "learning step",
        harness.time_call(
            lambda: step(params, opt_state, traj, key, settings.learning_rate).params,
            repeats=args.repeats,
        ),
        "configured layout: both gradients, clip, update, host checks",
    )
    n_frames = int(np.prod(traj.alive.shape))
    mesh = md.replica_mesh(args.replicas)
    obs, qm = loss_builders(molecule, observable, inputs, loaded)
    layouts = [(None, None)] + ([(mesh, c) for c in _chunks(args.obs_chunks)] if mesh else [])
    for where, chunk in layouts:
        fn = jax.jit(jax.value_and_grad(obs(chunk, where), has_aux=True))
        row(
            f"obs gradient {'split' if where else 'one device'}, chunk {chunk}",
            harness.time_call(fn, params, traj, key, repeats=args.repeats),
            f"{n_frames} frames, B = {inputs.learning.minibatch_size}",
        )
    if problem.qm_loss_fn is not None:
        layouts = [(None, None)] + ([(mesh, c) for c in _chunks(args.qm_chunks)] if mesh else [])
        for where, chunk in layouts:
            fn = jax.jit(jax.value_and_grad(qm(chunk, where)))
            row(
                f"qm gradient {'split' if where else 'one device'}, chunk {chunk}",
                harness.time_call(fn, params, key, repeats=args.repeats),
                f"{molecule.train.n_frames} frames",
            )
    return rows


def markdown(rows, args) -> str:
    by_name = {r["part"]: r for r in rows}
    total, md = by_name["learning epoch"]["median_s"], by_name["md"]["median_s"]
    lines = [
        "# One aspirin learning epoch, part by part",
        "",
        *harness.environment_lines(),
        "",
        "| part | first call (s) | median (s) | note |",
        "|---|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['part']} | {r['first_s']:.2f} | {r['median_s']:.2f} | {r['note']} |")
    lines += [
        "",
        f"Outside the MD: {total - md:.2f} s = {100 * (total - md) / md:.0f} % of the MD part "
        f"({md:.2f} s).",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="stabie_jax model checkpoint folder")
    parser.add_argument(
        "--data",
        default=str(harness.SHARED / "rmd17_aspirin" / "rmd17_aspirin_train_0*.npz"),
        help="training frames (the config's data.source)",
    )
    parser.add_argument("--labels", default="md17", help="data.labels (rMD17: md17 or rmd17)")
    parser.add_argument("--replicas", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--devices", type=int, default=None, help="CPU devices (default: one per physical core)"
    )
    parser.add_argument(
        "--obs-chunks", default="0,4,16", help="estimator chunks to compare, split (0 = none)"
    )
    parser.add_argument(
        "--qm-chunks", default="40,8,2", help="QM-term chunks to compare, split (0 = batches)"
    )
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    parser.add_argument("--output", default=None, help="write a markdown table here")
    args = parser.parse_args(argv)

    started = time.time()
    rows = measure(args)
    text = markdown(rows, args)
    print(text)
    print(f"({time.time() - started:.0f} s in all)")
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
