"""Tests of profile_md_step.py's trace bookkeeping on a small compiled program."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import profile_md_step as prof


def _program():
    def f(x, w):
        def body(_, x):
            return jnp.tanh(x @ w)[jnp.array([1, 0, 2])]

        return jax.lax.fori_loop(0, 4, body, x)

    x, w = jnp.ones((3, 8)), 0.1 * jnp.ones((8, 8))
    return jax.jit(f), (x, w)


def test_instructions_are_classified_from_the_compiled_hlo():
    run, args = _program()
    hlo = run.lower(*args).compile().as_text()
    kinds = prof.classify_instructions(hlo)
    assert set(kinds.values()) - {None} <= set(prof.KINDS)
    # the loop is a container (its body's instructions carry the time), the matmul is found
    assert any(name.startswith("while") for name, kind in kinds.items() if kind is None)
    assert "matmul" in kinds.values()
    assert "gather" in kinds.values() or "layout copy" in kinds.values()


def test_traced_operations_match_the_hlo_instruction_names(tmp_path):
    run, args = _program()
    jax.block_until_ready(run(*args))
    with jax.profiler.trace(str(tmp_path)):
        jax.block_until_ready(run(*args))
    seconds = prof.traced_op_seconds(str(tmp_path))
    kinds = prof.classify_instructions(run.lower(*args).compile().as_text())
    matched = {name: s for name, s in seconds.items() if name in kinds}
    assert matched, sorted(seconds)[:20]  # XLA's events carry the instruction names
    assert all(s >= 0 for s in matched.values())
