"""Ring buffer of past replica states, so that rewinding by ``k`` saves is an index.

The ring of each replica holds its last ``H`` saves; save ``c`` (counted from 0, the initial
state) is slot ``c % H``. All functions are pure and traceable; ``H`` is read from the buffer
shapes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from stabie_jax.md.state import History

__all__ = ["init_history", "push_history", "read_history", "truncate_history"]


@functools.partial(jax.jit, static_argnums=1)
def init_history(md, length: int) -> History:
    """A ring of ``length`` slots per replica holding ``md`` (leaves ``[R, ...]``) as save 0.

    Jitted: the replicas may live on devices of several processes (``jax.distributed``), where
    only compiled computations may touch them.
    """

    def ring(x):
        buf = jnp.zeros((x.shape[0], length) + x.shape[1:], x.dtype)
        return buf.at[:, 0].set(x)

    n_rep = jax.tree_util.tree_leaves(md)[0].shape[0]
    return History(
        md=jax.tree_util.tree_map(ring, md),
        step=jnp.full((n_rep, length), -1, jnp.int32).at[:, 0].set(0),
        count=jnp.ones((n_rep,), jnp.int32),
    )


def push_history(history: History, md, step, save) -> History:
    """Save ``md`` (leaves ``[R, ...]``) and ``step`` ``[R]`` where ``save`` ``[R]`` is set."""
    length = history.step.shape[1]
    rows = jnp.arange(step.shape[0])
    slot = history.count % length

    def put(buf, x):
        cur = buf[rows, slot]
        m = jnp.reshape(save, save.shape + (1,) * (x.ndim - 1))
        return buf.at[rows, slot].set(jnp.where(m, x, cur))

    return History(
        md=jax.tree_util.tree_map(put, history.md, md),
        step=put(history.step, step),
        count=history.count + save.astype(jnp.int32),
    )


def read_history(history: History, saves_back):
    """The entries ``saves_back`` saves before the latest one.

    Args:
      history: :class:`History` with ``R`` replicas.
      saves_back: int or ``[R]`` ints (0 = latest save).

    Returns:
      ``(back [R] int32, valid [R] bool, md, step [R])``: ``valid`` is False where the ring
      does not hold that many saves (``md``/``step`` are then meaningless for that replica).
    """
    length = history.step.shape[1]
    n_rep = history.count.shape[0]
    back = jnp.broadcast_to(jnp.asarray(saves_back, jnp.int32), (n_rep,))
    available = jnp.minimum(history.count, length)
    valid = (back >= 0) & (back < available)
    rows = jnp.arange(n_rep)
    slot = (history.count - 1 - back) % length
    md = jax.tree_util.tree_map(lambda buf: buf[rows, slot], history.md)
    return back, valid, md, history.step[rows, slot]


def truncate_history(history: History, mask, back) -> History:
    """Drop the ``back`` ``[R]`` newest saves where ``mask`` ``[R]`` is set."""
    return History(history.md, history.step, jnp.where(mask, history.count - back, history.count))
