"""Fake XLA CPU devices for a benchmark script: import and call before JAX starts its backend.

Kept free of other imports (in particular of ``jax_md`` and ``stabie_jax``, which may start the
backend) so that a script can call it first.
"""

from __future__ import annotations

import os


def request(n: int) -> None:
    """Ask XLA for ``n`` host (CPU) devices, unless ``XLA_FLAGS`` already sets a count."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
