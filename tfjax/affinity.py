"""The target affinity matrix and the Jensen–Shannon loss of TransFusion.

Samples carry an integer *group* (the source id in self-supervised mode, the
class in supervised mode) and optionally a *label* (−1 = unlabelled).  A pair
``(i, j)``, ``i ≠ j``, is positive when the groups agree, or when both labels
are known and agree (semi-supervised mode).  Row ``i`` of the target is the
uniform distribution over its positives:

    Y_ij = 1[pos(i, j) and i ≠ j],      T_i = Y_i / Σ_j Y_ij

and the loss is the mean over rows with a positive of

    JSD(A_i, T_i) = ½ KL(A_i ‖ M_i) + ½ KL(T_i ‖ M_i),   M_i = (A_i + T_i) / 2

in nats, so each row lies in [0, log 2].  0·log 0 is exactly 0.

Bad inputs are never hidden: a NaN or inf anywhere in the adjacency or the
target makes the loss (and its gradient) NaN, even in a row that is left out
of the mean, and a negative entry gives NaN (x·log x of a negative number).
Eager calls (concrete arrays) also check that the rows are probabilities
(ValueError); see :func:`jsd_loss`.

Our choice (documented, not the paper's): the authors' code squared the
cosine, kept the target's diagonal and did not normalise the target rows; we
use the proper row-wise JSD between two probability rows above.
"""

from __future__ import annotations

from typing import Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np

from tfjax.attention import self_mask

Array = jax.Array


def _check_ids(name: str, x: Array) -> None:
  chex.assert_rank(x, 1, custom_message=f"{name} must be a 1-D integer array [n]")
  chex.assert_type(x, int, custom_message=f"{name} must be integers")


def checked_ids(
  groups: Array,
  labels: Optional[Array] = None,
  column_groups: Optional[Array] = None,
  column_labels: Optional[Array] = None,
):
  """Validates row and column ids -> (groups, labels, column_groups, column_labels).

  Columns default to the rows.  Raises AssertionError (chex) for ids that
  are not 1-D integer arrays or labels whose length differs from their
  groups', and ValueError for labels given on only one side.
  """
  groups = jnp.asarray(groups)
  _check_ids("groups", groups)
  if labels is not None:
    labels = jnp.asarray(labels)
    _check_ids("labels", labels)
    chex.assert_equal_shape(
      [labels, groups], custom_message="labels and groups must have the same length"
    )
  cg = groups if column_groups is None else jnp.asarray(column_groups)
  _check_ids("column_groups", cg)
  cl = labels if column_labels is None else jnp.asarray(column_labels)
  if (labels is None) != (cl is None):
    raise ValueError("give labels for both rows and columns, or for neither")
  if cl is not None:
    _check_ids("column_labels", cl)
    chex.assert_equal_shape(
      [cl, cg], custom_message="column_labels and column_groups must have the same length"
    )
  return groups, labels, cg, cl


def positive_mask(
  groups: Array,
  labels: Optional[Array] = None,
  *,
  column_groups: Optional[Array] = None,
  column_labels: Optional[Array] = None,
  diagonal_offset=0,
) -> Array:
  """Boolean [n, m] mask of positive pairs (see module docstring).

  Rows are the samples of ``groups``/``labels`` [n]; columns those of
  ``column_groups``/``column_labels`` [m] (default: the rows themselves).
  The entry ``(i, i + diagonal_offset)`` is the sample itself and is never
  positive.  Labels < 0 mean unlabelled.
  """
  groups, labels, cg, cl = checked_ids(groups, labels, column_groups, column_labels)
  pos = groups[:, None] == cg[None, :]
  if labels is not None:
    both = (labels[:, None] >= 0) & (cl[None, :] >= 0)
    pos = pos | (both & (labels[:, None] == cl[None, :]))
  return pos & ~self_mask(groups.shape[0], cg.shape[0], diagonal_offset)


def target_affinity(
  groups: Array,
  labels: Optional[Array] = None,
  *,
  column_groups: Optional[Array] = None,
  column_labels: Optional[Array] = None,
  diagonal_offset=0,
  dtype=jnp.float32,
) -> Array:
  """Row-normalised target affinity T [n, m] (m = n by default).

  ``T_ij = Y_ij / Σ_j Y_ij`` with ``Y`` from :func:`positive_mask`; a row
  without any positive is all zeros (and :func:`jsd_loss` leaves it out).

  Args:
    groups: [n] int, source ids (self-supervised) or classes (supervised).
    labels: optional [n] int, class labels with −1 for unlabelled samples;
      two labelled samples of the same class are positive too.
    column_groups, column_labels: the columns' ids when they differ from the
      rows' (a device's rows against the global batch under pmap).
    diagonal_offset: column index of row 0's own entry.

  Example::

      >>> target_affinity(jnp.array([0, 1, 0, 1]))
      # [[0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, 1, 0, 0]]
  """
  y = positive_mask(
    groups,
    labels,
    column_groups=column_groups,
    column_labels=column_labels,
    diagonal_offset=diagonal_offset,
  ).astype(dtype)
  return y / jnp.maximum(jnp.sum(y, axis=-1, keepdims=True), 1)


def _xlogx(x: Array) -> Array:
  # x·log x with 0·log 0 = 0 exactly and a finite gradient at 0 (the inner
  # where keeps log's -inf out of the backward pass).  Only an exact 0 is
  # special: NaN and inf give NaN, a negative entry gives NaN (log < 0).
  zero = x == 0
  return jnp.where(zero, 0.0, x * jnp.log(jnp.where(zero, 1.0, x)))


def nan_unless_finite(value: Array, *arrays, axis_name=None) -> Array:
  """``value`` if every entry of ``arrays`` is finite, else NaN (same shape).

  Multiplies by exactly 1 or NaN, so the value is unchanged when all is
  finite, and a NaN/inf anywhere (on any device, with ``axis_name``) makes
  the value *and every gradient through it* NaN: masks, means over valid
  rows and ``where``s downstream cannot hide a bad input.  Integer arrays
  are skipped.
  """
  bad = jnp.zeros((), jnp.int32)
  for a in arrays:
    if a is not None and jnp.issubdtype(jnp.result_type(a), jnp.inexact):
      bad = bad + jnp.sum(~jnp.isfinite(a), dtype=jnp.int32)
  if axis_name is not None:
    bad = jax.lax.psum(bad, axis_name)
  return value * jnp.where(bad > 0, jnp.nan, 1.0).astype(value.dtype)


def row_jsd(adjacency: Array, target: Array) -> Array:
  """Jensen–Shannon divergence (nats) of each row pair -> [n], in [0, log 2].

  ``JSD(a, t) = ½ Σ [a log a + t log t] − Σ m log m`` with ``m = (a + t)/2``,
  which equals ½ KL(a‖m) + ½ KL(t‖m) for probability rows.  Computed in
  float32 or wider.  No value check here: a negative entry gives NaN (as
  does a NaN/inf), and rows that are not probabilities give a meaningless
  number (:func:`jsd_loss` checks concrete inputs).
  """
  _check_pair(adjacency, target)
  a = adjacency.astype(jnp.promote_types(adjacency.dtype, jnp.float32))
  t = target.astype(a.dtype)
  m = 0.5 * (a + t)
  return jnp.sum(0.5 * (_xlogx(a) + _xlogx(t)) - _xlogx(m), axis=-1)


def _check_pair(adjacency: Array, target: Array) -> None:
  chex.assert_rank(adjacency, 2, custom_message="adjacency must be 2-D [n, m]")
  chex.assert_equal_shape(
    [adjacency, target],
    custom_message="target must have the adjacency's shape (n×n, or a "
    "device's n rows of the global batch)",
  )


def valid_rows(target: Array) -> Array:
  """Boolean [n]: rows of ``target`` with at least one positive."""
  return jnp.sum(target, axis=-1) > 0


def jsd_loss(adjacency: Array, target: Array, *, axis_name: Optional[str] = None) -> Array:
  """Mean row-wise JSD between ``adjacency`` and ``target`` [n, m] -> scalar.

  Rows of ``target`` without a positive are left out of the mean (use
  :func:`valid_rows` to count them); with no valid row at all the loss is 0.
  Under ``jax.pmap`` pass ``axis_name``: each device holds some rows of the
  global batch, and the result is the mean over all valid rows of all
  devices (the same scalar everywhere).

  Math::

      loss = Σ_{i valid} JSD(A_i, T_i) / #valid,    0 ≤ loss ≤ log 2

  Inputs: every row of ``adjacency`` must be a probability row (entries
  ≥ 0 summing to 1), every row of ``target`` one or all zeros.  When the
  arrays are concrete (an eager call) this is checked and a violation raises
  ValueError (tolerance: see :func:`check_probability_rows`); rows holding
  NaN/inf are not an error there, they make the loss NaN.  Under
  jit/pmap/grad the values are traced and cannot be checked: a negative
  entry then gives NaN, rows that do not sum to 1 give a meaningless number
  (possibly outside [0, log 2]).  A NaN or inf anywhere makes the loss and
  its gradient NaN (see :func:`nan_unless_finite`).

  Example::

      >>> t = target_affinity(jnp.array([0, 0, 1, 1]))
      >>> jsd_loss(t, t)                           # 0.0
  """
  _check_pair(adjacency, target)
  check_probability_rows("adjacency", adjacency)
  check_probability_rows("target", target, allow_zero_rows=True)
  loss = masked_global_mean(row_jsd(adjacency, target), valid_rows(target), axis_name)
  return nan_unless_finite(loss, adjacency, target, axis_name=axis_name)


def _row_sum_tolerance(dtype) -> float:
  # Rounding each entry of a probability row moves its sum by at most eps
  # (relative errors of entries summing to 1); sqrt(eps) leaves a wide margin.
  return float(np.sqrt(float(jnp.finfo(dtype).eps)))


def check_probability_rows(name: str, x, *, allow_zero_rows: bool = False) -> None:
  """ValueError unless every finite row of a concrete ``x`` [n, m] is a probability row.

  Entries must be ≥ −tol and each row sum within tol of 1 (or exactly 0 with
  ``allow_zero_rows``), with ``tol = sqrt(eps)`` of the array's float dtype
  (3.5e-4 for float32, 0.031 for float16, 0.088 for bfloat16; our choice:
  rounding the entries of a probability row moves its sum by at most eps,
  and anything that is not a distribution is caught).  Rows with a NaN/inf
  are skipped (they propagate to a NaN loss instead).  Traced arrays are not
  checked.
  """
  if isinstance(x, jax.core.Tracer):
    return
  x = x if isinstance(x, jax.Array) else np.asarray(x)
  if x.ndim != 2 or x.size == 0 or not jnp.issubdtype(x.dtype, jnp.floating):
    return  # shape/dtype errors are raised elsewhere
  tol = _row_sum_tolerance(x.dtype)
  acc = jnp.promote_types(x.dtype, jnp.float32)
  # Reduced on the device (only [n] vectors come back), eagerly even when
  # the concrete array is a constant inside someone's jit trace.
  with jax.ensure_compile_time_eval():
    xa = jnp.asarray(x).astype(acc)
    finite = jnp.all(jnp.isfinite(xa), axis=-1)
    lo = jnp.min(jnp.where(finite[:, None], xa, 0.0), axis=-1)
    sums = jnp.sum(jnp.where(finite[:, None], xa, 0.0), axis=-1)
  finite, lo, sums = (np.asarray(v) for v in (finite, lo, sums))
  neg = finite & (lo < -tol)
  off = finite & (np.abs(sums - 1.0) > tol)
  if allow_zero_rows:
    off &= ~((sums == 0) & (lo >= 0))
  if neg.any():
    i = int(np.argmax(neg))
    raise ValueError(
      f"{name} must hold probabilities, but row {i} has a negative entry ({lo[i]:.4g})"
    )
  if off.any():
    i = int(np.argmax(off))
    what = "1 (or 0 for a row without positives)" if allow_zero_rows else "1"
    raise ValueError(
      f"{name} rows must be probabilities summing to {what} (tolerance "
      f"{tol:.2g}), but row {i} sums to {sums[i]:.6g}"
    )


def masked_global_mean(values: Array, valid: Array, axis_name: Optional[str] = None) -> Array:
  """Mean of ``values`` [n] over the ``valid`` [n] rows of the global batch.

  Under pmap (``axis_name``) sums and counts are psum-ed, so every device
  gets the same scalar; with no valid row anywhere the result is 0.
  """
  total = jnp.sum(jnp.where(valid, values, 0.0))
  count = jnp.sum(valid.astype(values.dtype))
  if axis_name is not None:
    total = jax.lax.psum(total, axis_name)
    count = jax.lax.psum(count, axis_name)
  return total / jnp.maximum(count, 1.0)
