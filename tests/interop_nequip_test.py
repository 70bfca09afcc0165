"""Importing the StABlE paper's nequip (v0.5) NequIP checkpoint (stabie_jax.interop.torch_nequip).

* on the 5 staged MD22 Ac-Ala3-NHMe frames, the imported model predicts the DFT labels about as
  well as a trained model should (needs torch and the staged files);
* where the ``nequip`` 0.5 package (with e3nn 0.4) is importable, energies and forces equal
  nequip's own model on the same checkpoint to <= 1e-5 eV and eV/Å in float64.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import shared_file

torch = pytest.importorskip("torch", reason="checkpoint import needs the 'torch' extra")

from stabie_jax.interop.torch_nequip import import_nequip_checkpoint  # noqa: E402
from stabie_jax.units import kcal_per_mol_to_ev  # noqa: E402


def _frames():
    import ase.io

    path = shared_file("md22_ac_ala3_nhme", "md22_Ac-Ala3-NHMe_5frames.xyz")
    return ase.io.read(path, index=":")


def _import():
    d = ("stable_checkpoints", "nequip_ac_ala3_nhme")
    pth = shared_file(*d, "pretrained_25percent.pth")
    cfg = shared_file(*d, "pretrained_config.yaml")
    atoms = _frames()
    return atoms, import_nequip_checkpoint(pth, cfg, atoms[0].numbers)


def _evaluate(potential, params, positions):
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
        fn = jax.jit(jax.vmap(lambda r: (potential.energy_fn(p64, r), potential.force_fn(p64, r))))
        e, f = fn(jnp.asarray(positions, jnp.float64))
        return np.asarray(e), np.asarray(f)


def test_imported_nequip_predicts_md22_labels():
    atoms, (potential, params, metadata) = _import()
    assert metadata.kind == "nequip" and metadata.hparams["species"] == (1, 6, 7, 8)
    positions = np.stack([a.positions for a in atoms])
    energies, forces = _evaluate(potential, params, positions)
    e_label = kcal_per_mol_to_ev(np.array([a.info["Energy"] for a in atoms]))
    f_label = kcal_per_mol_to_ev(np.stack([a.get_forces() for a in atoms]))
    # Trained to ~meV/atom: energies within 0.2 eV of -26917 eV, forces within 0.1 eV/Å MAE.
    assert np.max(np.abs(energies - e_label)) < 0.2
    assert np.mean(np.abs(forces - f_label)) < 0.1
    # Relative energies between frames are reproduced much better than random (spread ~0.3 eV).
    assert np.std((energies - e_label) - np.mean(energies - e_label)) < 0.05


def test_imported_nequip_equals_nequip_package():
    pytest.importorskip("e3nn", reason="reference needs e3nn (torch) 0.4")
    nequip = pytest.importorskip("nequip", reason="reference needs the nequip 0.5 package")
    if not nequip.__version__.startswith("0.5"):
        pytest.skip(f"reference needs nequip 0.5.x, found {nequip.__version__}")
    import yaml
    from nequip.data import AtomicData, AtomicDataDict
    from nequip.data.transforms import TypeMapper
    from nequip.model import model_from_config
    from nequip.utils import Config

    atoms, (potential, params, _) = _import()
    d = ("stable_checkpoints", "nequip_ac_ala3_nhme")
    with open(shared_file(*d, "pretrained_config.yaml")) as f:
        cfg = yaml.load(f, Loader=yaml.UnsafeLoader)
    cfg = {k: v for k, v in cfg.items() if k not in ("train_idcs", "val_idcs")}
    cfg["default_dtype"] = "float64"
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = model_from_config(Config.from_dict(cfg), initialize=False)
        blob = torch.load(shared_file(*d, "pretrained_25percent.pth"), map_location="cpu")
        model.load_state_dict({k[len("model.") :]: v.double() for k, v in blob.items()})
        model = model.double().eval()
        mapper = TypeMapper(
            chemical_symbol_to_type={s: i for i, s in enumerate(cfg["chemical_symbols"])}
        )
        ref_e, ref_f = [], []
        for a in atoms:
            data = mapper(AtomicData.from_ase(a, r_max=float(cfg["r_max"])))
            out = model(AtomicData.to_AtomicDataDict(data))
            ref_e.append(out[AtomicDataDict.TOTAL_ENERGY_KEY].item())
            ref_f.append(out[AtomicDataDict.FORCE_KEY].detach().numpy())
    finally:
        torch.set_default_dtype(default)
    energies, forces = _evaluate(potential, params, np.stack([a.positions for a in atoms]))
    np.testing.assert_allclose(energies, ref_e, rtol=0, atol=1e-5)
    np.testing.assert_allclose(forces, np.stack(ref_f), rtol=0, atol=1e-5)
