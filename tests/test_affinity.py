"""Tests of the target affinity and the JSD loss against float64 NumPy."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import tfjax


def np_target(groups, labels=None):
  n = len(groups)
  y = np.zeros((n, n))
  for i in range(n):
    for j in range(n):
      if i == j:
        continue
      same = groups[i] == groups[j]
      if labels is not None and labels[i] >= 0 and labels[j] >= 0:
        same = same or labels[i] == labels[j]
      y[i, j] = float(same)
  s = y.sum(1, keepdims=True)
  return np.where(s > 0, y / np.where(s > 0, s, 1), 0.0)


def np_jsd_rows(a, t):
  a = np.asarray(a, np.float64)
  t = np.asarray(t, np.float64)
  out = []
  for ai, ti in zip(a, t):
    m = (ai + ti) / 2
    kl_a = sum(x * np.log(x / y) for x, y in zip(ai, m) if x > 0)
    kl_t = sum(x * np.log(x / y) for x, y in zip(ti, m) if x > 0)
    out.append(0.5 * kl_a + 0.5 * kl_t)
  return np.array(out)


def np_jsd_loss(a, t):
  rows = np_jsd_rows(a, t)
  valid = np.asarray(t).sum(1) > 0
  return rows[valid].mean() if valid.any() else 0.0


def random_rows(rng, n, m, zeros=0.3):
  x = rng.random((n, m)) * (rng.random((n, m)) > zeros)
  x[:, 0] += 1e-3  # no empty row
  return (x / x.sum(1, keepdims=True)).astype(np.float32)


class TargetTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_supervised_and_semi_supervised(self):
    rng = np.random.default_rng()
    groups = rng.integers(0, 5, size=13).astype(np.int32)
    labels = np.where(rng.random(13) < 0.5, rng.integers(0, 3, 13), -1).astype(np.int32)
    t = self.variant(tfjax.target_affinity)(groups)
    chex.assert_shape(t, (13, 13))
    np.testing.assert_allclose(t, np_target(groups), atol=1e-7)
    t2 = self.variant(tfjax.target_affinity)(groups, labels)
    np.testing.assert_allclose(t2, np_target(groups, labels), atol=1e-7)

  def test_no_positive_row_is_zero(self):
    t = tfjax.target_affinity(jnp.array([0, 0, 1]))
    np.testing.assert_array_equal(t[2], 0.0)
    np.testing.assert_array_equal(np.diag(t), 0.0)
    np.testing.assert_array_equal(tfjax.valid_rows(t), [True, True, False])

  def test_device_rows_with_columns(self):
    rng = np.random.default_rng()
    groups = rng.integers(0, 4, size=12).astype(np.int32)
    labels = rng.integers(-1, 3, size=12).astype(np.int32)
    full = np_target(groups, labels)
    part = tfjax.target_affinity(
      groups[4:8], labels[4:8], column_groups=groups, column_labels=labels, diagonal_offset=4
    )
    np.testing.assert_allclose(part, full[4:8], atol=1e-7)

  def test_errors(self):
    with pytest.raises(AssertionError, match="groups must be integers"):
      tfjax.target_affinity(jnp.array([0.0, 1.0]))
    with pytest.raises(AssertionError, match=r"labels and groups must have the same length"):
      tfjax.target_affinity(jnp.array([0, 1, 2]), jnp.array([0, 1]))
    with pytest.raises(AssertionError, match=r"rank 2 .*groups must be a 1-D"):
      tfjax.target_affinity(jnp.zeros((2, 2), jnp.int32))
    with pytest.raises(AssertionError, match="column_groups must be integers"):
      tfjax.target_affinity(jnp.arange(2), column_groups=jnp.array([0.0, 1.0]))
    with pytest.raises(AssertionError, match="column_labels must be a 1-D"):
      tfjax.target_affinity(
        jnp.arange(2), jnp.arange(2), column_labels=jnp.zeros((2, 1), jnp.int32)
      )
    with pytest.raises(
      AssertionError, match="column_labels and column_groups must have the same length"
    ):
      tfjax.target_affinity(
        jnp.arange(2), jnp.arange(2), column_groups=jnp.arange(3), column_labels=jnp.arange(2)
      )
    with pytest.raises(ValueError, match="for both rows and columns"):
      tfjax.target_affinity(jnp.arange(2), column_labels=jnp.arange(2))

  @parameterized.parameters("groups", "labels", "column_groups", "column_labels")
  def test_every_id_is_checked(self, name):
    ids = dict(
      groups=jnp.arange(2),
      labels=jnp.arange(2),
      column_groups=jnp.arange(2),
      column_labels=jnp.arange(2),
    )
    bad_rank = dict(ids, **{name: jnp.zeros((2, 1), jnp.int32)})
    with pytest.raises(AssertionError, match=rf"rank 2 .*\[{name} must be a 1-D"):
      tfjax.positive_mask(**bad_rank)
    bad_dtype = dict(ids, **{name: jnp.zeros((2,), jnp.float32)})
    with pytest.raises(AssertionError, match=rf"float32.*\[{name} must be integers"):
      tfjax.positive_mask(**bad_dtype)


class JSDTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_numpy(self):
    rng = np.random.default_rng()
    groups = rng.integers(0, 4, size=11).astype(np.int32)
    t = np_target(groups).astype(np.float32)
    a = random_rows(rng, 11, 11)
    loss = self.variant(tfjax.jsd_loss)(a, t)
    chex.assert_shape(loss, ())
    np.testing.assert_allclose(loss, np_jsd_loss(a, t), rtol=1e-5, atol=1e-7)
    rows = self.variant(tfjax.row_jsd)(a, t)
    chex.assert_shape(rows, (11,))
    np.testing.assert_allclose(rows, np_jsd_rows(a, t), rtol=1e-5, atol=1e-7)

  def test_zero_exactly_when_equal_on_valid_rows(self):
    rng = np.random.default_rng()
    groups = np.array([0, 0, 1, 1, 2, 3], np.int32)  # rows 4, 5 have no positive
    t = np_target(groups).astype(np.float32)
    a = t.copy()
    a[4:] = random_rows(rng, 2, 6)  # whatever the invalid rows hold
    self.assertEqual(float(tfjax.jsd_loss(a, t)), 0.0)
    a[0] = random_rows(rng, 1, 6)[0]  # a valid row differs
    self.assertGreater(float(tfjax.jsd_loss(a, t)), 1e-4)

  def test_bounds(self):
    rng = np.random.default_rng()
    for _ in range(5):
      groups = rng.integers(0, 3, size=9).astype(np.int32)
      t = np_target(groups).astype(np.float32)
      rows = np.asarray(tfjax.row_jsd(random_rows(rng, 9, 9, zeros=0.7), t))
      self.assertTrue(((rows >= -1e-7) & (rows <= np.log(2) + 1e-6)).all())
    # Disjoint supports reach log 2 exactly.
    a = np.array([[0.0, 1.0, 0.0]], np.float32)
    t = np.array([[0.0, 0.0, 1.0]], np.float32)
    np.testing.assert_allclose(tfjax.jsd_loss(a, t), np.log(2), rtol=1e-6)

  def test_no_valid_row_gives_zero_not_nan(self):
    t = tfjax.target_affinity(jnp.arange(4, dtype=jnp.int32))
    a = tfjax.adjacency(jnp.eye(4), jnp.eye(4))
    self.assertEqual(float(tfjax.jsd_loss(a, t)), 0.0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_finite_gradients_at_edge_cases(self):
    # Row 0: a zero query.  Row 1: every cosine negative (ReLU is all zero).
    q = jnp.array(
      [[0.0, 0.0, 0.0], [-1.0, -1.0, -1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.5, 1.0, 1.0]]
    )
    k = jnp.array(
      [[1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.5, 1.0, 1.0]]
    )
    t = tfjax.target_affinity(jnp.array([0, 0, 1, 1, 1]))
    fn = lambda q, k: tfjax.jsd_loss(tfjax.adjacency(q, k), t)
    grads = self.variant(jax.grad(fn, argnums=(0, 1)))(q, k)
    for g in grads:
      self.assertTrue(np.isfinite(np.asarray(g)).all())
    self.assertGreater(float(jnp.abs(grads[0][2:]).sum()), 0.0)

  def test_shape_errors(self):
    with pytest.raises(
      AssertionError, match=r"\(4, 4\), \(4, 3\).*target must have the adjacency's shape"
    ):
      tfjax.jsd_loss(jnp.ones((4, 4)) / 4, jnp.ones((4, 3)))
    with pytest.raises(AssertionError, match=r"adjacency must be 2-D"):
      tfjax.jsd_loss(jnp.ones((4,)), jnp.ones((4,)))


def test_jsd_global_mean_under_pmap():
  n_dev = 4
  rng = np.random.default_rng()
  groups = rng.integers(0, 5, size=16).astype(np.int32)
  t = np_target(groups).astype(np.float32)
  a = random_rows(rng, 16, 16)
  per_device = jax.pmap(lambda a, t: tfjax.jsd_loss(a, t, axis_name="d"), axis_name="d")(
    a.reshape(n_dev, 4, 16), t.reshape(n_dev, 4, 16)
  )
  np.testing.assert_allclose(per_device, np.full(n_dev, np_jsd_loss(a, t)), rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16, jnp.bfloat16])
def test_eager_probability_check_accepts_real_adjacencies(dtype):
  # No false alarm: the adjacency of a wide batch, in each dtype, passes the
  # eager row check, and the loss equals float64 on the same (rounded) rows.
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(64, 8)), dtype)
  groups = jnp.arange(64, dtype=jnp.int32) // 4
  a = tfjax.adjacency(x[:16], x, diagonal_offset=0)
  t = tfjax.target_affinity(groups[:16], column_groups=groups)
  t = t.astype(dtype)
  got = tfjax.jsd_loss(a, t)
  want = np_jsd_loss(np.asarray(a, np.float64), np.asarray(t, np.float64))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert 0.0 <= float(got) <= np.log(2)


def test_traced_jsd_is_nan_for_negative_entries_not_checked():
  # Under jit the values cannot be checked; a negative entry must not give a
  # plausible number: x·log x of a negative entry is NaN.
  t = tfjax.target_affinity(jnp.array([0, 0, 1, 1]))
  a = np.asarray(t, np.float32) * 1.5
  a[:, 0] -= 0.5 * (np.arange(4) != 0)  # rows still sum to 1
  loss = jax.jit(tfjax.jsd_loss)(a, t)
  assert np.isnan(float(loss))
  with pytest.raises(ValueError, match="negative entry"):
    tfjax.jsd_loss(a, t)
