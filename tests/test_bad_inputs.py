"""No silent wrong results: one table row per bad input, checked against float64.

Each row of ``CASES`` is ``(name, fn, expect)``: ``fn()`` runs the library on a
bad input (NaN/inf, extreme scale, float16/bfloat16, degenerate sizes or
hyper-parameters) and ``expect`` says what must come out:

* ``Ref(value)`` — a number or array from an independent float64 NumPy
  reference (written here, from the formulas in the docstrings);
* ``NaN()`` — ``fn`` returns ``(value, grads)``: the value is NaN and the
  gradient holds NaN (a bad input is never masked to a finite number);
* ``Finite(value)`` — ``fn`` returns ``(value, grads)``: the value matches the
  reference and every gradient entry is finite;
* ``Raises(type, substring)`` — the call raises that exception with that
  substring in its message;
* ``Check(predicate, what)`` — anything else (e.g. where the NaNs sit).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tfjax
from tfjax import diagnostics, losses, plots
from tfjax.affinity import target_affinity
from tfjax.attention import LEAKY_SLOPE, ROW_EPS
from tfjax.blockwise import blockwise_attention, blockwise_jsd_loss
from tfjax.fusion_blocks import FusionBlock
from tfjax.models import TransFusionHead

LOG2 = float(np.log(2.0))


# ----------------------------------------------------------------------------
# Expectations.


@dataclasses.dataclass
class Ref:
  value: Any
  rtol: float = 1e-5
  atol: float = 1e-6

  def check(self, out):
    np.testing.assert_allclose(
      np.asarray(out, np.float64), self.value, rtol=self.rtol, atol=self.atol
    )


@dataclasses.dataclass
class NaN:
  def check(self, out):
    value, grads = out
    assert np.isnan(np.asarray(value, np.float64)).all(), value
    leaves = jax.tree.leaves(grads)
    assert leaves and any(np.isnan(np.asarray(g, np.float64)).any() for g in leaves), (
      "gradient has no NaN"
    )


@dataclasses.dataclass
class Finite:
  value: Any
  rtol: float = 1e-5
  atol: float = 1e-6

  def check(self, out):
    value, grads = out
    np.testing.assert_allclose(
      np.asarray(value, np.float64), self.value, rtol=self.rtol, atol=self.atol
    )
    for g in jax.tree.leaves(grads):
      assert np.isfinite(np.asarray(g, np.float64)).all(), g


@dataclasses.dataclass
class Raises:
  error: type
  match: str


@dataclasses.dataclass
class Check:
  predicate: Callable[[Any], bool]
  what: str

  def check(self, out):
    assert self.predicate(out), self.what


# ----------------------------------------------------------------------------
# Independent float64 references.


def f64(x):
  return np.asarray(x, np.float64)


def np_unit(z):
  z = f64(z)
  norm = np.sqrt(np.sum(z * z, axis=1, keepdims=True))  # fine in float64
  return np.where(norm > 0, z / np.where(norm > 0, norm, 1), 0.0)


def np_act(c, activation):
  if activation == "relu":
    return np.maximum(c, 0.0)
  if activation == "sigmoid":
    return 1 / (1 + np.exp(-c))
  if activation == "leaky_relu":
    return np.where(c > 0, c, LEAKY_SLOPE * c) + LEAKY_SLOPE
  raise ValueError(activation)


def np_adjacency(q, k, activation="relu", offset=0):
  r = np_act(np_unit(q) @ np_unit(k).T, activation) + ROW_EPS
  for i in range(r.shape[0]):
    if 0 <= i + offset < r.shape[1]:
      r[i, i + offset] = 0.0
  return r / r.sum(1, keepdims=True)


def np_target(groups):
  g = np.asarray(groups)
  y = (g[:, None] == g[None, :]).astype(np.float64)
  np.fill_diagonal(y, 0.0)
  s = y.sum(1, keepdims=True)
  return np.where(s > 0, y / np.where(s > 0, s, 1), 0.0)


def np_jsd_loss(a, t):
  a, t = f64(a), f64(t)
  m = (a + t) / 2

  def kl(p):
    safe = np.where(p > 0, p, 1.0)
    return np.sum(np.where(p > 0, p * np.log(safe / np.where(p > 0, m, 1.0)), 0.0), axis=1)

  rows = 0.5 * kl(a) + 0.5 * kl(t)
  valid = t.sum(1) > 0
  return rows[valid].mean()


def np_info_nce(z1, z2, tau, decoupled=False):
  u = np.concatenate([np_unit(z1), np_unit(z2)])
  two_n = len(u)
  s = u @ u.T / tau
  total = 0.0
  for a in range(two_n):
    p = (a + two_n // 2) % two_n
    keep = [k for k in range(two_n) if k != a and not (decoupled and k == p)]
    total += np.log(np.sum(np.exp(s[a, keep]))) - s[a, p]
  return total / two_n


def np_supcon(z, y, tau):
  u = np_unit(z)
  s = u @ u.T / tau
  terms = []
  for i in range(len(u)):
    others = [a for a in range(len(u)) if a != i]
    pos = [p for p in others if y[p] == y[i]]
    if pos:
      lse = np.log(np.sum(np.exp(s[i, others])))
      terms.append(lse - np.mean(s[i, pos]))
  return np.mean(terms) if terms else 0.0


def np_barlow(z1, z2, lam=5e-3, eps=1e-5):
  def std(z):
    z = f64(z)
    return (z - z.mean(0)) / np.sqrt(z.var(0) + eps)

  c = std(z1).T @ std(z2) / len(z1)
  on = np.sum((1 - np.diag(c)) ** 2)
  return on + lam * (np.sum(c**2) - np.sum(np.diag(c) ** 2))


def np_vicreg(z1, z2, sim=25.0, std=25.0, cov=1.0, eps=1e-4):
  z1, z2 = f64(z1), f64(z2)
  d = z1.shape[1]

  def terms(z):
    c = np.cov(z, rowvar=False, ddof=1)
    hinge = np.mean(np.maximum(0, 1 - np.sqrt(np.diag(c) + eps)))
    return hinge, (np.sum(c**2) - np.sum(np.diag(c) ** 2)) / d

  s1, c1 = terms(z1)
  s2, c2 = terms(z2)
  return sim * np.mean((z1 - z2) ** 2) + std * (s1 + s2) / 2 + cov * (c1 + c2)


def np_oar(z, y, anchors):
  u, a = np_unit(z), np_unit(anchors)
  return np.mean([1 - u[i] @ a[y[i]] for i in range(len(u)) if y[i] >= 0])


def np_variance(z):
  u = np_unit(z)
  return np.mean(np.sum(u * u, 1)) - np.sum(u.mean(0) ** 2)


def np_rank(z, energy=0.95):
  s = np.linalg.svd(np_unit(z), compute_uv=False)
  e = np.cumsum(s**2) / np.sum(s**2)
  return int(np.argmax(e >= energy - 1e-6) + 1)


def np_layer_norm(x, scale, bias, eps=1e-6):
  x = f64(x)
  mu = x.mean(1, keepdims=True)
  var = ((x - mu) ** 2).mean(1, keepdims=True)  # two-pass
  return (x - mu) / np.sqrt(var + eps) * f64(scale) + f64(bias)


def np_fusion_block(p, x):
  xh = np_layer_norm(x, p["norm"]["scale"], p["norm"]["bias"])
  dense = lambda name: xh @ f64(p[name]["kernel"]) + f64(p[name]["bias"])
  return np_adjacency(dense("query"), dense("key")) @ dense("value") + xh


# ----------------------------------------------------------------------------
# Inputs.

_rng = np.random.default_rng(0)
X = _rng.normal(size=(8, 6)).astype(np.float32)
GROUPS = np.array([0, 0, 1, 1, 2, 2, 3, 3], np.int32)
GROUPS3 = np.array([0, 0, 0, 0, 1, 1, 1, 1], np.int32)  # 3 positives/row
T = np.asarray(target_affinity(GROUPS))
T3 = np.asarray(target_affinity(GROUPS3))
A = np.asarray(tfjax.adjacency(X, X))
Z1 = _rng.normal(size=(8, 16)).astype(np.float32)
Z2 = (Z1 + 0.3 * _rng.normal(size=(8, 16))).astype(np.float32)
Y = np.array([0, 1, 2, 3, 0, 1, 2, 3], np.int32)
NO_POSITIVE = np.arange(8, dtype=np.int32)
ANCHORS = np.asarray(losses.orthonormal_anchors(jax.random.key(0), 4, 16))
Y_OAR = np.array([0, 1, 2, 3, -1, -1, 2, 1], np.int32)
# float16 rows: norms from 1e-4 up to 6e4, and rows of norm >= 256 (their
# squared norm overflows float16, 65504).
_dirs = _rng.normal(size=(8, 6))
_dirs /= np.linalg.norm(_dirs, axis=1, keepdims=True)
X16_WIDE = (_dirs * np.array([1e-4, 3e-3, 0.5, 7.0, 256.0, 900.0, 2e4, 6e4])[:, None]).astype(
  np.float16
)
X16_BIG = (X * 300).astype(np.float16)
# Views with |entries| up to 6e4 (float16's largest finite value is 65504).
Z16_1 = (Z1 / np.abs(Z1).max() * 6e4).astype(np.float16)
Z16_2 = (Z2 / np.abs(Z2).max() * 6e4).astype(np.float16)
X16_ZERO = X.astype(np.float16).copy()
X16_ZERO[0] = 0
# Row 0 has cosine <= 0 with every other row: the others lie in the half
# space opposite to e_0.
X16_NEGATIVE = np.abs(X).astype(np.float16)
X16_NEGATIVE[:, 0] = np.abs(X16_NEGATIVE[:, 0]) + 0.1
X16_NEGATIVE[0] = 0
X16_NEGATIVE[0, 0] = -1.0


def with_nan(x, i=0, j=0, value=np.nan):
  x = np.array(x, copy=True)
  x[i, j] = value
  return x


def value_and_grads(fn, *args):
  """Value and gradient w.r.t. every positional argument."""
  return jax.value_and_grad(fn, argnums=tuple(range(len(args))))(*args)


def _head_loss(implementation):
  head = TransFusionHead(num_layers=2, implementation=implementation, block_size=3)
  params = head.init(jax.random.key(1), X)

  def loss(x):
    return head.apply(params, x, GROUPS, method=TransFusionHead.loss)

  return lambda: value_and_grads(loss, with_nan(X, 3, 2))


def _fusion_block_offset():
  x = (300.0 + _rng.normal(size=(16, 8))).astype(np.float32)
  block = FusionBlock()
  p = block.init(jax.random.key(2), x)["params"]
  out = f64(block.apply({"params": p}, x))
  want = np_fusion_block(jax.tree.map(np.asarray, p), x)
  return float(np.max(np.abs(out - want)) / np.max(np.abs(want)))


def _callable(name, fn):
  fn.__name__ = name
  return fn


NEGATIVE_ON_GRID = _callable("identity_weights", lambda c: c)
# Negative only on large inputs: passes the 201-cosine grid check, breaks the
# contract on a real batch (8×8 = 64 < 201 entries would not; 40×40 does).
NEGATIVE_ON_DATA = _callable("sneaky_weights", lambda c: jax.nn.relu(c) - 1e-3 * (c.size > 1000))
X40 = _rng.normal(size=(40, 6)).astype(np.float32)

# Scale range in float32: rows whose largest |entry| is s (rounded to float32
# in NumPy, which keeps subnormals).  XLA:CPU flushes entries below float32's
# smallest normal (2^-126) to zero, so a row whose largest |entry| is below
# 2^-126 / 2^-23 = 2^-103 (its flushed entries would weigh more than float32
# rounding), or above 2^126 (the reciprocal XLA divides with is flushed),
# must raise, never give a number.
ROW_MAX_BOUND = 2.0**-103
ROW_MAX_TOP = 2.0**126
SCALES = (1e-45, 1e-40, 1e-38, 1e-37, 5e-32, 1e-30, 1.0, 1e30, 1e37, 1e38, 3e38)
XN = X / np.abs(X).max(axis=1, keepdims=True)  # every row's max is 1
ZN1 = Z1 / np.abs(Z1).max(axis=1, keepdims=True)
ZN2 = Z2 / np.abs(Z2).max(axis=1, keepdims=True)


def scaled(x, s):
  return (f64(x) * s).astype(np.float32)


def scale_expect(x, s, reference, rtol, atol):
  """Ref on the float32 inputs when every row is large enough, else Raises."""
  row_max = np.abs(scaled(x, s)).max(axis=1)
  if (row_max > ROW_MAX_TOP).any():
    return Raises(ValueError, "the reciprocal of its scale is flushed to zero")
  if (row_max >= ROW_MAX_BOUND).all():
    return Ref(reference(), rtol, atol)
  return Raises(ValueError, "are flushed to zero")


# Row 2 of X at 1e-40: subnormal entries only.
X_TINY_ROW = X.copy()
X_TINY_ROW[2] = scaled(XN[2], 1e-40)


def _nan_rows_except(i):
  def ok(a):
    a = np.asarray(a, np.float64)
    others = np.arange(a.shape[0]) != i
    return bool(np.isnan(a[others]).all() and np.isfinite(a[i]).all())

  return ok


def _nan_row_only(i, reference):
  def ok(a):
    a = np.asarray(a, np.float64)
    others = np.arange(a.shape[0]) != i
    return bool(
      np.isnan(a[i]).all() and np.allclose(a[others], reference[others], rtol=1e-5, atol=1e-6)
    )

  return ok


def _all_nan(a):
  return bool(np.isnan(np.asarray(a, np.float64)).all())


# ----------------------------------------------------------------------------
# The table.

CASES = [
  # 1. NaN/inf propagate through every loss (value and gradient).
  (
    "jsd all-NaN adjacency",
    lambda: value_and_grads(losses.jsd_loss, np.full((8, 8), np.nan, np.float32), T),
    NaN(),
  ),
  ("jsd one NaN entry", lambda: value_and_grads(losses.jsd_loss, with_nan(A, 0, 1), T), NaN()),
  (
    "jsd one NaN entry, 3 positives per row",
    lambda: value_and_grads(losses.jsd_loss, with_nan(A, 0, 1), T3),
    NaN(),
  ),
  ("jsd inf entry", lambda: value_and_grads(losses.jsd_loss, with_nan(A, 2, 5, np.inf), T), NaN()),
  (
    "jsd NaN in a row without positives",
    lambda: value_and_grads(
      losses.jsd_loss,
      with_nan(A, 7, 0),
      np.asarray(target_affinity(np.array([0, 0, 1, 1, 2, 2, 3, 4]))),
    ),
    NaN(),
  ),
  ("jsd NaN target entry", lambda: value_and_grads(losses.jsd_loss, A, with_nan(T, 1, 3)), NaN()),
  (
    "jsd under jit, NaN entry",
    lambda: jax.jit(lambda a, t: value_and_grads(losses.jsd_loss, a, t))(with_nan(A, 4, 4), T),
    NaN(),
  ),
  (
    "jsd, 3 positives per row (value in [0, log 2])",
    lambda: losses.jsd_loss(A, T3),
    Ref(np_jsd_loss(A, T3)),
  ),
  ("head.loss (dense), one NaN input", _head_loss("dense"), NaN()),
  ("head.loss (blockwise), one NaN input", _head_loss("blockwise"), NaN()),
  (
    "blockwise_jsd_loss, NaN query in a row without positives",
    lambda: value_and_grads(
      lambda q: blockwise_jsd_loss(q, X, np.array([0, 0, 1, 1, 2, 2, 3, 4]), block_size=3),
      with_nan(X, 7, 1),
    ),
    NaN(),
  ),
  ("info_nce NaN", lambda: value_and_grads(losses.info_nce, with_nan(Z1), Z2), NaN()),
  ("info_nce inf", lambda: value_and_grads(losses.info_nce, Z1, with_nan(Z2, 3, 3, np.inf)), NaN()),
  ("dcl NaN", lambda: value_and_grads(losses.dcl, Z1, with_nan(Z2, 5)), NaN()),
  (
    "supcon NaN, no positive anywhere (was 0)",
    lambda: value_and_grads(lambda z: losses.supcon(z, NO_POSITIVE), with_nan(Z1, 2)),
    NaN(),
  ),
  ("supcon NaN", lambda: value_and_grads(lambda z: losses.supcon(z, Y), with_nan(Z1, 6)), NaN()),
  ("barlow_twins NaN", lambda: value_and_grads(losses.barlow_twins, with_nan(Z1, 1), Z2), NaN()),
  ("vicreg inf", lambda: value_and_grads(losses.vicreg, Z1, with_nan(Z2, 1, 1, -np.inf)), NaN()),
  (
    "oar_loss NaN in an unlabelled row",
    lambda: value_and_grads(lambda z: losses.oar_loss(z, Y_OAR, ANCHORS), with_nan(Z1, 4)),
    NaN(),
  ),
  (
    "with_oar NaN base embeddings",
    lambda: value_and_grads(
      lambda z: losses.with_oar(losses.info_nce(z, Z2), z, Y_OAR, ANCHORS), with_nan(Z1, 0, 4)
    ),
    NaN(),
  ),
  (
    "adjacency NaN key row: every row that sees it is NaN",
    lambda: tfjax.adjacency(X, with_nan(X, 3)),
    Check(
      _nan_rows_except(3),
      "all rows NaN but row 3 (its own key is "
      "excluded): a row's normalisation sums over the NaN column",
    ),
  ),
  (
    "adjacency NaN query row: that row only",
    lambda: tfjax.adjacency(with_nan(X, 3), X),
    Check(
      _nan_row_only(3, np_adjacency(X, X)), "row 3 NaN, the others equal the float64 reference"
    ),
  ),
  (
    "blockwise_attention NaN row",
    lambda: blockwise_attention(with_nan(X, 3), with_nan(X, 3), X, block_size=3),
    Check(
      lambda o: np.isnan(np.asarray(o)).all(),
      "every output row mixes value row 3 (key NaN): all NaN",
    ),
  ),
  (
    "embedding_variance NaN",
    lambda: diagnostics.embedding_variance(with_nan(Z1)),
    Check(_all_nan, "NaN, not a variance"),
  ),
  ("rank_at_energy NaN -> -1", lambda: diagnostics.rank_at_energy(with_nan(Z1)), Ref(-1)),
  (
    "per_class_variance NaN row stays in its class",
    lambda: diagnostics.per_class_variance(with_nan(Z1, 1), Y, 4),
    Check(
      lambda v: (
        np.isnan(np.asarray(v)[1])
        and np.allclose(
          np.asarray(v)[[0, 2, 3]], [np_variance(Z1[Y == c]) for c in (0, 2, 3)], atol=1e-6
        )
      ),
      "class 1 NaN, the other classes equal float64",
    ),
  ),
  (
    "per_class_rank NaN row: -1 for its class only",
    lambda: diagnostics.per_class_rank(with_nan(Z1, 1), Y, 4),
    Ref([np_rank(Z1[Y == 0]), -1, np_rank(Z1[Y == 2]), np_rank(Z1[Y == 3])]),
  ),
  (
    "summary NaN",
    lambda: diagnostics.summary(with_nan(Z1)),
    Check(
      lambda d: np.isnan(d["variance"]) and np.isnan(d["rank95"]),
      "variance and rank95 NaN, no fake collapse",
    ),
  ),
  # 2. Scale invariance from 1e-30 to 1e30 (float32), against float64.
  *[
    (
      f"adjacency at scale {s:g}",
      lambda s=s: tfjax.adjacency(s * X, s * X),
      Ref(np_adjacency(s * f64(X), s * f64(X)), 1e-5, 1e-6),
    )
    for s in (1e-30, 1e20, 1e30)
  ],
  (
    "adjacency leaky_relu at 1e30 against 1e-30 keys",
    lambda: tfjax.adjacency(1e30 * X, 1e-30 * X, activation="leaky_relu"),
    Ref(np_adjacency(X, X, "leaky_relu"), 1e-5, 1e-6),
  ),
  (
    "blockwise_attention at 1e30",
    lambda: blockwise_attention(1e30 * X, 1e30 * X, X, block_size=3),
    Ref(np_adjacency(X, X) @ f64(X), 1e-5, 1e-5),
  ),
  (
    "blockwise_jsd_loss at 1e-30",
    lambda: blockwise_jsd_loss(1e-30 * X, 1e-30 * X, GROUPS, block_size=3),
    Ref(np_jsd_loss(np_adjacency(X, X), np_target(GROUPS)), 1e-5, 1e-6),
  ),
  *[
    (
      f"info_nce at scale {s:g}",
      lambda s=s: losses.info_nce(s * Z1, s * Z2),
      Ref(np_info_nce(s * f64(Z1), s * f64(Z2), 0.1), 1e-4, 1e-6),
    )
    for s in (1e-30, 1e30)
  ],
  (
    "dcl at 1e30",
    lambda: losses.dcl(1e30 * Z1, 1e30 * Z2),
    Ref(np_info_nce(Z1, Z2, 0.1, decoupled=True), 1e-4, 1e-5),
  ),
  ("supcon at 1e-30", lambda: losses.supcon(1e-30 * Z1, Y), Ref(np_supcon(Z1, Y, 0.1), 1e-4, 1e-5)),
  (
    "oar_loss at 1e30",
    lambda: losses.oar_loss(1e30 * Z1, Y_OAR, ANCHORS),
    Ref(np_oar(Z1, Y_OAR, ANCHORS), 1e-5, 1e-6),
  ),
  *[
    (
      f"barlow_twins at scale {s:g}",
      lambda s=s: losses.barlow_twins(s * Z1, s * Z2),
      Ref(np_barlow(s * f64(Z1), s * f64(Z2)), 1e-5, 1e-5),
    )
    for s in (1e-30, 1e-3, 1e30)
  ],
  *[
    (
      f"embedding_variance at scale {s:g}",
      lambda s=s: diagnostics.embedding_variance(s * Z1),
      Ref(np_variance(Z1), 1e-5, 1e-6),
    )
    for s in (1e-30, 1e30)
  ],
  *[
    (
      f"rank_at_energy at scale {s:g}",
      lambda s=s: diagnostics.rank_at_energy(s * Z1),
      Ref(np_rank(Z1)),
    )
    for s in (1e-30, 1e30)
  ],
  # Every row's largest |entry| = s, 1e-45 ... 3e38 (float32's max is
  # 3.4e38): the float64 value on the same float32 inputs, or one error.
  *[
    (
      f"adjacency, rows of largest |entry| {s:g}",
      lambda s=s: tfjax.adjacency(scaled(XN, s), scaled(XN, s)),
      scale_expect(XN, s, lambda s=s: np_adjacency(scaled(XN, s), scaled(XN, s)), 1e-5, 1e-6),
    )
    for s in SCALES
  ],
  *[
    (
      f"info_nce, rows of largest |entry| {s:g}",
      lambda s=s: losses.info_nce(scaled(ZN1, s), scaled(ZN2, s)),
      scale_expect(
        ZN1, s, lambda s=s: np_info_nce(scaled(ZN1, s), scaled(ZN2, s), 0.1), 1e-4, 1e-6
      ),
    )
    for s in SCALES
  ],
  *[
    (
      f"{name}, rows of largest |entry| {s:g}",
      lambda fn=fn, s=s: fn(s),
      scale_expect(ZN1, s, lambda ref=ref, s=s: ref(s), 1e-4, 1e-5),
    )
    for name, fn, ref in (
      (
        "dcl",
        lambda s: losses.dcl(scaled(ZN1, s), scaled(ZN2, s)),
        lambda s: np_info_nce(scaled(ZN1, s), scaled(ZN2, s), 0.1, decoupled=True),
      ),
      (
        "supcon",
        lambda s: losses.supcon(scaled(ZN1, s), Y),
        lambda s: np_supcon(scaled(ZN1, s), Y, 0.1),
      ),
      (
        "oar_loss",
        lambda s: losses.oar_loss(scaled(ZN1, s), Y_OAR, ANCHORS),
        lambda s: np_oar(scaled(ZN1, s), Y_OAR, ANCHORS),
      ),
      (
        "embedding_variance",
        lambda s: diagnostics.embedding_variance(scaled(ZN1, s)),
        lambda s: np_variance(scaled(ZN1, s)),
      ),
    )
    for s in (1e-40, 1e38)
  ],
  *[
    (
      f"blockwise_attention, rows of largest |entry| {s:g}",
      lambda s=s: blockwise_attention(scaled(XN, s), scaled(XN, s), X, block_size=3),
      scale_expect(
        XN, s, lambda s=s: np_adjacency(scaled(XN, s), scaled(XN, s)) @ f64(X), 1e-5, 1e-5
      ),
    )
    for s in (1e-40, 3e38)
  ],
  (
    "l2_normalize, a row of subnormals",
    lambda: tfjax.l2_normalize(X_TINY_ROW),
    Raises(ValueError, "x row 2 has largest |entry|"),
  ),
  (
    "adjacency, one key row of subnormals: names k and the row",
    lambda: tfjax.adjacency(X, X_TINY_ROW),
    Raises(ValueError, "k row 2 has largest |entry|"),
  ),
  (
    "info_nce, one row of subnormals: names z1 and the row",
    lambda: losses.info_nce(X_TINY_ROW, X),
    Raises(ValueError, "row 2 has largest |entry|"),
  ),
  (
    "blockwise_jsd_loss, one row of subnormals: names q and the row",
    lambda: blockwise_jsd_loss(X_TINY_ROW, X_TINY_ROW, GROUPS, block_size=3),
    Raises(ValueError, "q row 2 has largest |entry|"),
  ),
  (
    "adjacency, a row at 1e38: names q and the row",
    lambda: tfjax.adjacency(
      np.where(np.arange(len(X))[:, None] == 1, scaled(XN, 1e38), X).astype(np.float32), X
    ),
    Raises(ValueError, "q row 1 has largest |entry| 1e+38, above"),
  ),
  (
    "singular_values(normalize=False) at 1e30, relative",
    lambda: diagnostics.singular_values(1e30 * Z1, normalize=False) / 1e30,
    Ref(np.linalg.svd(f64(Z1), compute_uv=False), 1e-4, 1e-5),
  ),
  (
    "summary at 1e30",
    lambda: [diagnostics.summary(1e30 * Z1)[k] for k in ("variance", "rank95")],
    Ref([np_variance(Z1), np_rank(Z1)], 1e-5, 1e-6),
  ),
  # float16 / bfloat16: finite, and equal to float64 on the same inputs.
  (
    "adjacency float16, row norms 1e-4 .. 6e4",
    lambda: tfjax.adjacency(X16_WIDE, X16_WIDE),
    Ref(np_adjacency(X16_WIDE, X16_WIDE), 2e-3, 1e-3),
  ),
  (
    "adjacency float16, rows of norm >= 256",
    lambda: tfjax.adjacency(X16_BIG, X16_BIG),
    Ref(np_adjacency(X16_BIG, X16_BIG), 2e-3, 1e-3),
  ),
  (
    "adjacency bfloat16 at 1e30",
    lambda: tfjax.adjacency((1e30 * X).astype(jnp.bfloat16), (1e30 * X).astype(jnp.bfloat16)),
    Ref(
      np_adjacency(
        f64(jnp.asarray(1e30 * X, jnp.bfloat16)), f64(jnp.asarray(1e30 * X, jnp.bfloat16))
      ),
      1e-2,
      2e-3,
    ),
  ),
  (
    "info_nce float16, norms up to 6e4",
    lambda: losses.info_nce(X16_WIDE, X16_WIDE[::-1]),
    Ref(np_info_nce(X16_WIDE, X16_WIDE[::-1], 0.1), 1e-4, 1e-5),
  ),
  (
    "info_nce bfloat16 at 1e-30",
    lambda: losses.info_nce(
      jnp.asarray(1e-30 * Z1, jnp.bfloat16), jnp.asarray(1e-30 * Z2, jnp.bfloat16)
    ),
    Ref(
      np_info_nce(
        f64(jnp.asarray(1e-30 * Z1, jnp.bfloat16)), f64(jnp.asarray(1e-30 * Z2, jnp.bfloat16)), 0.1
      ),
      1e-4,
      1e-5,
    ),
  ),
  (
    "barlow_twins float16, |z| up to 6e4",
    lambda: losses.barlow_twins(Z16_1, Z16_2),
    Ref(np_barlow(Z16_1, Z16_2), 1e-4, 1e-4),
  ),
  (
    "vicreg float16, rows of norm >= 256",
    lambda: losses.vicreg((Z1 * 100).astype(np.float16), (Z2 * 100).astype(np.float16)),
    Ref(np_vicreg((Z1 * 100).astype(np.float16), (Z2 * 100).astype(np.float16)), 1e-4, 1e-3),
  ),
  (
    "oar_loss float16, norms up to 6e4",
    lambda: losses.oar_loss(np.pad(X16_WIDE, ((0, 0), (0, 10))), Y_OAR, ANCHORS),
    Ref(np_oar(np.pad(X16_WIDE, ((0, 0), (0, 10))), Y_OAR, ANCHORS), 1e-4, 1e-4),
  ),
  (
    "embedding_variance float16, norms 1e-4 .. 6e4",
    lambda: diagnostics.embedding_variance(X16_WIDE),
    Ref(np_variance(X16_WIDE), 1e-4, 1e-5),
  ),
  # 3. float16 edge cases: finite values and gradients.
  (
    "adjacency float16 zero row: uniform, finite gradient",
    lambda: value_and_grads(
      lambda q: jnp.sum(tfjax.adjacency(q, q)[:, :3].astype(jnp.float32) ** 2), X16_ZERO
    ),
    Finite(np.sum(np_adjacency(X16_ZERO, X16_ZERO)[:, :3] ** 2), 2e-3, 1e-4),
  ),
  (
    "adjacency float16 row with all cosines <= 0: uniform, finite gradient",
    lambda: value_and_grads(
      lambda q: jnp.sum(tfjax.adjacency(q, q)[0].astype(jnp.float32) * jnp.arange(8.0)),
      X16_NEGATIVE,
    ),
    Finite(np_adjacency(X16_NEGATIVE, X16_NEGATIVE)[0] @ np.arange(8.0), 2e-3, 1e-4),
  ),
  (
    "blockwise_jsd_loss float16 zero row: finite gradient",
    lambda: value_and_grads(lambda q: blockwise_jsd_loss(q, q, GROUPS, block_size=3), X16_ZERO),
    Finite(np_jsd_loss(np_adjacency(X16_ZERO, X16_ZERO), np_target(GROUPS)), 2e-3, 2e-4),
  ),
  (
    "info_nce float16 zero row: finite gradient",
    lambda: value_and_grads(losses.info_nce, X16_ZERO, X16_BIG),
    Finite(np_info_nce(X16_ZERO, X16_BIG, 0.1), 1e-4, 1e-5),
  ),
  # 4. Degenerate sizes and hyper-parameters: clear errors.
  (
    "adjacency n = 1",
    lambda: tfjax.adjacency(X[:1], X[:1]),
    Raises(ValueError, "n = 1 row(s) against m = 1 key"),
  ),
  (
    "blockwise_attention n = 1",
    lambda: blockwise_attention(X[:1], X[:1], X[:1]),
    Raises(ValueError, "n = 1 row(s)"),
  ),
  (
    "blockwise_jsd_loss n = 1",
    lambda: blockwise_jsd_loss(X[:1], X[:1], GROUPS[:1]),
    Raises(ValueError, "n = 1 row(s)"),
  ),
  (
    "barlow_twins n = 1",
    lambda: losses.barlow_twins(Z1[:1], Z2[:1]),
    Raises(ValueError, "at least 2 rows"),
  ),
  (
    "barlow_twins lambda_offdiag = -1",
    lambda: losses.barlow_twins(Z1, Z2, lambda_offdiag=-1),
    Raises(ValueError, "lambda_offdiag must be >= 0"),
  ),
  (
    "barlow_twins lambda_offdiag = nan",
    lambda: losses.barlow_twins(Z1, Z2, lambda_offdiag=float("nan")),
    Raises(ValueError, "lambda_offdiag must be finite"),
  ),
  (
    "barlow_twins eps = 0",
    lambda: losses.barlow_twins(Z1, Z2, eps=0.0),
    Raises(ValueError, "eps must be > 0"),
  ),
  ("vicreg eps = 0", lambda: losses.vicreg(Z1, Z2, eps=0.0), Raises(ValueError, "eps must be > 0")),
  (
    "vicreg eps = -1",
    lambda: losses.vicreg(Z1, Z2, eps=-1.0),
    Raises(ValueError, "eps must be > 0"),
  ),
  (
    "vicreg std_coeff = inf",
    lambda: losses.vicreg(Z1, Z2, std_coeff=float("inf")),
    Raises(ValueError, "std_coeff must be finite"),
  ),
  ("vicreg n = 1", lambda: losses.vicreg(Z1[:1], Z2[:1]), Raises(ValueError, "at least 2 rows")),
  ("dcl n = 1", lambda: losses.dcl(Z1[:1], Z2[:1]), Raises(ValueError, "at least 2 sources")),
  *[
    (
      f"{name} temperature = {t}",
      lambda fn=fn, t=t: fn(t),
      Raises(ValueError, "temperature must be > 0 and finite"),
    )
    for name, fn in (
      ("info_nce", lambda t: losses.info_nce(Z1, Z2, temperature=t)),
      ("dcl", lambda t: losses.dcl(Z1, Z2, temperature=t)),
      ("supcon", lambda t: losses.supcon(Z1, Y, temperature=t)),
    )
    for t in (0.0, -0.5, float("nan"), float("inf"))
  ],
  (
    "with_oar weight = -1",
    lambda: losses.with_oar(0.0, Z1, Y_OAR, ANCHORS, weight=-1.0),
    Raises(ValueError, "weight must be >= 0"),
  ),
  (
    "orthonormal_anchors dtype int32",
    lambda: losses.orthonormal_anchors(jax.random.key(0), 3, 8, dtype=jnp.int32),
    Raises(TypeError, "floating dtype"),
  ),
  (
    "jsd rows summing to 2",
    lambda: losses.jsd_loss(2 * A, T),
    Raises(ValueError, "adjacency rows must be probabilities"),
  ),
  (
    "jsd raw cosines (negative entries)",
    lambda: losses.jsd_loss(X @ X.T, T),
    Raises(ValueError, "adjacency must hold probabilities"),
  ),
  (
    "jsd unnormalised target",
    lambda: losses.jsd_loss(A, (T > 0).astype(np.float32) * 3),
    Raises(ValueError, "target rows must be probabilities"),
  ),
  (
    "plot_spectrum([])",
    lambda: plots.plot_spectrum([], "/nonexistent/never.png"),
    Raises(ValueError, "empty"),
  ),
  (
    "plot_spectrum({})",
    lambda: plots.plot_spectrum({}, "/nonexistent/never.png"),
    Raises(ValueError, "at least one spectrum"),
  ),
  (
    "plot_spectrum with NaN",
    lambda: plots.plot_spectrum([1.0, np.nan], "/nonexistent/n.png"),
    Raises(ValueError, "NaN/inf"),
  ),
  (
    "plot_affinity_heatmap empty",
    lambda: plots.plot_affinity_heatmap(np.zeros((0, 0)), [], "/nonexistent/n.png"),
    Raises(ValueError, "empty"),
  ),
  (
    "adjacency, callable activation with negative weights",
    lambda: tfjax.adjacency(X, X, activation=NEGATIVE_ON_GRID),
    Raises(ValueError, "activation 'identity_weights'"),
  ),
  (
    "blockwise_attention, callable activation with negative weights",
    lambda: blockwise_attention(X, X, X, activation=NEGATIVE_ON_GRID),
    Raises(ValueError, "activation 'identity_weights'"),
  ),
  (
    "head, callable activation with negative weights",
    lambda: TransFusionHead(num_layers=1, activation=NEGATIVE_ON_GRID).init(jax.random.key(0), X),
    Raises(ValueError, "activation 'identity_weights'"),
  ),
  (
    "adjacency, activation negative on the data (concrete)",
    lambda: tfjax.adjacency(X40, X40, activation=NEGATIVE_ON_DATA),
    Raises(ValueError, "activation 'sneaky_weights' gave negative weights"),
  ),
  (
    "adjacency, activation negative on the data (jit): NaN, not < 0",
    lambda: jax.jit(lambda q: tfjax.adjacency(q, q, activation=NEGATIVE_ON_DATA))(X40),
    Check(
      lambda a: np.isnan(np.asarray(a)).any() and not (np.asarray(a) < 0).any(),
      "NaN rows, no negative entry",
    ),
  ),
  (
    "activation that is neither a name nor a callable",
    lambda: tfjax.adjacency(X, X, activation=3),
    Raises(TypeError, "activation must be a name or a callable"),
  ),
  # 5. LayerNorm precision: a fusion block at a common offset of 300.
  (
    "FusionBlock at offset 300, relative error vs float64",
    _fusion_block_offset,
    Check(lambda err: err < 1e-3, "two-pass LayerNorm: relative error < 1e-3"),
  ),
]


@pytest.mark.parametrize("name, fn, expect", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, fn, expect):
  del name
  if isinstance(expect, Raises):
    with pytest.raises(expect.error) as info:
      fn()
    assert expect.match in str(info.value), str(info.value)
  else:
    expect.check(fn())


def test_case_names_are_unique():
  names = [c[0] for c in CASES]
  assert len(names) == len(set(names))


def test_jsd_three_positives_reference_lies_in_range():
  # The reference row itself must be a proper JSD value: guards the table's
  # "value in [0, log 2]" row against a wrong reference.
  want = np_jsd_loss(A, T3)
  assert 0.0 <= want <= LOG2
  assert 0.0 <= float(losses.jsd_loss(A, T3)) <= LOG2
