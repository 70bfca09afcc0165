"""64-molecule water + GemNet-T at 300 K (localized estimator): pretrain → StABlE → evaluate.

python -m experiments.water --config=experiments/configs/water.py:smoke
"""

from experiments import app  # the model code is imported after the device flags

if __name__ == "__main__":
    app.launch("experiments.periodic:run", "experiments/configs/water.py")
