"""Tests of tfjax.attention against an independent float64 NumPy reference."""

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tfjax
from tfjax.attention import LEAKY_SLOPE, ROW_EPS


def np_adjacency(q, k, activation="relu", offset=0):
  q = np.asarray(q, np.float64)
  k = np.asarray(k, np.float64)
  qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
  kn = k / np.maximum(np.linalg.norm(k, axis=1, keepdims=True), 1e-12)
  c = qn @ kn.T
  if activation == "relu":
    r = np.maximum(c, 0)
  elif activation == "sigmoid":
    r = 1 / (1 + np.exp(-c))
  else:
    r = np.where(c > 0, c, LEAKY_SLOPE * c) + LEAKY_SLOPE
  r = r + ROW_EPS
  for i in range(r.shape[0]):
    if 0 <= i + offset < r.shape[1]:
      r[i, i + offset] = 0
  return r / r.sum(1, keepdims=True)


class AdjacencyTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("relu", "sigmoid", "leaky_relu")
  def test_matches_numpy(self, activation):
    rng = np.random.default_rng()
    q = rng.normal(size=(9, 5)).astype(np.float32)
    k = rng.normal(size=(9, 5)).astype(np.float32)
    fn = self.variant(lambda q, k: tfjax.adjacency(q, k, activation=activation))
    a = fn(q, k)
    chex.assert_shape(a, (9, 9))
    chex.assert_trees_all_close(
      a, np_adjacency(q, k, activation).astype(np.float32), rtol=1e-5, atol=1e-6
    )

  @chex.variants(with_jit=True, without_jit=True)
  def test_rows_sum_to_one_zero_diagonal_with_offset(self):
    rng = np.random.default_rng()
    q = rng.normal(size=(4, 6)).astype(np.float32)
    k = rng.normal(size=(12, 6)).astype(np.float32)
    fn = self.variant(lambda q, k, off: tfjax.adjacency(q, k, diagonal_offset=off))
    for offset in (0, 4, 8):
      a = np.asarray(fn(q, k, offset))
      chex.assert_shape(a, (4, 12))
      np.testing.assert_allclose(a.sum(1), 1.0, rtol=1e-6)
      np.testing.assert_array_equal(a[np.arange(4), np.arange(4) + offset], 0.0)
      self.assertTrue((a >= 0).all())
      np.testing.assert_allclose(a, np_adjacency(q, k, offset=offset), atol=1e-6)

  def test_device_rows_equal_rows_of_full_adjacency(self):
    rng = np.random.default_rng()
    x = rng.normal(size=(12, 3)).astype(np.float32)
    full = tfjax.adjacency(x, x)
    for start in (0, 4, 8):
      part = tfjax.adjacency(x[start : start + 4], x, diagonal_offset=start)
      np.testing.assert_allclose(part, full[start : start + 4], atol=1e-7)

  @chex.variants(with_jit=True, without_jit=True)
  def test_permutation_equivariance(self):
    rng = np.random.default_rng()
    x = rng.normal(size=(10, 4)).astype(np.float32)
    perm = rng.permutation(10)
    fn = self.variant(tfjax.adjacency)
    a = fn(x, x)
    a_perm = fn(x[perm], x[perm])
    np.testing.assert_allclose(a_perm, np.asarray(a)[perm][:, perm], atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_zero_row_and_all_negative_row_are_uniform(self):
    k = np.array([[1.0, 0.0], [0.5, 0.5], [1.0, 0.2], [0.9, 0.1]], np.float32)
    q = np.array([[0.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
    a = np.asarray(self.variant(tfjax.adjacency)(q, k))
    self.assertTrue(np.isfinite(a).all())
    # Row 0 (zero query) and row 1 (all cosines < 0) have no ReLU weight:
    # uniform over the three columns other than their own.
    np.testing.assert_allclose(a[0], [0, 1 / 3, 1 / 3, 1 / 3], atol=1e-6)
    np.testing.assert_allclose(a[1], [1 / 3, 0, 1 / 3, 1 / 3], atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_relu_attention_matches_numpy(self):
    rng = np.random.default_rng()
    q, k = rng.normal(size=(2, 7, 3)).astype(np.float32)
    v = rng.normal(size=(7, 5)).astype(np.float32)
    out = self.variant(tfjax.relu_attention)(q, k, v)
    chex.assert_shape(out, (7, 5))
    np.testing.assert_allclose(out, np_adjacency(q, k) @ v, rtol=1e-5, atol=1e-5)

  def test_custom_activation_callable(self):
    x = jnp.eye(3)
    a = tfjax.adjacency(x, x, activation=lambda c: jnp.ones_like(c))
    np.testing.assert_allclose(a, (1 - np.eye(3)) / 2, atol=1e-6)


class AttentionErrorsTest(parameterized.TestCase):
  def test_width_mismatch(self):
    with pytest.raises(ValueError, match="same width"):
      tfjax.adjacency(jnp.ones((3, 4)), jnp.ones((3, 5)))

  def test_not_2d(self):
    with pytest.raises(AssertionError, match=r"rank 1 .*q must be a 2-D array"):
      tfjax.adjacency(jnp.ones((3,)), jnp.ones((3, 5)))
    with pytest.raises(AssertionError, match=r"k must be a 2-D array"):
      tfjax.adjacency(jnp.ones((3, 5)), jnp.ones((1, 3, 5)))
    with pytest.raises(AssertionError, match=r"v must be a 2-D array"):
      tfjax.relu_attention(jnp.ones((3, 2)), jnp.ones((3, 2)), jnp.ones((3,)))

  def test_integer_input(self):
    with pytest.raises(AssertionError, match=r"int32.*q must be floating point"):
      tfjax.adjacency(jnp.ones((3, 2), jnp.int32), jnp.ones((3, 2)))
    with pytest.raises(AssertionError, match="k must be floating point"):
      tfjax.adjacency(jnp.ones((3, 2)), jnp.ones((3, 2), jnp.int32))
    with pytest.raises(AssertionError, match="v must be floating point"):
      tfjax.relu_attention(jnp.ones((3, 2)), jnp.ones((3, 2)), jnp.ones((3, 2), jnp.int32))

  def test_value_rows(self):
    with pytest.raises(ValueError, match="same number of rows"):
      tfjax.relu_attention(jnp.ones((3, 2)), jnp.ones((3, 2)), jnp.ones((4, 2)))

  def test_unknown_activation(self):
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
      tfjax.adjacency(jnp.ones((3, 2)), jnp.ones((3, 2)), activation="gelu")


def test_l2_normalize_zero_row_finite_gradient():
  g = jax.grad(lambda x: tfjax.l2_normalize(x).sum())(jnp.zeros((2, 3)))
  assert np.isfinite(np.asarray(g)).all()


def test_l2_normalize_is_scale_safe_and_exact_for_nonzero_rows():
  rng = np.random.default_rng(11)
  x = rng.normal(size=(5, 7))
  want = x / np.linalg.norm(x, axis=1, keepdims=True)
  for scale in (1e-30, 1e-20, 1.0, 1e30, 1e37):  # float32 normal range
    got = tfjax.l2_normalize(jnp.asarray(x * scale, jnp.float32))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  # float16: a row of norm 300 has a squared norm above float16's maximum.
  x16 = jnp.asarray(x * 300 / np.abs(x).max(), jnp.float16)
  got = tfjax.l2_normalize(x16)
  assert got.dtype == jnp.float16
  x64 = np.asarray(x16, np.float64)
  np.testing.assert_allclose(
    got, x64 / np.linalg.norm(x64, axis=1, keepdims=True), rtol=1e-3, atol=1e-3
  )


def test_l2_normalize_zero_row_and_eps_floor():
  # Without eps: a zero row stays zero with a zero gradient (our choice).
  x = jnp.array([[3.0, 4.0], [0.0, 0.0]])
  d = jnp.array([[1.0, 2.0], [5.0, -1.0]])
  out, pull = jax.vjp(tfjax.l2_normalize, x)
  np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]], atol=1e-7)
  (g,) = pull(d)
  # d/dx (x/‖x‖) = (I − x̂x̂ᵀ)/‖x‖ on the first row.
  u = np.array([0.6, 0.8])
  np.testing.assert_allclose(g[0], (np.eye(2) - np.outer(u, u)) @ [1, 2] / 5, atol=1e-7)
  np.testing.assert_array_equal(g[1], 0.0)
  # With eps: x / max(‖x‖, eps), so a row below eps is scaled by 1/eps.
  small = jnp.array([[3e-3, 4e-3]])
  np.testing.assert_allclose(tfjax.l2_normalize(small, eps=0.1), small / 0.1, rtol=1e-6)
  np.testing.assert_allclose(tfjax.l2_normalize(small, eps=1e-6), [[0.6, 0.8]], rtol=1e-6)
  np.testing.assert_allclose(
    jax.grad(lambda z: tfjax.l2_normalize(z, eps=0.1).sum())(small), [[10.0, 10.0]], rtol=1e-6
  )


def test_normalize_parts_and_its_backward_match_l2_normalize():
  from tfjax.normalize import l2_normalize, normalize_parts
  from tfjax.blockwise import _normalize_bwd

  rng = np.random.default_rng(7)
  x = rng.normal(size=(6, 5)).astype(np.float32)
  x[2] = 0.0  # below eps: r = 1/eps
  x_hat, r, on = jax.jit(normalize_parts)(jnp.asarray(x))
  chex.assert_shape([x_hat, r, on], [(6, 5), (6, 1), (6, 1)])
  x64 = x.astype(np.float64)
  norm = np.linalg.norm(x64, axis=1, keepdims=True)
  np.testing.assert_allclose(x_hat, x64 / np.maximum(norm, 1e-12), rtol=1e-6)
  np.testing.assert_array_equal(on[:, 0], norm[:, 0] > 1e-12)
  d = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
  (want,) = jax.vjp(l2_normalize, jnp.asarray(x))[1](d)
  got = _normalize_bwd(x_hat, r, on, d)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert np.isfinite(np.asarray(got)).all()
