"""How far, and in which direction, fine-tuning moved a model's parameters.

python -m experiments.displacement START MODEL [MODEL ...]

Prints ‖θ‖ of START and, for each MODEL (all stabie_jax model checkpoints of the same
architecture, e.g. the authors' imported pretrained and StABlE models and one trained here),
‖θ_MODEL − θ_START‖ and the cosine between every two displacements. Used to check whether a
StABlE run moves the pretrained model in the same direction as another run (the authors').
"""

from __future__ import annotations

import itertools
import json
import sys

import numpy as np
from jax.flatten_util import ravel_pytree

from stabie_jax import checkpoint


def flat_params(directory) -> np.ndarray:
    """All parameters of a model checkpoint as one float64 vector."""
    loaded = checkpoint.load_model_checkpoint(directory)
    return np.asarray(ravel_pytree(loaded.params)[0], np.float64)


def displacements(start: str, models: list[str]) -> dict:
    """``{"start_norm", "norm": {model: ‖Δθ‖}, "cosine": {"a | b": cos}}``.

    Raises:
      ValueError: a model's parameter vector does not have the start's size.
    """
    theta0 = flat_params(start)
    deltas = {}
    for m in models:
        theta = flat_params(m)
        if theta.shape != theta0.shape:
            raise ValueError(
                f"{m}: {theta.size} parameters, {start} has {theta0.size}: not the same "
                "architecture"
            )
        deltas[m] = theta - theta0
    cos = {}
    for a, b in itertools.combinations(models, 2):
        na, nb = np.linalg.norm(deltas[a]), np.linalg.norm(deltas[b])
        cos[f"{a} | {b}"] = float(deltas[a] @ deltas[b] / (na * nb)) if na and nb else None
    return {
        "start_norm": float(np.linalg.norm(theta0)),
        "n_parameters": int(theta0.size),
        "norm": {m: float(np.linalg.norm(d)) for m, d in deltas.items()},
        "cosine": cos,
    }


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    print(json.dumps(displacements(argv[0], argv[1:]), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
