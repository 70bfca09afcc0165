"""Sample reuse by reweighting vs the authors' one step per simulation, side by side.

  python benchmarks/sample_reuse.py --model runs/i19/cpu/model_pretrained --workdir runs/reuse \
      --thresholds 0,0.5,0.8,0.9 --minutes 9 --output benchmarks/results/sample_reuse_cpu.md

Every variant runs the StABlE stage of ``experiments.aspirin`` (config ``:cpu`` unless
``--config`` says otherwise: real rMD17 aspirin, 700 K, 32 replicas, the paper's SchNet and
estimator) from the same pretrained model, seed and initial conditions, one after the other in
child processes of this one, each with the same wall-clock budget (``stabie.max_wall_hours``).
Threshold 0 is the authors' rule (``stabie.reuse_min_neff = 0``); the others reuse each
simulation's frames while Kish ``N_eff/N`` stays above the threshold (at most
``--max_reuse_steps`` extra steps). Then one evaluation run compares all models on the same
held-out test structures with the same momenta (``stabie_jax.workflows.evaluate_molecule_models``:
the baseline is the pretrained model, the authors'-rule model is "StABlE", the reuse models are
extra models).

Reported, per variant, from ``stabie/metrics.jsonl``: simulations (learning epochs), optimizer
steps, MD steps (all replicas), the unstable fraction measured by each learning simulation, the
wall clock until the measured unstable fraction first reaches ``--target`` (and the end of the
first learning phase, when it ends), reuse steps per simulation and the N_eff fractions; from
the evaluation, median/mean stable time, the paired Wilcoxon/Fisher tests vs the baseline and
the energy/force test MAE. A plot of unstable fraction vs wall clock goes next to the report.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import subprocess
import sys
import time

import harness  # benchmarks/harness.py: this script's folder is on sys.path
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = "../shared/data/rmd17_aspirin"


def _name(threshold: float) -> str:
    return "authors" if threshold == 0 else f"reuse_{threshold:g}"


def _run(cmd: list[str], log: pathlib.Path) -> float:
    started = time.time()
    with open(log, "w") as fh:
        subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    return time.time() - started


def _base_cmd(args) -> list[str]:
    data = []
    if args.data:
        data = [
            f"--config.data.source={args.data}/rmd17_aspirin_train_0*.npz",
            f"--config.data.test_source={args.data}/rmd17_aspirin_test_0*.npz",
        ]
    return [
        sys.executable,
        "-m",
        "experiments.aspirin",
        f"--config={args.config}",
        f"--config.init_checkpoint={pathlib.Path(args.model).resolve()}",
        *data,
        f"--host_devices={args.host_devices}",
        f"--config.md.replica_batch_size={args.replica_batch_size}",
        "--config.progress=false",
        *args.overrides,
    ]


def summarise(records: list[dict], target: float, steps_per_epoch: int, n_replicas: int) -> dict:
    learning = [r for r in records if r["phase"] == "learning"]
    t0 = next((r["wall_seconds"] for r in records if r["phase"] == "simulation"), 0.0)
    hit = next((r for r in learning if r["unstable_fraction"] <= target), None)
    end = next((r for r in learning if "learning_end" in r), None)
    reuse = [r.get("reuse_steps", 0) for r in learning]
    fractions = [f for r in learning for f in r.get("reuse_n_eff_fraction", [])]
    return {
        "simulations": len(records),
        "learning_simulations": len(learning),
        "optimizer_steps": records[-1]["optimizer_steps"] if records else 0,
        "md_steps": len(records) * steps_per_epoch * n_replicas,
        "wall_seconds": records[-1]["wall_seconds"] if records else 0.0,
        "first_unstable_fraction": learning[0]["unstable_fraction"] if learning else None,
        "last5_unstable_fraction": float(np.mean([r["unstable_fraction"] for r in learning[-5:]]))
        if learning
        else None,
        "min_unstable_fraction": min((r["unstable_fraction"] for r in learning), default=None),
        "wall_to_target_s": None if hit is None else hit["wall_seconds"] - t0,
        "learning_end": None if end is None else (end["learning_end"], end["wall_seconds"] - t0),
        "reuse_steps_mean": float(np.mean(reuse)) if reuse else 0.0,
        "n_eff_fraction_min": min(fractions, default=None),
        "n_eff_fraction_median": float(np.median(fractions)) if fractions else None,
        "reuse_ends": sorted({r.get("reuse_end", "") for r in learning} - {""}),
    }


def _plot(curves: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, recs in curves.items():
        learn = [r for r in recs if r["phase"] == "learning"]
        ax.plot(
            [r["wall_seconds"] / 60 for r in learn],
            [r["unstable_fraction"] for r in learn],
            marker="o",
            ms=3,
            label=name,
        )
    ax.set_xlabel("wall clock (min)")
    ax.set_ylabel("unstable fraction (measured, learning simulations)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="pretrained stabie_jax model checkpoint")
    p.add_argument("--workdir", required=True)
    p.add_argument("--config", default="experiments/configs/aspirin.py:cpu")
    p.add_argument(
        "--data", default=DATA, help="folder with the rMD17 aspirin npz shards ('' = the config's)"
    )
    p.add_argument("--thresholds", default="0,0.5,0.8,0.9")
    p.add_argument("--minutes", type=float, default=9.0, help="StABlE wall budget per variant")
    p.add_argument("--max_reuse_steps", type=int, default=10)
    p.add_argument("--target", type=float, default=0.8, help="unstable fraction to reach")
    p.add_argument("--eval_length_ps", type=float, default=5.0)
    p.add_argument("--host_devices", type=int, default=2)
    p.add_argument("--replica_batch_size", type=int, default=2)
    p.add_argument("--skip_eval", action="store_true")
    p.add_argument("--output", default="")
    p.add_argument("overrides", nargs="*", help="further --config.x=y flags for every run")
    args = p.parse_args(argv)

    work = pathlib.Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    base = _base_cmd(args)
    curves, rows = {}, {}
    for thr in thresholds:
        name = _name(thr)
        wd = work / name
        cmd = base + [
            f"--workdir={wd}",
            "--config.stages=stabie",
            f"--config.stabie.reuse_min_neff={thr}",
            f"--config.stabie.max_reuse_steps={args.max_reuse_steps}",
            f"--config.stabie.max_wall_hours={args.minutes / 60.0}",
            "--config.stabie.max_epochs=1000",
        ]
        wall = _run(cmd, work / f"{name}.log")
        records = [json.loads(line) for line in open(wd / "stabie" / "metrics.jsonl")]
        config = json.loads((wd / "config.json").read_text())
        s = config["stabie"]
        curves[name] = records
        rows[name] = {
            "process_wall_s": wall,
            **summarise(records, args.target, int(s["steps_per_epoch"]), int(s["n_replicas"])),
        }
        print(name, json.dumps(rows[name]), flush=True)

    evaluation = {}
    if not args.skip_eval:
        names = [_name(t) for t in thresholds]
        reference = names[0]
        extra = ",".join(f"{n}={work / n / 'model_stabie'}" for n in names[1:])
        cmd = base + [
            f"--workdir={work / reference}",
            "--config.stages=evaluate",
            f"--config.evaluate.length_ps={args.eval_length_ps}",
            "--config.evaluate.transfer_temperatures_kelvin=()",
            f"--config.evaluate.extra_models={extra}",
        ]
        _run(cmd, work / "evaluate.log")
        evaluation = json.loads((work / reference / "summary.json").read_text())["evaluation"]
    _plot(curves, work / "unstable_fraction_vs_wall.png")
    result = {"variants": rows, "evaluation": evaluation}
    (work / "sample_reuse.json").write_text(json.dumps(result, indent=2, default=str))
    report = _report(args, rows, evaluation)
    print(report)
    if args.output:
        pathlib.Path(args.output).write_text(report)


def _fmt(x, spec=".3f"):
    return "–" if x is None else format(x, spec)


def _report(args, rows: dict, evaluation: dict) -> str:

    lines = [
        f"# Sample reuse vs the authors' rule ({datetime.date.today().isoformat()})",
        "",
        *harness.environment_lines(),
        "",
        "| variant | learning sims | optimizer steps | MD steps | reuse/sim | N_eff/N min "
        f"| f_unst first | f_unst last 5 | f_unst min | wall to f_unst ≤ {args.target:g} (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['learning_simulations']} | {r['optimizer_steps']} | "
            f"{r['md_steps']:,} | {r['reuse_steps_mean']:.1f} | {_fmt(r['n_eff_fraction_min'])} "
            f"| {_fmt(r['first_unstable_fraction'])} | {_fmt(r['last5_unstable_fraction'])} | "
            f"{_fmt(r['min_unstable_fraction'])} | {_fmt(r['wall_to_target_s'], '.0f')} |"
        )
    if evaluation:
        lines += [
            "",
            "Held-out evaluation (same structures and momenta for every model):",
            "",
            "| model | median stable (ps) | mean (ps) | Wilcoxon p vs baseline | "
            "Fisher p | energy MAE (kcal/mol) | offset-removed | force MAE (kcal/mol/Å) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        kcal = 23.060548
        for name, e in evaluation.items():
            if not isinstance(e, dict) or "median_stable_time_ps" not in e:
                continue
            paired = e.get("paired_vs_baseline", {})
            err = e.get("test_errors", {})
            lines.append(
                f"| {name} | {e['median_stable_time_ps']:.2f} | {e['mean_stable_time_ps']:.2f} | "
                f"{_fmt(paired.get('wilcoxon_p'), '.2g')} | {_fmt(paired.get('fisher_p'), '.2g')} "
                f"| {_fmt(err.get('energy_mae_kcal_per_mol'), '.2f')} | "
                f"{_fmt(err.get('energy_mae_offset_removed_ev', 0) * kcal, '.2f')} | "
                f"{_fmt(err.get('forces_mae_kcal_per_mol_per_angstrom'), '.2f')} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
