"""Devices: the step compiled for one device or pmapped over several.

* :func:`compile_step` — ``tfjax.step.train_step`` jitted (one device) or
  ``jax.pmap``-ed over the local devices, one or ``steps_per_call`` steps
  per call;
* :func:`replicate` / :func:`unreplicate` / :func:`shard` — pytrees to and
  from the leading device axis of pmap.
"""

from __future__ import annotations

from typing import Callable, Dict

import jax
import numpy as np

from tfjax.step import step_key, train_step, train_steps


def replicate(tree, num_devices: int):
  """Stacks ``tree`` ``num_devices`` times along a new leading (pmap) axis."""
  return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (num_devices,) + np.shape(x)), tree)


def unreplicate(tree):
  """First device's copy of a replicated pytree."""
  return jax.tree.map(lambda x: x[0], tree)


def shard(batch: Dict[str, np.ndarray], num_devices: int):
  """[B, ...] -> [D, B/D, ...] for pmap."""

  def split(x):
    if x.shape[0] % num_devices:
      raise ValueError(f"batch of {x.shape[0]} is not divisible by the device count {num_devices}")
    return x.reshape((num_devices, x.shape[0] // num_devices) + x.shape[1:])

  return jax.tree.map(split, batch)


def compile_step(num_devices: int, steps_per_call: int = 1) -> Callable:
  """The jitted (one device) or pmapped step, one or ``steps_per_call`` at a time.

  Single step: ``fn(state, batch, key)``; several: ``fn(state, batches, keys)``
  with a leading step axis on ``batches`` ([S, n, ...]; [D, S, n/D, ...]
  under pmap) and ``keys`` [S].
  """
  base = train_step if steps_per_call == 1 else train_steps

  def fn(state, batch, key):  # a fresh function: its compiled programs die with it
    return base(state, batch, key)

  if num_devices == 1:
    return jax.jit(fn, donate_argnums=(0,))
  return jax.pmap(fn, axis_name="batch", in_axes=(0, 0, None), donate_argnums=(0,))


def stack_keys(seed: int, first: int, count: int):
  """The step keys [count] of steps ``first, first + 1, ...`` of run ``seed``."""
  return jax.vmap(lambda s: step_key(seed, s))(np.arange(first, first + count))
