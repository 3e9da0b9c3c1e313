"""Helpers only the tests use: augmented views of a batch built outside the
training step (which makes its own, device-sharded, in :mod:`tfjax.step`)."""

from __future__ import annotations

from typing import Callable, Tuple

import jax
import jax.numpy as jnp

from tfjax.data._augment_checks import check_strength as _check_strength


def augment_batch(key, x, strength, augment_fn: Callable):
  """Apply ``augment_fn`` to every example of ``x [n, ...]`` with its own key.

  Keys: ``jax.random.split(key, n)``; ``strength`` is shared. Returns ``[n, ...]``.
  """
  x = jnp.asarray(x)
  if x.ndim < 2:
    raise ValueError(f"augment_batch: x must be a batch [n, ...], got shape {x.shape}")
  _check_strength(strength, "augment_batch")
  keys = jax.random.split(key, x.shape[0])
  return jax.vmap(augment_fn, in_axes=(0, 0, None))(keys, x, strength)


def make_views(
  key, x, *, num_views: int = 2, strength, augment_fn: Callable, group_offset=0
) -> Tuple:
  """``num_views`` augmented copies of a batch, VIEW-MAJOR, with source ids.

  ``views = concat_v augment_batch(key_v, x)`` with ``key_v = split(key, V)[v]``;
  ``groups = tile(arange(n), V) + group_offset`` (int32): rows ``i`` and
  ``i + n`` are views of the same source. Pass ``group_offset`` (e.g. a
  device's first global index) to keep ids unique across devices.

  Args:
    key: PRNG key. x: ``[n, ...]``. num_views: static int >= 1.
    strength: scalar. augment_fn: ``f(key, example, strength)``.
  Returns:
    ``(views [V*n, ...], groups [V*n] int32)``. Same key -> same views.
  """
  if isinstance(num_views, bool) or not isinstance(num_views, int) or num_views < 1:
    raise ValueError(f"make_views: num_views must be a positive int, got {num_views!r}")
  x = jnp.asarray(x)
  if x.ndim < 2:
    raise ValueError(f"make_views: x must be a batch [n, ...], got shape {x.shape}")
  n = x.shape[0]
  keys = jax.random.split(key, num_views)
  views = jnp.concatenate(
    [augment_batch(keys[v], x, strength, augment_fn) for v in range(num_views)], axis=0
  )
  groups = jnp.tile(jnp.arange(n, dtype=jnp.int32), num_views) + jnp.asarray(
    group_offset, jnp.int32
  )
  return views, groups


def set_fields(config, fields):
  """Sets ``{dotted name: value}`` on ``config`` in place; returns it."""
  for key, value in fields.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    setattr(node, leaf, value)
  return config
