"""Ac-Ala3-NHMe (MD22) + NequIP at 500 K: pretrain → StABlE → evaluate.

python -m experiments.ala3 --config=experiments/configs/ala3.py:smoke
"""

from experiments import app  # the model code is imported after the device flags

if __name__ == "__main__":
    app.launch("experiments.molecule:run", "experiments/configs/ala3.py")
