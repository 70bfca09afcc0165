"""Reference-data generators: GFN2-xTB molecular MD and flexible-water MD with OpenMM.

The public datasets (MD17/rMD17, MD22, MDsim water) are downloaded through the dataset registry.
This package makes reference data locally instead, so the whole pipeline runs offline and users
can build data for their own molecules:

* :func:`generate_molecule` — NVT MD of one molecule with GFN2-xTB (tblite) via ASE;
* :func:`generate_water` — N flexible SPC/Fw (or flexible SPC/E) waters, cubic periodic box,
  PME, OpenMM;
* :func:`run_resumable` — the chunked, checkpointed, crash-safe writer both use.

Modules: ``molecule`` (xTB via ASE); ``water`` (the water driver) on ``water_model`` (force
fields, box) and ``openmm_engine``; ``resumable``; ``analysis`` (numpy checks); ``validate``
(the validation command line) on ``validation_molecule``, ``validation_water`` and
``validation_report``.

Command line: ``python -m stabie_jax.data.generate molecule|water --help``. The engines
(``tblite``, ``openmm``, optionally ``rdkit``) are the ``reference`` extra and are imported only
when a generator runs; without them a :class:`MissingExtraError` says what to install.

Output: one "stabie npz" file (``np.savez_compressed``) with ``positions`` [F,N,3] Å,
``energies`` [F] eV, ``forces`` [F,N,3] eV/Å, ``velocities`` [F,N,3] Å/fs (on-step),
``atomic_numbers`` [N], ``masses`` [N] amu, ``time_fs`` [F], ``cell``/``pbc`` for periodic
systems, and ``metadata`` (JSON string: method, temperature, seed, versions, command, ...).
"""

from stabie_jax.data.generate.extras import MissingExtraError, require
from stabie_jax.data.generate.molecule import (
    AseEngine,
    embed_smiles,
    generate_molecule,
    load_geometry,
    make_xtb_calculator,
)
from stabie_jax.data.generate.resumable import (
    Engine,
    StopRequested,
    run_resumable,
    sha256_of,
    work_dir_for,
)
from stabie_jax.data.generate.water import (
    WATER_MODELS,
    OpenMMEngine,
    WaterModel,
    box_length_angstrom,
    build_water_system,
    generate_water,
    initial_water_positions,
)

__all__ = [
    "WATER_MODELS",
    "AseEngine",
    "Engine",
    "MissingExtraError",
    "OpenMMEngine",
    "StopRequested",
    "WaterModel",
    "box_length_angstrom",
    "build_water_system",
    "embed_smiles",
    "generate_molecule",
    "generate_water",
    "initial_water_positions",
    "load_geometry",
    "make_xtb_calculator",
    "require",
    "run_resumable",
    "sha256_of",
    "work_dir_for",
]
