"""The public surface: every library module declares ``__all__``, and every name it lists exists."""

from __future__ import annotations

import ast
import importlib
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "stabie_jax"
MODULES = sorted(  # private modules (``_estimator_core``) and ``__main__`` scripts excepted
    p
    for p in PACKAGE.rglob("*.py")
    if (p.name == "__init__.py" or not p.name.startswith("_")) and "builtin" not in p.parts
)


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _declares_all(path: pathlib.Path) -> bool:
    return any(
        isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
        for node in ast.parse(path.read_text()).body
    )


def test_every_module_declares_its_public_names():
    missing = [str(p.relative_to(PACKAGE.parent)) for p in MODULES if not _declares_all(p)]
    assert not missing, f"modules without __all__: {missing}"


@pytest.mark.parametrize("path", MODULES, ids=_module_name)
def test_every_listed_name_exists_once(path):
    try:
        module = importlib.import_module(_module_name(path))
    except ImportError as err:  # an optional extra (torch) is not installed
        pytest.skip(f"{_module_name(path)} needs an optional dependency: {err}")
    names = list(getattr(module, "__all__", []))
    assert len(names) == len(set(names)), f"duplicates in {path.name}'s __all__"
    absent = [n for n in names if not hasattr(module, n)]
    assert not absent, f"{_module_name(path)}.__all__ lists undefined names {absent}"


def test_top_level_names_are_the_modules_own_objects():
    import stabie_jax

    for name in stabie_jax.__all__:
        value = getattr(stabie_jax, name)
        if name in stabie_jax._API:
            assert value is getattr(importlib.import_module(stabie_jax._API[name]), name), name
    assert set(stabie_jax._API) <= set(dir(stabie_jax))
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        stabie_jax.no_such_name  # noqa: B018
