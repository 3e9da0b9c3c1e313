"""Single-device tests of tfjax.losses against float64 NumPy references."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest

from tfjax import losses
from tfjax.affinity import target_affinity
from tfjax.attention import adjacency

# float32 compute against float64 references.
RTOL, ATOL = 1e-5, 1e-5


# ----------------------------------------------------------------------------
# Independent float64 references (plain loops, written from the papers).


def _unit(z):
  z = np.asarray(z, np.float64)
  return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def np_info_nce(z1, z2, tau):
  u = np.concatenate([_unit(z1), _unit(z2)])
  two_n = len(u)
  n = two_n // 2
  total = 0.0
  for a in range(two_n):
    p = (a + n) % two_n
    denom = sum(np.exp(u[a] @ u[k] / tau) for k in range(two_n) if k != a)
    total += -np.log(np.exp(u[a] @ u[p] / tau) / denom)
  return total / two_n


def np_dcl(z1, z2, tau):
  u = np.concatenate([_unit(z1), _unit(z2)])
  two_n = len(u)
  n = two_n // 2
  total = 0.0
  for a in range(two_n):
    p = (a + n) % two_n
    denom = sum(np.exp(u[a] @ u[k] / tau) for k in range(two_n) if k not in (a, p))
    total += -u[a] @ u[p] / tau + np.log(denom)
  return total / two_n


def np_supcon(z, y, tau):
  u = _unit(z)
  n = len(u)
  terms = []
  for i in range(n):
    others = [a for a in range(n) if a != i]
    pos = [p for p in others if y[p] == y[i]]
    if not pos:
      continue
    log_denom = np.log(sum(np.exp(u[i] @ u[a] / tau) for a in others))
    terms.append(-np.mean([u[i] @ u[p] / tau - log_denom for p in pos]))
  return float(np.mean(terms)) if terms else 0.0


def np_barlow(z1, z2, lam, eps=1e-5):
  def std(z):
    z = np.asarray(z, np.float64)
    return (z - z.mean(0)) / np.sqrt(z.var(0) + eps)  # biased variance

  a, b = std(z1), std(z2)
  c = a.T @ b / len(a)
  d = c.shape[0]
  on = sum((1 - c[i, i]) ** 2 for i in range(d))
  off = sum(c[i, j] ** 2 for i in range(d) for j in range(d) if i != j)
  return on + lam * off


def np_vicreg(z1, z2, sim=25.0, std=25.0, cov=1.0, eps=1e-4):
  z1 = np.asarray(z1, np.float64)
  z2 = np.asarray(z2, np.float64)
  n, d = z1.shape
  inv = np.mean((z1 - z2) ** 2)

  def terms(z):
    c = np.cov(z, rowvar=False, ddof=1)
    s = np.sqrt(np.var(z, axis=0, ddof=1) + eps)
    off = c - np.diag(np.diag(c))
    return np.mean(np.maximum(0, 1 - s)), np.sum(off**2) / d

  s1, c1 = terms(z1)
  s2, c2 = terms(z2)
  return sim * inv + std * (s1 + s2) / 2 + cov * (c1 + c2)


def np_oar(z, y, anchors):
  u = _unit(z)
  a = _unit(anchors)
  vals = [1 - u[i] @ a[y[i]] for i in range(len(u)) if y[i] >= 0]
  return float(np.mean(vals)) if vals else 0.0


def _views(seed, n=6, d=5, noise=0.5):
  rng = np.random.default_rng(seed)
  z1 = rng.normal(size=(n, d)).astype(np.float32)
  z2 = (z1 + noise * rng.normal(size=(n, d))).astype(np.float32)
  return z1, z2


# ----------------------------------------------------------------------------
# Random inputs, with and without jit.


class LossesVsNumpyTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_two_view_losses(self):
    z1, z2 = _views(0)
    fn = self.variant(
      lambda a, b: (
        losses.info_nce(a, b, temperature=0.2),
        losses.dcl(a, b, temperature=0.2),
        losses.barlow_twins(a, b, lambda_offdiag=0.1),
        losses.vicreg(a, b),
      )
    )
    got = fn(z1, z2)
    for g in got:
      chex.assert_shape(g, ())
    np.testing.assert_allclose(got[0], np_info_nce(z1, z2, 0.2), RTOL, ATOL)
    np.testing.assert_allclose(got[1], np_dcl(z1, z2, 0.2), RTOL, ATOL)
    np.testing.assert_allclose(got[2], np_barlow(z1, z2, 0.1), 1e-4, 1e-4)
    np.testing.assert_allclose(got[3], np_vicreg(z1, z2), 1e-5, 1e-4)

  @chex.variants(with_jit=True, without_jit=True)
  def test_label_losses(self):
    rng = np.random.default_rng(1)
    z = rng.normal(size=(10, 6)).astype(np.float32)
    # Class 3 has a single sample: that row has no positive and is left out.
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 3], np.int32)
    # OAR: a few unlabelled (−1) rows.
    y_oar = np.array([0, -1, 2, 0, 1, -1, 3, 1, 2, -1], np.int32)
    anchors = np.asarray(losses.orthonormal_anchors(jax.random.key(3), 4, 6))
    fn = self.variant(
      lambda z, y, y_oar, a: (losses.supcon(z, y, temperature=0.3), losses.oar_loss(z, y_oar, a))
    )
    sc, oar = fn(z, y, y_oar, anchors)
    np.testing.assert_allclose(sc, np_supcon(z, y, 0.3), RTOL, ATOL)
    np.testing.assert_allclose(oar, np_oar(z, y_oar, anchors), RTOL, ATOL)


def test_edge_cases_are_finite():
  # A zero row (normalisation guard), no positive at all (supcon) and no
  # labelled sample (OAR): finite values and gradients, 0 where documented.
  # One jit compile for all of it (eager differentiation is slow on CPU).
  z1, z2 = _views(2, n=4, d=3)
  z1[1] = 0.0
  y = np.arange(4, dtype=np.int32)  # no positive
  unl = -np.ones(4, np.int32)
  a = np.asarray(losses.orthonormal_anchors(jax.random.key(0), 2, 3))

  def all_losses(p, q):
    return (
      losses.info_nce(p, q)
      + losses.dcl(p, q)
      + losses.barlow_twins(p, q)
      + losses.vicreg(p, q)
      + losses.supcon(p, y)
      + losses.oar_loss(p, unl, a)
    )

  @jax.jit
  def run(p, q):
    return (
      jax.value_and_grad(all_losses, argnums=(0, 1))(p, q),
      losses.supcon(p, y),
      losses.oar_loss(p, unl, a),
      jax.grad(lambda r: losses.oar_loss(r, unl, a))(p),
    )

  (val, grads), sc, oar, g_oar = run(z1, z2)
  assert np.isfinite(val)
  for g in grads:
    assert np.all(np.isfinite(g))
  assert float(sc) == 0.0
  assert float(oar) == 0.0
  np.testing.assert_array_equal(g_oar, 0.0)  # nothing labelled: no pull


# ----------------------------------------------------------------------------
# Known values at simple points.


def test_known_values_orthogonal_embeddings():
  n, tau = 4, 0.5
  e = np.eye(6, dtype=np.float32)[:n] * 3.0  # unnormalised, orthogonal
  # NT-Xent: positive cosine 1, the 2N−2 negatives cosine 0.
  want = np.log(1 + (2 * n - 2) * np.exp(-1 / tau))
  np.testing.assert_allclose(losses.info_nce(e, e, temperature=tau), want, rtol=1e-6)
  # DCL: −1/τ + log(2N−2).
  np.testing.assert_allclose(
    losses.dcl(e, e, temperature=tau), -1 / tau + np.log(2 * n - 2), rtol=1e-6
  )
  # SupCon with source ids on the flattened views = NT-Xent.
  z = np.concatenate([e, e])
  ids = np.concatenate([np.arange(n), np.arange(n)]).astype(np.int32)
  np.testing.assert_allclose(losses.supcon(z, ids, temperature=tau), want, rtol=1e-6)


def test_known_values_redundancy_losses():
  # Columns of a 4×4 Hadamard matrix (minus the constant one): zero mean,
  # biased variance 1, mutually orthogonal features.
  h = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], np.float32)[:, 1:]
  eps = 1e-5
  # Barlow Twins with z2 = −z1: C = −I/(1+eps), loss = d (1 + 1/(1+eps))².
  np.testing.assert_allclose(losses.barlow_twins(h, -h), 3 * (1 + 1 / (1 + eps)) ** 2, rtol=1e-6)
  # VICReg with z1 = z2 = h/2: no invariance or covariance term; unbiased
  # variance (1/4)(4/3) = 1/3, so the variance hinge is 25 (1 − sqrt(1/3+eps)).
  want = 25.0 * (1 - np.sqrt(1 / 3 + 1e-4))
  np.testing.assert_allclose(losses.vicreg(h / 2, h / 2), want, rtol=1e-6)
  # With unit variance or more, VICReg is exactly 0 here.
  assert float(losses.vicreg(h, h)) == 0.0


def test_known_values_oar():
  a = losses.orthonormal_anchors(jax.random.key(0), 3, 5)
  y = jnp.array([0, 1, 2], jnp.int32)
  np.testing.assert_allclose(losses.oar_loss(2.0 * a, y, a), 0.0, atol=1e-6)
  np.testing.assert_allclose(losses.oar_loss(-a, y, a), 2.0, atol=1e-6)
  # Each row on another class's anchor: orthogonal, cos = 0.
  np.testing.assert_allclose(losses.oar_loss(a[jnp.array([1, 2, 0])], y, a), 1.0, atol=1e-6)
  # Averages over views: z = [view1; view2] with repeated labels.
  z = jnp.concatenate([a, -a])
  yy = jnp.concatenate([y, y])
  np.testing.assert_allclose(losses.oar_loss(z, yy, a), 1.0, atol=1e-6)


# ----------------------------------------------------------------------------
# Anchors.


def test_orthonormal_anchors():
  a = losses.orthonormal_anchors(jax.random.key(7), 5, 9)
  chex.assert_shape(a, (5, 9))
  np.testing.assert_allclose(a @ a.T, np.eye(5), atol=1e-6)
  b = losses.orthonormal_anchors(jax.random.key(7), 5, 9)
  np.testing.assert_array_equal(a, b)  # deterministic
  c = losses.orthonormal_anchors(jax.random.key(8), 5, 9)
  assert not np.allclose(a, c)
  full = losses.orthonormal_anchors(jax.random.key(1), 4, 4)  # k = D
  np.testing.assert_allclose(full @ full.T, np.eye(4), atol=1e-6)
  with pytest.raises(ValueError, match="num_classes must be <= dim"):
    losses.orthonormal_anchors(jax.random.key(0), 5, 4)
  with pytest.raises(ValueError, match=">= 1"):
    losses.orthonormal_anchors(jax.random.key(0), 0, 4)
  with pytest.raises(TypeError, match="num_classes must be a Python int"):
    losses.orthonormal_anchors(jax.random.key(0), 2.0, 4)


# ----------------------------------------------------------------------------
# CLOA Theorem 3.1: over-fused configurations are stationary for InfoNCE,
# not for OAR.


def _collapsed(kind, n=6, d=4, seed=0):
  rng = np.random.default_rng(seed)
  v = rng.normal(size=d)
  v /= np.linalg.norm(v)
  if kind == "equal":
    z = np.tile(v, (n, 1))
  else:  # rank-1: ±z* with a random sign per row
    signs = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    signs[:2] = [1.0, -1.0]  # make sure both signs occur
    z = signs[:, None] * v[None, :]
  return z.astype(np.float32)


@jax.jit
def _stationarity_grads(z, y, a):
  """Gradients w.r.t. the (unnormalised) embeddings, both views = z."""
  g1, g2 = jax.grad(lambda p, q: losses.info_nce(p, q, temperature=0.1), argnums=(0, 1))(z, z)
  g_infonce = jnp.sqrt(jnp.sum(g1**2) + jnp.sum(g2**2))
  g_dcl = jax.grad(lambda p: losses.dcl(p, z, temperature=0.1))(z)
  g_oar = jax.grad(lambda p: losses.oar_loss(p, y, a))(z)
  return g_infonce, g_dcl, g_oar


@pytest.mark.parametrize("kind", ["equal", "rank1"])
def test_theorem_3_1_stationary_points(kind):
  z = _collapsed(kind)
  n = z.shape[0]
  a = losses.orthonormal_anchors(jax.random.key(0), 3, z.shape[1])
  y = jnp.arange(n, dtype=jnp.int32) % 3
  g_infonce, g_dcl, g_oar = _stationarity_grads(z, y, a)
  assert g_infonce < 1e-5, g_infonce
  assert float(jnp.linalg.norm(g_dcl)) < 1e-5
  assert float(jnp.linalg.norm(g_oar)) > 1e-2
  # Stationary, not optimal: a spread-out batch of the same size is lower.
  spread = np.random.default_rng(1).normal(size=z.shape).astype(np.float32)
  assert float(losses.info_nce(spread, spread)) < float(losses.info_nce(z, z))


# ----------------------------------------------------------------------------
# OAR composes with TransFusion's JSD loss (and any base loss).


def test_with_oar_composes_with_jsd():
  rng = np.random.default_rng(5)
  n, d = 8, 6
  z = rng.normal(size=(n, d)).astype(np.float32)
  groups = jnp.array([0, 1, 2, 3, 0, 1, 2, 3], jnp.int32)
  y = jnp.array([0, -1, 2, 1, 0, -1, 2, 1], jnp.int32)
  anchors = losses.orthonormal_anchors(jax.random.key(2), 3, d)
  target = target_affinity(groups)

  def total(z, weight):
    base = losses.jsd_loss(adjacency(z, z), target)
    return losses.with_oar(base, z, y, anchors, weight=weight)

  def jsd_only(z):
    return losses.jsd_loss(adjacency(z, z), target)

  def oar_only(z):
    return losses.oar_loss(z, y, anchors)

  @jax.jit
  def run(z):
    return (
      jax.value_and_grad(total)(z, 0.5),
      jsd_only(z),
      jax.grad(jsd_only)(z),
      jax.grad(oar_only)(z),
    )

  (val, grad), jsd, g_jsd, g_oar = run(z)
  np.testing.assert_allclose(
    val, jsd + 0.5 * np_oar(z, np.asarray(y), np.asarray(anchors)), rtol=1e-5
  )
  np.testing.assert_allclose(grad, g_jsd + 0.5 * g_oar, atol=1e-6)
  assert float(jnp.linalg.norm(g_oar)) > 1e-2
  assert losses.jsd_loss is __import__("tfjax.affinity").affinity.jsd_loss


# ----------------------------------------------------------------------------
# Clear errors.


def test_errors():
  z1, z2 = _views(0)
  a = losses.orthonormal_anchors(jax.random.key(0), 3, z1.shape[1])
  y = np.array([0, 1, 2, 0, 1, 2], np.int32)
  with pytest.raises(AssertionError, match="two views must have the same shape"):
    losses.info_nce(z1, z2[:, :4])
  for fn in (losses.dcl, losses.barlow_twins, losses.vicreg):
    with pytest.raises(AssertionError, match="two views must have the same shape"):
      fn(z1, z2[:5])
  for t in (0.0, -0.1):
    with pytest.raises(ValueError, match="temperature"):
      losses.info_nce(z1, z2, temperature=t)
    with pytest.raises(ValueError, match="temperature"):
      losses.supcon(z1, y, temperature=t)
    with pytest.raises(ValueError, match="temperature"):
      losses.dcl(z1, z2, temperature=t)
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
    losses.oar_loss(z1, np.array([0, 1, 3, 0, 1, 2], np.int32), a)
  with pytest.raises(ValueError, match="labels must lie"):
    losses.oar_loss(z1, np.array([0, 1, -2, 0, 1, 2], np.int32), a)
  with pytest.raises(AssertionError, match="labels must be integers"):
    losses.oar_loss(z1, y.astype(np.float32), a)
  with pytest.raises(AssertionError, match="labels must be integers"):
    losses.supcon(z1, y.astype(np.float32))
  with pytest.raises(AssertionError, match=r"labels must have shape \[n\] = \(6,\)"):
    losses.supcon(z1, y[:5])
  with pytest.raises(AssertionError, match=r"anchors must be a 2-D array"):
    losses.oar_loss(z1, y, a[0])
  with pytest.raises(AssertionError, match="temperature must be a scalar"):
    losses.info_nce(z1, z2, temperature=np.array([0.1, 0.2]))
  with pytest.raises(ValueError, match="non-empty"):
    losses.info_nce(z1[:, :0], z2[:, :0])
  with pytest.raises(ValueError, match="width"):
    losses.oar_loss(z1, y, a[:, :4])
  with pytest.raises(AssertionError, match=r"rank 1 .*z1 must be a 2-D array"):
    losses.info_nce(z1[0], z2[0])
  with pytest.raises(AssertionError, match=r"int32.*z1 must be floating point"):
    losses.info_nce(z1.astype(np.int32), z2.astype(np.int32))
  with pytest.raises(AssertionError, match="z must be floating point"):
    losses.supcon(z1.astype(np.int32), y)
  with pytest.raises(ValueError, match="at least 2"):
    losses.dcl(z1[:1], z2[:1])
  with pytest.raises(ValueError, match="at least 2"):
    losses.vicreg(z1[:1], z2[:1])


def test_traced_out_of_range_labels_are_masked():
  # Under jit the labels cannot be checked: rows with a label outside [0, k)
  # count as unlabelled (never clipped onto another class's anchor).
  z1, _ = _views(0)
  a = losses.orthonormal_anchors(jax.random.key(0), 3, z1.shape[1])
  bad = np.array([0, 7, 2, -5, 1, 3], np.int32)
  masked = np.array([0, -1, 2, -1, 1, -1], np.int32)
  got = jax.jit(losses.oar_loss)(z1, bad, a)
  np.testing.assert_allclose(got, np_oar(z1, masked, np.asarray(a)), 1e-5)


if __name__ == "__main__":
  absltest.main()
