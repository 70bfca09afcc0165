"""Importing MDsim / torch_geometric SchNet checkpoints (stabie_jax.interop).

* the StABlE paper's aspirin checkpoints, imported, give torch_geometric's energies and forces on
  rMD17 test frames to <= 1e-5 eV and 1e-5 eV/Å in float64 (staged files, torch_geometric);
* export -> import is the identity on parameters, and torch_geometric loads the exported file
  with ``strict=True`` and reproduces stabie_jax's energies;
* the command line writes a model checkpoint that ``load_model_checkpoint`` reads back;
* malformed checkpoints fail with a ValueError naming the problem.

Everything here skips (with the reason) where torch is absent, as in CI's ``test`` extra.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import shared_file

torch = pytest.importorskip("torch", reason="checkpoint import needs the 'torch' extra")

from stabie_jax import interop  # noqa: E402
from stabie_jax.interop import torch_schnet  # noqa: E402
from stabie_jax.models.registry import init_params  # noqa: E402
from stabie_jax.units import kcal_per_mol_to_ev  # noqa: E402

ASPIRIN_Z = torch_schnet.MD17_ATOMIC_NUMBERS["aspirin"]
FRAMES = [0, 199, 398, 597, 796, 995]


def _float64_energy_forces(potential, params, positions):
    """Energies [F] and forces [F, N, 3] of frames in float64."""
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
        fn = jax.jit(
            jax.vmap(
                lambda r: (potential.energy_fn(p64, r), potential.force_fn(p64, r)),
            )
        )
        e, f = fn(jnp.asarray(positions, dtype=jnp.float64))
        return np.asarray(e), np.asarray(f)


@pytest.mark.parametrize("name", ["pretrained_1k.pt", "stable_trained.pt"])
def test_paper_checkpoint_matches_torch_geometric(name):
    pytest.importorskip("torch_geometric", reason="the reference model is torch_geometric's")
    path = shared_file("stable_checkpoints", "schnet_aspirin", name)
    data = np.load(shared_file("rmd17_aspirin", "rmd17_aspirin_test_01.npz"))
    z = data["nuclear_charges"]
    assert tuple(int(a) for a in z) == ASPIRIN_Z
    positions = data["coords"][FRAMES]

    potential, params, metadata = interop.import_torch_checkpoint(path)
    assert metadata.kind == "schnet" and metadata.atomic_numbers == ASPIRIN_Z
    total_shift = metadata.hparams["energy_shift"] * len(ASPIRIN_Z)
    assert total_shift == pytest.approx(-17637.828125, abs=1e-8)  # normalizer mean, eV
    assert metadata.hparams["energy_scale"] == 1.0  # normalizer std

    energies, forces = _float64_energy_forces(potential, params, positions)
    reference = interop.torch_geometric_reference(interop.read_torch_checkpoint(path))
    for k, r in enumerate(positions):
        e_ref, f_ref = reference(z, r)
        assert abs(energies[k] - e_ref) <= 1e-5
        np.testing.assert_allclose(forces[k], f_ref, rtol=0, atol=1e-5)

    # A meaningful model, not just two equal functions: energies within ~0.2 eV and forces
    # within ~0.3 eV/Å of the original MD17 labels it was trained on.
    e_label = kcal_per_mol_to_ev(data["old_energies"][FRAMES])
    f_label = kcal_per_mol_to_ev(data["old_forces"][FRAMES])
    assert np.mean(np.abs(energies - e_label)) < 0.2
    assert np.mean(np.abs(forces - f_label)) < 0.3
    assert np.std(energies) > 0.05  # the frames do differ


def _random_schnet(seed: int, num_interactions: int = 2, **extra):
    from stabie_jax.models.registry import build_model

    hparams = dict(hidden=16, num_filters=12, num_interactions=num_interactions, num_gaussians=9)
    hparams.update(cutoff=4.0, **extra)
    module = build_model("schnet", **hparams)
    z = (8, 1, 1, 6, 1, 1, 1)
    params = init_params(module, z, jax.random.key(seed))
    # Non-zero biases so that every bias is exercised by the round trip.
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [
        a + 0.1 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys, strict=True)
    ]
    return module, hparams, z, jax.tree_util.tree_unflatten(treedef, leaves)


def _random_geometry(n_atoms: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    while True:
        r = rng.uniform(0.0, 3.5, size=(n_atoms, 3))
        d = np.linalg.norm(r[:, None] - r[None], axis=-1) + 10 * np.eye(n_atoms)
        if d.min() > 0.9:
            return r


def test_export_import_round_trip_and_torch_geometric_loads_export(tmp_path):
    from jax_md import space

    from stabie_jax.checkpoint import ModelMetadata, make_model_potential

    module, hparams, z, params = _random_schnet(seed=3, energy_scale=0.7, energy_shift=-448.0)
    metadata = ModelMetadata(kind="schnet", hparams=hparams, atomic_numbers=z, cutoff_angstrom=4.0)
    path = interop.export_torch_checkpoint(params, metadata, tmp_path / "model.pt")
    potential2, params2, metadata2 = interop.import_torch_checkpoint(path)

    flat1 = jax.tree_util.tree_leaves_with_path(params)
    flat2 = dict(jax.tree_util.tree_leaves_with_path(params2))
    assert len(flat1) == len(flat2)
    for key, leaf in flat1:
        np.testing.assert_array_equal(np.asarray(flat2[key]), np.asarray(leaf))
    assert metadata2.atomic_numbers == z
    assert metadata2.hparams["energy_scale"] == pytest.approx(0.7)

    positions = np.stack([_random_geometry(len(z), s) for s in range(3)])
    potential = make_model_potential(module, metadata, space.free()[0])
    e1, f1 = _float64_energy_forces(potential, params, positions)
    e2, f2 = _float64_energy_forces(potential2, params2, positions)
    np.testing.assert_allclose(e2, e1, rtol=0, atol=1e-9)
    np.testing.assert_allclose(f2, f1, rtol=0, atol=1e-9)
    assert np.abs(f1).max() > 1e-3  # forces are not trivially zero

    pytest.importorskip("torch_geometric", reason="the reference model is torch_geometric's")
    reference = interop.torch_geometric_reference(interop.read_torch_checkpoint(path))
    for k, r in enumerate(positions):
        e_ref, f_ref = reference(z, r)
        assert e_ref == pytest.approx(e1[k], abs=1e-9)
        np.testing.assert_allclose(f_ref, f1[k], rtol=0, atol=1e-9)


def test_export_combines_module_and_metadata_normalisers():
    from stabie_jax.checkpoint import ModelMetadata

    hparams = dict(hidden=16, num_interactions=1, energy_scale=2.0, energy_shift=0.1)
    metadata = ModelMetadata("schnet", hparams, (8, 1, 1, 6, 1, 1, 1), 5.0, 0.5, {1: -1.0, 6: -2.0})
    cfg = torch_schnet.config_from_metadata(metadata)
    # E = 0.5 * sum_i (2 u_i + 0.1) + (5 * -1 - 2 + 0)  =  1.0 * sum u + (0.35 - 7)
    assert cfg.energy_scale == pytest.approx(1.0)
    assert cfg.energy_shift == pytest.approx(0.5 * 0.1 * 7 - 7.0)
    assert (cfg.hidden_channels, cfg.num_interactions) == (16, 1)


def test_command_line_writes_loadable_model_checkpoint(tmp_path, capsys):
    from jax_md import space

    from stabie_jax.checkpoint import ModelMetadata, load_model_checkpoint, make_model_potential
    from stabie_jax.interop.__main__ import main

    module, hparams, z, params = _random_schnet(seed=5, num_interactions=1, energy_shift=-20.0)
    metadata = ModelMetadata("schnet", hparams, z, 4.0)
    pt = interop.export_torch_checkpoint(params, metadata, tmp_path / "model.pt")

    out = tmp_path / "imported"
    assert main(["import-schnet", str(pt), "--out", str(out)]) == 0
    assert "written" in capsys.readouterr().out
    loaded = load_model_checkpoint(out)
    assert loaded.metadata.atomic_numbers == z
    positions = _random_geometry(len(z), 11)[None]
    e_loaded, f_loaded = _float64_energy_forces(
        make_model_potential(loaded.module, loaded.metadata, space.free()[0]),
        loaded.params,
        positions,
    )
    e_orig, f_orig = _float64_energy_forces(
        make_model_potential(module, metadata, space.free()[0]), params, positions
    )
    np.testing.assert_allclose(e_loaded, e_orig, rtol=0, atol=1e-9)
    np.testing.assert_allclose(f_loaded, f_orig, rtol=0, atol=1e-9)
    # An existing checkpoint is not overwritten silently.
    assert main(["import-schnet", str(pt), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_malformed_checkpoints_raise_value_error(tmp_path):
    _, hparams, z, params = _random_schnet(seed=7, num_interactions=1)
    from stabie_jax.checkpoint import ModelMetadata

    metadata = ModelMetadata("schnet", hparams, z, 4.0)
    good = torch.load(
        interop.export_torch_checkpoint(params, metadata, tmp_path / "good.pt"),
        weights_only=False,
    )

    def write(blob, name):
        path = tmp_path / name
        torch.save(blob, path)
        return path

    no_norm = {k: v for k, v in good.items() if k != "normalizers"}
    with pytest.raises(ValueError, match="normalizers"):
        interop.read_torch_checkpoint(write(no_norm, "a.pt"))

    missing = dict(good, state_dict=dict(good["state_dict"]))
    del missing["state_dict"]["module.lin2.bias"]
    with pytest.raises(ValueError, match="lin2.bias"):
        interop.read_torch_checkpoint(write(missing, "b.pt"))

    wrong_shape = dict(good, config={**good["config"], "model": {**good["config"]["model"]}})
    wrong_shape["config"]["model"]["hidden_channels"] = 32
    with pytest.raises(ValueError, match="shape"):
        interop.read_torch_checkpoint(write(wrong_shape, "c.pt"))

    unshared = dict(good, state_dict=dict(good["state_dict"]))
    unshared["state_dict"]["module.interactions.0.conv.nn.0.bias"] = (
        unshared["state_dict"]["module.interactions.0.conv.nn.0.bias"] + 1.0
    )
    with pytest.raises(ValueError, match="shares"):
        interop.read_torch_checkpoint(write(unshared, "d.pt"))

    with pytest.raises(ValueError, match="atomic_numbers"):
        interop.import_torch_checkpoint(
            write(dict(good, config={"model": good["config"]["model"]}), "e.pt")
        )
