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

Our choice (documented, not the paper's): the authors' code squared the
cosine, kept the target's diagonal and did not normalise the target rows; we
use the proper row-wise JSD between two probability rows above.
"""

from __future__ import annotations

from typing import Optional

import chex
import jax
import jax.numpy as jnp

from tfjax.attention import self_mask

Array = jax.Array


def _check_ids(name: str, x: Array) -> None:
  chex.assert_rank(x, 1, custom_message=f"{name} must be a 1-D integer array [n]")
  chex.assert_type(x, int, custom_message=f"{name} must be integers")


def checked_ids(groups: Array, labels: Optional[Array] = None,
                column_groups: Optional[Array] = None,
                column_labels: Optional[Array] = None):
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
        [labels, groups],
        custom_message="labels and groups must have the same length")
  cg = groups if column_groups is None else jnp.asarray(column_groups)
  _check_ids("column_groups", cg)
  cl = labels if column_labels is None else jnp.asarray(column_labels)
  if (labels is None) != (cl is None):
    raise ValueError("give labels for both rows and columns, or for neither")
  if cl is not None:
    _check_ids("column_labels", cl)
    chex.assert_equal_shape(
        [cl, cg],
        custom_message="column_labels and column_groups must have the same "
        "length")
  return groups, labels, cg, cl


def positive_mask(groups: Array, labels: Optional[Array] = None, *,
                  column_groups: Optional[Array] = None,
                  column_labels: Optional[Array] = None,
                  diagonal_offset=0) -> Array:
  """Boolean [n, m] mask of positive pairs (see module docstring).

  Rows are the samples of ``groups``/``labels`` [n]; columns those of
  ``column_groups``/``column_labels`` [m] (default: the rows themselves).
  The entry ``(i, i + diagonal_offset)`` is the sample itself and is never
  positive.  Labels < 0 mean unlabelled.
  """
  groups, labels, cg, cl = checked_ids(groups, labels, column_groups,
                                       column_labels)
  pos = groups[:, None] == cg[None, :]
  if labels is not None:
    both = (labels[:, None] >= 0) & (cl[None, :] >= 0)
    pos = pos | (both & (labels[:, None] == cl[None, :]))
  return pos & ~self_mask(groups.shape[0], cg.shape[0], diagonal_offset)


def target_affinity(groups: Array, labels: Optional[Array] = None, *,
                    column_groups: Optional[Array] = None,
                    column_labels: Optional[Array] = None,
                    diagonal_offset=0, dtype=jnp.float32) -> Array:
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
  y = positive_mask(groups, labels, column_groups=column_groups,
                    column_labels=column_labels,
                    diagonal_offset=diagonal_offset).astype(dtype)
  return y / jnp.maximum(jnp.sum(y, axis=-1, keepdims=True), 1)


def _xlogx(x: Array) -> Array:
  # x·log x with 0·log 0 = 0 exactly and a finite gradient at 0 (the inner
  # where keeps log's -inf out of the backward pass).
  positive = x > 0
  return jnp.where(positive, x * jnp.log(jnp.where(positive, x, 1.0)), 0.0)


def row_jsd(adjacency: Array, target: Array) -> Array:
  """Jensen–Shannon divergence (nats) of each row pair -> [n], in [0, log 2].

  ``JSD(a, t) = ½ Σ [a log a + t log t] − Σ m log m`` with ``m = (a + t)/2``,
  which equals ½ KL(a‖m) + ½ KL(t‖m) for probability rows.
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
      "device's n rows of the global batch)")


def valid_rows(target: Array) -> Array:
  """Boolean [n]: rows of ``target`` with at least one positive."""
  return jnp.sum(target, axis=-1) > 0


def jsd_loss(adjacency: Array, target: Array, *,
             axis_name: Optional[str] = None) -> Array:
  """Mean row-wise JSD between ``adjacency`` and ``target`` [n, m] -> scalar.

  Rows of ``target`` without a positive are left out of the mean (use
  :func:`valid_rows` to count them); with no valid row at all the loss is 0.
  Under ``jax.pmap`` pass ``axis_name``: each device holds some rows of the
  global batch, and the result is the mean over all valid rows of all
  devices (the same scalar everywhere).

  Math::

      loss = Σ_{i valid} JSD(A_i, T_i) / #valid,    0 ≤ loss ≤ log 2

  Example::

      >>> t = target_affinity(jnp.array([0, 0, 1, 1]))
      >>> jsd_loss(t, t)                           # 0.0
  """
  return masked_global_mean(row_jsd(adjacency, target), valid_rows(target),
                            axis_name)


def masked_global_mean(values: Array, valid: Array,
                       axis_name: Optional[str] = None) -> Array:
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
