"""Argument checks shared by the :mod:`tfjax.theory` modules.

The range checks run only on concrete values (a traced argument under
``jax.jit`` is skipped), so every ``jnp`` formula stays jit-able.  They raise
``ValueError`` (NaN, infinite or out-of-range values, unknown choices) and
``TypeError`` (non-integer counts).
"""

from __future__ import annotations

import jax
import numpy as np


def _concrete(x):
  """``np.ndarray`` of ``x`` or ``None`` when ``x`` is a tracer (under jit)."""
  try:
    return np.asarray(x, dtype=np.float64)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None
  except (TypeError, ValueError) as e:
    raise TypeError(f"expected a real number or array, got {type(x).__name__}") from e


def _check_range(name: str, x, lo=None, hi=None, *, lo_open=False, allow_inf=False) -> None:
  v = _concrete(x)
  if v is None:
    return
  if np.any(np.isnan(v)):
    raise ValueError(f"{name} must not be NaN, got {x!r}")
  if not allow_inf and np.any(np.isinf(v)):
    raise ValueError(f"{name} must be finite, got {x!r}")
  if lo is not None:
    bad = (v <= lo) if lo_open else (v < lo)
    if np.any(bad):
      op = ">" if lo_open else ">="
      raise ValueError(f"{name} must be {op} {lo}, got {x!r}")
  if hi is not None and np.any(v > hi):
    raise ValueError(f"{name} must be <= {hi}, got {x!r}")


def _check_int(name: str, x, lo: int) -> int:
  if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
    raise TypeError(f"{name} must be an int, got {type(x).__name__} {x!r}")
  if x < lo:
    raise ValueError(f"{name} must be >= {lo}, got {x}")
  return int(x)


def _check_choice(name: str, x, choices) -> None:
  if x not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {x!r}")
