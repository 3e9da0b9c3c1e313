"""Divergence guards: never a silent NaN, never a NaN checkpoint.

* :func:`nonfinite_state` — the leaves of a train state (parameters,
  BatchNorm statistics, optimiser state) that hold a NaN or an infinity,
  checked on device (one bool per leaf comes back);
* :func:`check_state_finite` / :func:`diverged` — the one-line
  ``FloatingPointError`` message of a diverged run, naming the step, the
  quantity and the last finite checkpoint;
* :class:`DeadTrainingWatch` — warnings for a run that stopped learning
  without failing (dead adjacency rows, a zero gradient).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import numpy as np

from tfjax.state import TrainState


def _leaf_finite(x):
  if jax.numpy.issubdtype(x.dtype, jax.numpy.inexact):
    return jax.numpy.isfinite(x).all()
  return jax.numpy.ones((), bool)


def _leaf_flags(tree):
  """One bool per leaf of ``tree``: all its entries are finite."""
  return jax.tree.map(_leaf_finite, tree)


_finite_flags = jax.jit(_leaf_flags)
_finite_flags_pmap = jax.pmap(_leaf_flags)  # per device, no gather


def clear_compiled() -> None:
  """Drops the compiled finiteness checks (the next call recompiles)."""
  global _finite_flags_pmap
  _finite_flags.clear_cache()
  _finite_flags_pmap = jax.pmap(_leaf_flags)  # pmap has no clear_cache


def nonfinite_state(state: TrainState, *, replicated: bool = False) -> list:
  """Paths of the leaves of ``state``'s params, batch_stats and opt_state
  that hold a NaN or an infinity, parameters first (``params/backbone/...``).

  One jitted reduction per leaf, on device; only a bool per leaf comes back.
  ``replicated``: ``state`` carries a leading device axis (the pmapped
  loop's); every device's copy is checked, without gathering it.
  """
  tree = [
    {"params": state.params},
    {"batch_stats": state.batch_stats},
    {"opt_state": state.opt_state},
  ]  # a list: reported in this order
  flags = jax.device_get((_finite_flags_pmap if replicated else _finite_flags)(tree))
  return [
    _path_name(path)
    for path, ok in jax.tree_util.tree_flatten_with_path(flags)[0]
    if not np.all(ok)
  ]


def _path_name(path) -> str:
  """``params/backbone/Dense_0/kernel`` for a pytree key path."""
  parts = []
  for k in path[1:]:  # path[0] is the list index of nonfinite_state's tree
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


_FIRST = ("loss", "grad_norm", "param_norm")


def diverged(config, quantities, step: int, saved: Optional[int]) -> str:
  quantities = sorted(
    quantities, key=lambda q: (_FIRST.index(q) if q in _FIRST else len(_FIRST), q)
  )
  where = (
    f"the last checkpoint (step {saved}) is finite"
    if saved is not None
    else "no checkpoint was written"
  )
  return (
    f"training diverged: {', '.join(quantities)} not finite at step "
    f"{step} (learning_rate={config.learning_rate:g}); {where}"
  )


def check_state_finite(config, state, axis_name, step: int, saved: Optional[int]) -> None:
  bad = nonfinite_state(state, replicated=axis_name is not None)
  if bad:  # parameters first, then BatchNorm statistics, then optimiser state
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    raise FloatingPointError(
      diverged(config, [f"the state ({', '.join(bad[:3])}{more})"], step, saved)
    )


class DeadTrainingWatch:
  """Warns, once each, when training has stopped learning without failing.

  * more than half of the TransFusion head's adjacency rows are uniform
    (``uniform_rows`` > 0.5: "dead" ReLU rows pass no gradient);
  * ``grad_norm`` is exactly 0 at two consecutive logged steps.
  """

  def __init__(self):
    self._zero_grads, self._said = 0, set()

  def check(self, record: Mapping[str, Any]):
    out = []
    rows = record.get("uniform_rows")
    if rows is not None and rows > 0.5 and "rows" not in self._said:
      self._said.add("rows")
      out.append(
        f"warning: at step {record['step']} {rows:.0%} of the "
        "TransFusion adjacency rows are uniform (dead ReLU rows pass "
        "no gradient); see head.final_projection / head.activation"
      )
    grad = record.get("grad_norm")
    self._zero_grads = self._zero_grads + 1 if grad == 0.0 else 0
    if self._zero_grads >= 2 and "grad" not in self._said:
      self._said.add("grad")
      out.append(
        f"warning: grad_norm is 0 at two consecutive logged steps "
        f"(step {record['step']}): the model no longer learns"
      )
    return out
