"""ml_collections configs of the experiments; ``get_config(variant)`` in each module."""

from __future__ import annotations

from collections.abc import Callable

import ml_collections


def build_variant(
    system: str,
    base_config: Callable[[], ml_collections.ConfigDict],
    variants: dict[str, Callable],
    variant: str | None,
) -> ml_collections.ConfigDict:
    """``variants[variant](base_config())`` with ``config.variant`` set (default ``paper``)."""
    variant = variant or "paper"
    if variant not in variants:
        raise ValueError(
            f"unknown {system} config variant {variant!r}; choose from {list(variants)}"
        )
    config = variants[variant](base_config())
    config.variant = variant
    return config
