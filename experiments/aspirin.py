"""Aspirin (MD17) + SchNet at 500 K: pretrain → StABlE → evaluate.

python -m experiments.aspirin --config=experiments/configs/aspirin.py:smoke
"""

from experiments import app  # the model code is imported after the device flags

if __name__ == "__main__":
    app.launch("experiments.molecule:run", "experiments/configs/aspirin.py")
