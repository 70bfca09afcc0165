"""Test setup: NaN debugging on, shared paths to the staged reference data."""

from __future__ import annotations

import pathlib

import jax
import pytest

jax.config.update("jax_debug_nans", True)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def shared_file(*parts: str) -> pathlib.Path:
    """Path to a file in ../shared/data, skipping the test with a reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"staged reference data not present: {path}")
    return path
