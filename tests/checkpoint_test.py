"""Tests of training checkpoints (orbax) and model checkpoints."""

from __future__ import annotations

import glob
import json
import os
import pathlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax_md import space
from toy_model import TOY_KIND, PairMLP, register_toy_model

from stabie_jax import checkpoint as ckpt
from stabie_jax.checkpoint.training import _CHECKSUM_KEY
from stabie_jax.models import registry

# Failed tensorstore reads (the corruption tests) leave un-awaited asyncio tasks behind.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


class LoopState(NamedTuple):
    params: dict
    opt_state: object
    key: jax.Array
    typed_key: jax.Array
    step: int
    best: float


def make_state(scale: float = 1.0) -> LoopState:
    params = {"w": jnp.arange(12.0).reshape(3, 4) * scale, "b": jnp.ones(4) * scale}
    return LoopState(
        params=params,
        opt_state=optax.adam(1e-3).init(params),
        key=jax.random.PRNGKey(3),
        typed_key=jax.random.key(7),
        step=int(scale),
        best=0.1 + 0.2 * scale,
    )


def assert_tree_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert type(x) is type(y) or (hasattr(x, "dtype") and x.dtype == y.dtype)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def save_steps(directory, steps, max_to_keep=3):
    manager = ckpt.open_manager(directory, max_to_keep=max_to_keep)
    for s in steps:
        ckpt.save_checkpoint(manager, s, make_state(float(s)), {"epoch": s, "arr": np.arange(2)})
    manager.wait_until_finished()
    return manager


def test_roundtrip_exact_with_metadata_and_keep_last(tmp_path):
    manager = save_steps(tmp_path / "ck", [1, 2, 3, 4], max_to_keep=2)
    assert manager.all_steps() == [3, 4]
    assert ckpt.latest_step(tmp_path / "ck") == 4
    restored = ckpt.restore_checkpoint(manager, target=make_state(0.0))
    assert restored.step == 4
    assert restored.metadata == {"epoch": 4, "arr": [0, 1]}
    assert_tree_equal(restored.state, make_state(4.0))
    assert isinstance(restored.state, LoopState)
    assert isinstance(restored.state.step, int) and restored.state.best == 0.1 + 0.2 * 4.0
    older = ckpt.restore_checkpoint(manager, target=make_state(0.0), step=3)
    assert_tree_equal(older.state, make_state(3.0))
    with pytest.raises(ValueError, match="no checkpoint for step 1"):
        ckpt.restore_checkpoint(manager, target=make_state(0.0), step=1)


def test_checkpoint_of_another_configuration_is_refused_not_quarantined(tmp_path):
    """A valid checkpoint written for a differently shaped state (e.g. another replica count)
    is left in place with an error naming the leaves; restoring with the right target works."""
    directory = tmp_path / "ck"
    save_steps(directory, [1, 2])
    manager = ckpt.open_manager(directory, create=False)  # a fresh run resuming
    wider = make_state(0.0)._replace(params={"w": jnp.zeros((3, 8)), "b": jnp.zeros(4)})
    wider = wider._replace(opt_state=optax.adam(1e-3).init(wider.params))
    with pytest.raises(ValueError, match=r"params/w: saved shape \(3, 4\), this run expects"):
        ckpt.restore_checkpoint(manager, target=wider)
    extra = make_state(0.0)._replace(params={**make_state(0.0).params, "c": jnp.zeros(2)})
    extra = extra._replace(opt_state=optax.adam(1e-3).init(extra.params))
    with pytest.raises(ValueError, match="params/c: missing from the checkpoint"):
        ckpt.restore_checkpoint(manager, target=extra)
    # Same shapes in another dtype (a float64 run on a float32 checkpoint): also structural.
    state = make_state(0.0)
    params64 = jax.tree.map(lambda x: np.asarray(x, np.float64), state.params)
    as64 = state._replace(params=params64)
    expected = r"params/w: saved dtype float32, this run expects float64"
    with pytest.raises(ValueError, match=expected):
        ckpt.restore_checkpoint(manager, target=as64)
    assert sorted(p.name for p in directory.iterdir() if p.name.isdigit()) == ["1", "2"]
    assert not any(p.name.startswith("corrupt") for p in directory.iterdir())
    restored = ckpt.restore_checkpoint(manager, target=make_state(0.0))
    assert restored.step == 2
    assert_tree_equal(restored.state, make_state(2.0))


def _corrupt_data_files(step_dir: pathlib.Path):
    files = glob.glob(os.fspath(step_dir / "state" / "**" / "d" / "*"), recursive=True)
    assert files
    for name in files:
        data = bytearray(pathlib.Path(name).read_bytes())
        for i in range(len(data) // 2, len(data)):
            data[i] ^= 0xFF
        pathlib.Path(name).write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip_bytes", "delete_state", "wrong_checksum"])
def test_corrupt_latest_falls_back_with_warning(tmp_path, damage):
    directory = tmp_path / "ck"
    manager = save_steps(directory, [1, 2, 3])
    latest = directory / "3"
    if damage == "flip_bytes":
        _corrupt_data_files(latest)
    elif damage == "delete_state":
        for name in glob.glob(os.fspath(latest / "state" / "**" / "*"), recursive=True):
            if os.path.isfile(name):
                os.remove(name)
    else:
        meta = latest / "metadata" / "metadata"
        blob = json.loads(meta.read_text())
        blob[_CHECKSUM_KEY] = "0" * 64
        meta.write_text(json.dumps(blob))
    with pytest.warns(RuntimeWarning, match="step 3 .* corrupt"):
        restored = ckpt.restore_checkpoint(manager, target=make_state(0.0))
    assert restored.step == 2
    assert_tree_equal(restored.state, make_state(2.0))
    assert (directory / "corrupt_step_3").is_dir() and not latest.exists()
    # The run can continue and re-save step 3 after the fallback.
    ckpt.save_checkpoint(manager, 3, make_state(30.0), wait=True)
    again = ckpt.restore_checkpoint(manager, target=make_state(0.0))
    assert again.step == 3
    assert_tree_equal(again.state, make_state(30.0))


def test_no_fallback_raises_and_all_corrupt_raises(tmp_path):
    directory = tmp_path / "ck"
    manager = save_steps(directory, [1])
    _corrupt_data_files(directory / "1")
    with pytest.raises(Exception):  # noqa: B017 - orbax/tensorstore error type
        ckpt.restore_checkpoint(manager, target=make_state(0.0), fallback=False)
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match="no readable checkpoint"):
        ckpt.restore_checkpoint(manager, target=make_state(0.0))


def test_missing_or_empty_directory_errors(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match=f"{missing}.*does not exist"):
        ckpt.open_manager(missing, create=False)
    with pytest.raises(ValueError, match="does not exist"):
        ckpt.latest_step(missing)
    manager = ckpt.open_manager(tmp_path / "empty")
    with pytest.raises(ValueError, match="no checkpoint found"):
        ckpt.restore_checkpoint(manager, target=make_state(0.0))


def test_shape_mismatch_with_target_is_reported(tmp_path):
    manager = save_steps(tmp_path / "ck", [1])
    bad = make_state(0.0)._replace(params={"w": jnp.zeros((5, 4)), "b": jnp.ones(4)})
    with pytest.raises(Exception):  # noqa: B017
        ckpt.restore_checkpoint(manager, target=bad, fallback=False)


def test_jax_md_replica_state_roundtrip(tmp_path):
    """What the StABlE driver saves: a vmapped JAX-MD NVT state plus masks and counters."""
    from jax_md import energy, simulate

    displacement_fn, shift_fn = space.free()
    init_fn, apply_fn = simulate.nvt_nose_hoover(
        energy.soft_sphere_pair(displacement_fn), shift_fn, 1e-3, kT=0.1
    )
    positions = 3.0 * jax.random.uniform(jax.random.PRNGKey(0), (5, 3))
    keys = jax.random.split(jax.random.PRNGKey(1), 4)
    replicas = jax.jit(jax.vmap(lambda k: apply_fn(init_fn(k, positions))))(keys)
    state = {"replicas": replicas, "alive": jnp.array([True, False, True, True]), "epoch": 7}
    manager = ckpt.open_manager(tmp_path / "ck")
    ckpt.save_checkpoint(manager, 7, state, {"phase": "learning"}, wait=True)
    restored = ckpt.restore_checkpoint(manager, target=state)
    assert type(restored.state["replicas"]) is type(replicas)
    assert restored.metadata == {"phase": "learning"}
    assert_tree_equal(restored.state, state)


# ------------------------------------------------------------------------------ model checkpoints


def toy_model_and_metadata():
    register_toy_model()
    module = PairMLP(hidden=8, cutoff=3.5)
    z = (8, 1, 1)
    params = registry.init_params(module, z, jax.random.PRNGKey(0))
    metadata = ckpt.ModelMetadata(
        kind=TOY_KIND,
        hparams=registry.model_hparams(module),
        atomic_numbers=z,
        cutoff_angstrom=3.5,
        energy_scale=0.7,
        energy_shift={1: -13.6, 8: -432.1},
        extra={"note": "test"},
    )
    return module, params, metadata


def test_model_checkpoint_roundtrip_and_potential(tmp_path):
    module, params, metadata = toy_model_and_metadata()
    ckpt.save_model_checkpoint(tmp_path / "model", params, metadata)
    loaded = ckpt.load_model_checkpoint(tmp_path / "model")
    assert loaded.metadata == metadata
    assert loaded.module == module
    assert_tree_equal(loaded.params, params)
    positions = jnp.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    pot = ckpt.make_model_potential(loaded.module, loaded.metadata, space.free()[0])
    bare = ckpt.make_model_potential(
        module, metadata._replace(energy_scale=1.0, energy_shift={}), space.free()[0]
    )
    per_atom, forces, bare_per_atom, bare_forces = jax.jit(
        lambda p, q: (
            pot.per_atom_energy_fn(p, positions),
            pot.force_fn(p, positions),
            bare.per_atom_energy_fn(q, positions),
            bare.force_fn(q, positions),
        )
    )(loaded.params, params)
    assert float(jnp.abs(bare_forces).max()) > 1e-3  # the comparison is not trivially 0 == 0
    np.testing.assert_allclose(
        per_atom, 0.7 * bare_per_atom + np.array([-432.1, -13.6, -13.6]), rtol=1e-6
    )
    np.testing.assert_allclose(forces, 0.7 * bare_forces, rtol=1e-5)
    with pytest.raises(ValueError, match="already exists"):
        ckpt.save_model_checkpoint(tmp_path / "model", params, metadata)


def test_model_checkpoint_errors(tmp_path):
    module, params, metadata = toy_model_and_metadata()
    with pytest.raises(ValueError, match="not a model checkpoint"):
        ckpt.load_model_checkpoint(tmp_path / "absent")
    path = ckpt.save_model_checkpoint(tmp_path / "model", params, metadata)
    blob = json.loads((path / "model.json").read_text())
    blob["kind"] = "no_such_model"
    (path / "model.json").write_text(json.dumps(blob))
    with pytest.raises(ValueError, match="unknown model kind 'no_such_model'"):
        ckpt.load_model_checkpoint(path)
    path = ckpt.save_model_checkpoint(tmp_path / "model2", params, metadata)
    blob = json.loads((path / "model.json").read_text())
    del blob["cutoff_angstrom"]
    (path / "model.json").write_text(json.dumps(blob))
    with pytest.raises(ValueError, match="lacks required keys"):
        ckpt.load_model_checkpoint(path)
    path = ckpt.save_model_checkpoint(tmp_path / "model3", params, metadata)
    blob = json.loads((path / "model.json").read_text())
    blob["extra"][_CHECKSUM_KEY] = "f" * 64
    (path / "model.json").write_text(json.dumps(blob))
    with pytest.raises(ValueError, match="checksum"):
        ckpt.load_model_checkpoint(path)
    path = ckpt.save_model_checkpoint(tmp_path / "model4", params, metadata)
    text = (path / "model.json").read_text()
    (path / "model.json").write_text(text[: len(text) // 2])  # torn write
    with pytest.raises(ValueError, match=r"model4/model\.json is not valid JSON .*truncated"):
        ckpt.load_model_checkpoint(path)


def test_registry_errors_and_hparams_roundtrip():
    register_toy_model()
    module = registry.build_model(TOY_KIND, hidden=5, n_rbf=3, cutoff=2.0)
    assert registry.model_hparams(module) == {"hidden": 5, "n_rbf": 3, "cutoff": 2.0}
    assert registry.build_model(TOY_KIND, **registry.model_hparams(module)) == module
    with pytest.raises(ValueError, match="bad hyperparameters"):
        registry.build_model(TOY_KIND, width=3)
    with pytest.raises(ValueError, match="unknown model kind"):
        registry.build_model("mace")
    with pytest.raises(ValueError, match="built in"):
        registry.register_model("schnet", PairMLP)
    assert {"schnet", "nequip", "gemnet_t", TOY_KIND} <= set(registry.available_models())


SHARDED_SCRIPT = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from stabie_jax import checkpoint as ck
mesh = Mesh(np.array(jax.devices()), ("replica",))
replicas = jax.device_put(jnp.arange(32.0).reshape(8, 4), NamedSharding(mesh, P("replica")))
params = jax.device_put(jnp.ones(3), NamedSharding(mesh, P()))
state = {"replicas": replicas, "params": params, "key": jax.random.PRNGKey(0)}
manager = ck.open_manager(sys.argv[1])
ck.save_checkpoint(manager, 1, state, wait=True)
out = ck.restore_checkpoint(manager, target=state).state
assert out["replicas"].sharding == replicas.sharding, out["replicas"].sharding
assert out["params"].sharding == params.sharding
np.testing.assert_array_equal(out["replicas"], replicas)
print("SHARDED_OK")
"""


def test_sharded_replica_axis_restores_with_its_sharding(tmp_path):
    """Four fake CPU devices (fresh process): the replica-sharded array comes back sharded."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT, os.fspath(tmp_path / "ck")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "SHARDED_OK" in result.stdout, result.stderr[-2000:]


OTHER_DEVICE_SCRIPT = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
sys.path.insert(0, sys.argv[2])
import jax
from checkpoint_test import make_state, toy_model_and_metadata
from stabie_jax import checkpoint as ck
module, params, metadata = toy_model_and_metadata()
last = jax.devices()[3]
ck.save_model_checkpoint(sys.argv[1] + "/model", jax.device_put(params, last), metadata)
manager = ck.open_manager(sys.argv[1] + "/train")
on_last = lambda x: jax.device_put(x, last) if isinstance(x, jax.Array) else x  # keep scalars
ck.save_checkpoint(manager, 1, jax.tree.map(on_last, make_state()), wait=True)
print("SAVED_ON_DEVICE", last.id)
"""


def test_checkpoints_written_on_another_device_load_here(tmp_path):
    """Saved on a device this process lacks (like a CPU checkpoint read on a GPU machine).

    Orbax would restore onto the recorded device (``cpu:3``); the loaders place the arrays on
    this process's device instead, for model checkpoints and for training checkpoints.
    """
    import subprocess
    import sys

    tests_dir = os.path.dirname(os.path.abspath(__file__))
    result = subprocess.run(
        [sys.executable, "-c", OTHER_DEVICE_SCRIPT, os.fspath(tmp_path), tests_dir],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "SAVED_ON_DEVICE 3" in result.stdout, result.stderr[-2000:]
    assert len(jax.devices()) < 4  # this process cannot see the saving device
    _, params, _ = toy_model_and_metadata()
    loaded = ckpt.load_model_checkpoint(tmp_path / "model")
    assert_tree_equal(loaded.params, params)
    assert {leaf.devices().pop() for leaf in jax.tree.leaves(loaded.params)} == {jax.devices()[0]}
    manager = ckpt.open_manager(tmp_path / "train")
    restored = ckpt.restore_checkpoint(manager, target=make_state(), fallback=False)
    assert_tree_equal(restored.state, make_state())


def test_displacement_norms_and_cosines_between_saved_models(tmp_path, capsys):
    from experiments import displacement

    _, params, metadata = toy_model_and_metadata()
    rng = np.random.default_rng(0)
    d = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
    e = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
    moved = {
        "start": params,
        "a": jax.tree.map(lambda p, x: p + 1e-2 * x, params, d),
        "b": jax.tree.map(lambda p, x: p + 3e-2 * x, params, d),
        "c": jax.tree.map(lambda p, x: p - 2e-2 * x, params, d),
        "e": jax.tree.map(lambda p, x: p + 1e-2 * x, params, e),
    }
    dirs = {n: str(ckpt.save_model_checkpoint(tmp_path / n, p, metadata)) for n, p in moved.items()}
    out = displacement.displacements(dirs["start"], [dirs[n] for n in "abce"])
    dn = float(np.sqrt(sum(float(jnp.sum(x.astype(jnp.float64) ** 2)) for x in jax.tree.leaves(d))))
    np.testing.assert_allclose(out["norm"][dirs["a"]], 1e-2 * dn, rtol=1e-4)
    np.testing.assert_allclose(out["norm"][dirs["b"]], 3e-2 * dn, rtol=1e-4)
    np.testing.assert_allclose(out["cosine"][f"{dirs['a']} | {dirs['b']}"], 1.0, atol=1e-4)
    np.testing.assert_allclose(out["cosine"][f"{dirs['a']} | {dirs['c']}"], -1.0, atol=1e-4)
    # two independent random directions in many dimensions are nearly orthogonal
    n = out["n_parameters"]
    assert abs(out["cosine"][f"{dirs['a']} | {dirs['e']}"]) < 5 / np.sqrt(n)
    assert displacement.main([dirs["start"], dirs["a"]]) == 0
    assert '"start_norm"' in capsys.readouterr().out
