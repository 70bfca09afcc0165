"""Aspirin (MD17) + SchNet at 500 K: pretrain → StABlE → evaluate.

python -m experiments.aspirin --config=experiments/configs/aspirin.py:smoke
"""

from experiments import app, molecule

if __name__ == "__main__":
    app.launch(molecule.run, "experiments/configs/aspirin.py")
