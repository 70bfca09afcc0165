"""Stability vs force-error Pareto front over the StABlE learning rate α and QM weight λ.

The paper's Fig. 9 (docs/method.md, Hyperparameter trade-off (alpha, lambda)): higher α and
lower λ buy stability at the cost of force error. This command pretrains once (or takes
``--config.init_checkpoint``), then StABlE-trains and evaluates one model per (α, λ) from the
same pretrained model, and writes ``sweep.json`` and ``pareto_front.png`` into the workdir:

  python -m experiments.sweep --config=experiments/configs/aspirin.py:smoke \\
      --alphas=1e-5,1e-4,1e-3 --lambdas=1,10,100 --workdir=runs/aspirin_sweep

α and λ are in the config's ``stabie.hyperparameter_convention`` (the authors' by default).
"""

from __future__ import annotations

import copy
import json
import pathlib

import numpy as np
from absl import app, flags

from experiments import app as app_lib

FLAGS = flags.FLAGS
flags.DEFINE_list("alphas", ["1e-5", "1e-4", "1e-3"], "StABlE learning rates α to sweep.")
flags.DEFINE_list("lambdas", ["1", "10", "100"], "QM-loss weights λ to sweep.")


def run_sweep(config, workdir, alphas, lambdas) -> dict:
    # Imported here, after app_lib has applied the device flags (see app._resolve).
    from experiments import molecule, stages
    from stabie_jax import evaluation
    from stabie_jax.evaluation import plots

    workdir = pathlib.Path(workdir).expanduser().resolve()
    base = copy.deepcopy(config)
    base.stages = "pretrain"
    if not config.init_checkpoint:
        molecule.run(base, workdir / "pretrained")
        pretrained = str(workdir / "pretrained" / stages.PRETRAINED_MODEL)
    else:
        pretrained = config.init_checkpoint
    points = []
    for alpha in alphas:
        for lam in lambdas:
            cfg = copy.deepcopy(config)
            cfg.init_checkpoint = pretrained
            cfg.stages = "stabie,evaluate"
            cfg.stabie.learning_rate = float(alpha)
            cfg.stabie.qm_weight = float(lam)
            cfg.evaluate.transfer_temperatures_kelvin = ()
            run_dir = workdir / f"alpha_{float(alpha):g}_lambda_{float(lam):g}"
            summary = molecule.run(cfg, run_dir)
            trained = summary["evaluation"]["StABlE"]
            baseline = summary["evaluation"]["baseline"]
            points.append(
                {
                    "alpha": float(alpha),
                    "lambda": float(lam),
                    "median_stable_time_ps": trained["median_stable_time_ps"],
                    "force_mae_ev_per_angstrom": trained["test_errors"][
                        "forces_mae_ev_per_angstrom"
                    ],
                    "baseline_median_stable_time_ps": baseline["median_stable_time_ps"],
                    "baseline_force_mae_ev_per_angstrom": baseline["test_errors"][
                        "forces_mae_ev_per_angstrom"
                    ],
                    "workdir": str(run_dir),
                }
            )
    force = np.array([p["force_mae_ev_per_angstrom"] for p in points])
    stable = np.array([p["median_stable_time_ps"] for p in points])
    front = evaluation.pareto_front_mask(force, stable)
    for p, on_front in zip(points, front, strict=True):
        p["pareto_optimal"] = bool(on_front)
    plots.plot_pareto_front(
        force,
        stable,
        workdir / "pareto_front.png",
        labels=[f"α={p['alpha']:g}, λ={p['lambda']:g}" for p in points],
        baseline=(
            points[0]["baseline_force_mae_ev_per_angstrom"],
            points[0]["baseline_median_stable_time_ps"],
        ),
    )
    result = {"pretrained_model": pretrained, "points": points}
    (workdir / "sweep.json").write_text(json.dumps(result, indent=2))
    return {"wall_seconds": {}, **result}


def main():
    app_lib.define_flags("experiments/configs/aspirin.py")
    run_fn = lambda config, workdir: run_sweep(config, workdir, FLAGS.alphas, FLAGS.lambdas)
    app.run(app_lib.main_for(run_fn, "experiments/configs/aspirin.py"))


if __name__ == "__main__":
    main()
