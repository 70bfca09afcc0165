"""Your own system (``experiments/configs/custom.py``): the data decides the pipeline.

Frames without a periodic cell run :func:`experiments.molecule.run`, frames periodic in all three
directions :func:`experiments.periodic.run`. The config's ``"auto"`` choices are resolved from the
data here, once, logged, and written into the config every stage then reads (and records):

* ``observable.kind``: ``"h_of_r"`` for a molecule; for a periodic system ``"bond_lengths"``
  when its molecules are identical, else ``"rdf"`` (any registered trainable observable may be
  named instead; the pipeline refuses one it cannot train on before any compute);
* ``stabie.criterion``: ``"bond_deviation"`` for a molecule or a single periodic molecule, else
  ``"min_intermolecular"``;
* ``evaluate.criterion``: ``"bond_deviation"`` for a molecule, ``"rdf_mae"`` for a periodic
  system.

Criteria the molecule pipeline does not have (it uses the bond-deviation criterion) are
refused with the key to change.
"""

from __future__ import annotations

import sys

import numpy as np

__all__ = ["is_periodic", "resolve_choices", "run"]

_MOLECULE_AUTO = {"observable.kind": "h_of_r"}
_MOLECULE_CHOICES = {
    "stabie.criterion": "bond_deviation",
    "evaluate.criterion": "bond_deviation",
}


def is_periodic(data_config) -> bool:
    """True when the configured frames have a cell and are periodic in all three directions."""
    from experiments import config_reader
    from stabie_jax import data

    source = str(data_config.source)
    if not source:
        raise ValueError(
            "config.data.source is empty: give your frames, e.g. "
            "--config.data.source=frames.extxyz (extxyz/ASE-readable, npz, or a glob of files)"
        )
    full = data.load_dataset(
        source, download=bool(data_config.download), **config_reader.reader_options(data_config)
    )
    return full.cell is not None and bool(np.all(full.pbc))


def resolve_choices(config, periodic: bool, frames=None) -> dict:
    """Replace the config's ``"auto"`` choices by concrete ones (in place); returns them.

    Args:
      config: the custom config (its values are changed, not its keys).
      periodic: whether the data is periodic (:func:`is_periodic`).
      frames: the loaded :class:`stabie_jax.workflows.PeriodicData` (loaded here if None).

    Raises:
      ValueError: naming the key, when a molecule is given a choice of the periodic pipeline.
    """
    chosen = {}
    if not periodic:
        for key, only in _MOLECULE_CHOICES.items():
            section, name = key.split(".")
            value = str(config[section][name])
            if value not in ("auto", only):
                raise ValueError(
                    f"config.{key} = {value!r}: the frames have no periodic cell, so they run "
                    f"the molecule pipeline, which supports {key} = {only!r} only (set it or "
                    "leave 'auto')"
                )
            config[section][name] = only
            chosen[key] = only
        for key, value in _MOLECULE_AUTO.items():
            section, name = key.split(".")
            if str(config[section][name]) == "auto":
                config[section][name] = value
            chosen[key] = str(config[section][name])
        return chosen
    if frames is None:
        from experiments import periodic as periodic_lib

        frames = periodic_lib.load_data(config)
    n_molecules = len(np.unique(frames.molecule_ids))
    auto = {
        "observable.kind": "bond_lengths" if frames.neighbourhoods is not None else "rdf",
        "stabie.criterion": "min_intermolecular" if n_molecules > 1 else "bond_deviation",
        "evaluate.criterion": "rdf_mae",
    }
    for key, value in auto.items():
        section, name = key.split(".")
        if str(config[section][name]) == "auto":
            config[section][name] = value
        chosen[key] = str(config[section][name])
    return chosen


def run(config, workdir) -> dict:
    """Resolve the choices from the data and run the molecule or the periodic pipeline."""
    periodic = is_periodic(config.data)
    frames = None
    if periodic:
        from experiments import periodic as periodic_lib

        frames = periodic_lib.load_data(config)
    chosen = resolve_choices(config, periodic, frames)
    text = ", ".join(f"{k} = {v}" for k, v in chosen.items())
    print(f"custom system, {'periodic' if periodic else 'molecule'}: {text}", file=sys.stderr)
    if periodic:
        return periodic_lib.run(config, workdir, frames)
    from experiments import molecule

    return molecule.run(config, workdir)


if __name__ == "__main__":
    from experiments import app  # the model code is imported after the device flags

    app.launch("experiments.custom:run", "experiments/configs/custom.py")
