"""Over-fusion diagnostics for any embedding matrix z [n, d] (CLOA).

Over-fusion is the collapse CLOA describes: all embeddings equal, or all on
one line (±z*).  These measure it:

* :func:`embedding_variance` — total variance of the L2-normalised embeddings,
  ``1 − ‖mean‖²`` ∈ [0, 1]: 0 when all are equal; 1 − 1/n for n orthonormal
  rows; ≈ 1 for a spread-out batch.  (A ±z* line can still score high: use
  the rank too.)
* :func:`singular_values`, :func:`rank_at_energy` — the spectrum and the
  number of directions holding a given share of the energy (1 for both
  collapse modes).
* :func:`per_class_variance`, :func:`per_class_rank` — the same per class,
  with a static ``num_classes`` so they jit (masking, no boolean indexing).
* :func:`class_ordered_affinity` — the cosine matrix ordered by class (its
  heatmap and the spectrum as PNGs: :mod:`tfjax.plots`).
* :func:`summary` — a dict of Python floats for metrics logging.

All array functions are pure and jit-able; :func:`summary` runs on the
host.  Embeddings are L2-normalised scale-safely
(:func:`tfjax.normalize.l2_normalize`, in float32 or wider: the numbers are
the same for ``z`` and ``1e±30·z``, and a zero row stays zero, no NaN), and
spectra are divided by their largest value before squaring.  Non-finite
embeddings are reported, never hidden: variances become NaN and ranks −1
(NaN in :func:`summary`).
"""

from __future__ import annotations

from typing import Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np

from tfjax.normalize import check_row_scale, l2_normalize

Array = jax.Array

__all__ = [
  "embedding_variance",
  "singular_values",
  "rank_at_energy",
  "per_class_variance",
  "per_class_rank",
  "class_ordered_affinity",
  "summary",
]

# Relative slack when comparing cumulative energy with the threshold, so that
# an exact boundary (e.g. 19 of 20 equal singular values at 95%) is not lost
# to float32 rounding (our choice).
_ENERGY_SLACK = 1e-6


def _check_z(z) -> Array:
  if not isinstance(z, jax.core.Tracer):
    z = jnp.asarray(z)
  chex.assert_rank(z, 2, custom_message="z must be a 2-D array [n, d]")
  chex.assert_type(z, float, custom_message="z must be floating point")
  if z.shape[0] < 1 or z.shape[1] < 1:
    raise ValueError(f"z must be non-empty [n, d], got shape {z.shape}")
  check_row_scale("z", z)
  return z.astype(jnp.promote_types(z.dtype, jnp.float32))


def _check_labels(labels, n: int) -> Array:
  if not isinstance(labels, jax.core.Tracer):
    labels = jnp.asarray(labels)
  chex.assert_type(labels, int, custom_message="labels must be integers")
  chex.assert_shape(labels, (n,), custom_message=f"labels must have shape ({n},) to match z")
  return labels


def _check_num_classes(num_classes) -> int:
  if (
    not isinstance(num_classes, (int, np.integer))
    or isinstance(num_classes, bool)
    or num_classes < 1
  ):
    raise ValueError(f"num_classes must be a static int >= 1, got {num_classes!r}")
  return int(num_classes)


def _check_energy(energy) -> None:
  if not isinstance(energy, jax.core.Tracer):
    if not 0.0 < float(energy) <= 1.0:
      raise ValueError(f"energy must lie in (0, 1], got {energy}")


def embedding_variance(z: Array) -> Array:
  """Total variance of the L2-normalised rows of ``z`` [n, d] -> scalar in [0, 1].

  ``u_i = z_i/‖z_i‖``:  Σ_j Var(u_·j) = mean_i ‖u_i‖² − ‖mean_i u_i‖²,
  which is 1 − ‖ū‖² when no row is zero (a zero row stays zero and counts
  with ‖u_i‖ = 0; an all-zero z gives 0).  Clipped to [0, 1] against
  rounding (a NaN stays NaN).  0 = all embeddings equal.  Scale-invariant.

  Example::

      >>> embedding_variance(jnp.ones((4, 3)))   # 0.0
      >>> embedding_variance(jnp.eye(4))         # 0.75 = 1 − 1/4
  """
  u = l2_normalize(_check_z(z))
  mean = jnp.mean(u, axis=0)
  sq = jnp.mean(jnp.sum(jnp.square(u), axis=1))
  return jnp.clip(sq - jnp.sum(jnp.square(mean)), 0.0, 1.0)


def singular_values(z: Array, *, normalize: bool = True) -> Array:
  """Singular values of ``z`` [n, d], descending -> [min(n, d)].

  By default of the L2-normalised, *uncentred* rows (our choice: the
  normalised embeddings are what the cosine losses see, and a collapse to
  one vector then shows as a single non-zero value, √n).  Their squares sum
  to n (the number of non-zero rows).  With ``normalize=False`` the raw
  values, computed as ``max|z| · svd(z / max|z|)`` (no overflow at any
  scale).

  Example::

      >>> singular_values(jnp.eye(3) * 5.0)           # [1, 1, 1]
  """
  z = _check_z(z)
  if normalize:
    return jnp.linalg.svd(l2_normalize(z), compute_uv=False)
  # Raw values: factor out the largest |entry| so the SVD sees entries in
  # [−1, 1] at any scale (1e±30 included), then scale back.
  top = jnp.max(jnp.abs(z))
  top = jnp.where(top == 0, 1.0, top)
  return jnp.linalg.svd(z / top, compute_uv=False) * top


def _energy_shares(s: Array) -> Array:
  """``(s_i / max s)²``: squares that neither overflow nor underflow."""
  top = jnp.max(jnp.abs(s), axis=-1, keepdims=True)
  return jnp.square(s / jnp.where(top == 0, 1.0, top))


def _rank_from_sv(s: Array, energy) -> Array:
  e = _energy_shares(s)
  total = jnp.sum(e)
  cum = jnp.cumsum(e)
  short = cum < (energy - _ENERGY_SLACK) * total
  r = jnp.sum(short.astype(jnp.int32)) + 1
  r = jnp.where(total > 0, jnp.minimum(r, s.shape[0]), 0)
  # NaN/inf singular values (non-finite embeddings): −1, not a fake rank.
  return jnp.where(jnp.all(jnp.isfinite(s)), r, -1).astype(jnp.int32)


def rank_at_energy(z: Array, energy: float = 0.95, *, normalize: bool = True) -> Array:
  """Smallest r with Σ_{i≤r} s_i² ≥ energy · Σ_i s_i²  -> int32 scalar.

  ``s`` = :func:`singular_values` (of the normalised rows by default).  1 for
  all-equal and for rank-1 (±z*) embeddings; ⌈energy·n⌉ for n orthonormal
  rows.  A zero matrix gives 0; a non-finite z gives −1 (our choice: an int
  cannot be NaN).  The comparison allows a relative slack of 1e-6 for float
  rounding (our choice).  Scale-invariant (the spectrum is divided by its
  largest value before squaring).

  Example::

      >>> rank_at_energy(jnp.eye(20))   # 19 (19/20 = 95% of the energy)
  """
  _check_energy(energy)
  return _rank_from_sv(singular_values(z, normalize=normalize), energy)


def _class_masks(labels: Array, num_classes: int) -> Array:
  return labels[None, :] == jnp.arange(num_classes)[:, None]  # [k, n]


def per_class_variance(z: Array, labels: Array, num_classes: int) -> Array:
  """:func:`embedding_variance` within each class -> [num_classes].

  ``labels`` [n] int; rows with a label outside [0, num_classes) (e.g. −1,
  unlabelled) are ignored.  A class without samples gives 0 (our choice; no
  NaN).  A class with one sample also gives 0.  Jit-able with a static
  ``num_classes``.

  Example::

      >>> per_class_variance(z, labels, 10)   # [10]
  """
  z = _check_z(z)
  labels = _check_labels(labels, z.shape[0])
  k = _check_num_classes(num_classes)
  u = l2_normalize(z)
  # Segment sums, not a mask product: a NaN row stays in its own class (a
  # 0·NaN product would spread it to all).  Rows outside [0, k) go to an
  # extra segment that is dropped.
  ids = jnp.where((labels >= 0) & (labels < k), labels, k)
  seg = lambda v: jax.ops.segment_sum(v, ids, num_segments=k + 1)[:k]
  count = seg(jnp.ones(u.shape[0], u.dtype))
  mean = seg(u) / jnp.maximum(count, 1.0)[:, None]  # [k, d]
  # Mean of ‖u_i‖² (1, or 0 for a zero row) minus ‖mean‖².
  sq = seg(jnp.sum(jnp.square(u), axis=1)) / jnp.maximum(count, 1.0)
  var = jnp.clip(sq - jnp.sum(jnp.square(mean), axis=1), 0.0, 1.0)
  return jnp.where(count > 0, var, 0.0)


def per_class_rank(
  z: Array, labels: Array, num_classes: int, energy: float = 0.95, *, normalize: bool = True
) -> Array:
  """:func:`rank_at_energy` within each class -> int32 [num_classes].

  Rows of other classes are zeroed (which leaves the class's non-zero
  singular values unchanged), so this jits with a static ``num_classes``.
  A class without samples gives 0 (our choice; no NaN).

  Example::

      >>> per_class_rank(z, labels, 10)   # [10] ints
  """
  z = _check_z(z)
  labels = _check_labels(labels, z.shape[0])
  k = _check_num_classes(num_classes)
  _check_energy(energy)
  if normalize:
    z = l2_normalize(z)
  m = _class_masks(labels, k)  # [k, n]
  # where, not a product: a NaN row stays in its own class.
  zs = jnp.where(m[:, :, None], z[None], 0.0)  # [k, n, d]
  s = jnp.linalg.svd(zs, compute_uv=False)  # [k, r]
  return jax.vmap(lambda sv: _rank_from_sv(sv, energy))(s)


def class_ordered_affinity(z: Array, labels: Array) -> tuple[Array, Array]:
  """Cosine matrix ordered by class -> ([n, n], ordered labels [n]).

  Rows and columns are permuted by a stable argsort of ``labels`` (ties keep
  their batch order), so each class is a diagonal block.

  Example::

      >>> c, y = class_ordered_affinity(z, labels)
      >>> tfjax.plots.plot_affinity_heatmap(c, y, "affinity.png")
  """
  z = _check_z(z)
  labels = _check_labels(labels, z.shape[0])
  order = jnp.argsort(labels, stable=True)
  u = l2_normalize(z)[order]
  return u @ u.T, labels[order]


def summary(
  z: Array,
  labels: Optional[Array] = None,
  num_classes: Optional[int] = None,
  *,
  energy: float = 0.95,
) -> dict[str, float]:
  """Over-fusion numbers as a dict of Python floats (for metrics logging).

  Keys: ``variance``, ``rank95`` (rank at ``energy``), ``top1_energy``
  (share of the largest singular value's energy); with ``labels`` and
  ``num_classes`` also ``class_variance_mean``, ``class_variance_min``,
  ``class_rank95_mean`` over the classes present (0.0 when no sample has a
  label in [0, num_classes)).  Non-finite embeddings give NaN values (never
  a fake "collapse" of 0).  Runs on the host (it returns Python floats; call
  it outside jit).

  Example::

      >>> summary(z, labels, 10)   # {'variance': 0.9, 'rank95': 14.0, ...}
  """
  z = _check_z(z)
  s = singular_values(z)
  e = np.asarray(_energy_shares(s), np.float64)
  finite = bool(np.all(np.isfinite(e)))
  rank = float(_rank_from_sv(s, energy))
  out = {
    "variance": float(embedding_variance(z)),
    "rank95": rank if rank >= 0 else float("nan"),
    "top1_energy": (float(e[0] / e.sum()) if e.sum() > 0 else 0.0) if finite else float("nan"),
  }
  if (labels is None) != (num_classes is None):
    raise ValueError("give both labels and num_classes, or neither")
  if labels is not None:
    labels = _check_labels(labels, z.shape[0])
    k = _check_num_classes(num_classes)
    present = np.asarray(jnp.sum(_class_masks(labels, k), axis=1) > 0)
    var = np.asarray(per_class_variance(z, labels, k))[present]
    rank = np.asarray(per_class_rank(z, labels, k, energy))[present]
    has = bool(present.any())
    out["class_variance_mean"] = float(var.mean()) if has else 0.0
    out["class_variance_min"] = float(var.min()) if has else 0.0
    rank = np.where(rank < 0, np.nan, rank.astype(np.float64))
    out["class_rank95_mean"] = float(rank.mean()) if has else 0.0
  return out
