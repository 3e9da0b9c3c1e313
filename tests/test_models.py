"""Tests of the Flax modules: shapes, determinism, pmap rows, and training."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tfjax.fusion_blocks import FusionBlock
from tfjax.models import TransFusionHead


def clusters(key, num_clusters, per_cluster, dim, noise):
  k1, k2 = jax.random.split(key)
  centres = jax.random.normal(k1, (num_clusters, dim))
  labels = jnp.repeat(jnp.arange(num_clusters), per_cluster)
  x = centres[labels] + noise * jax.random.normal(k2, (labels.shape[0], dim))
  return x, labels.astype(jnp.int32)


class HeadTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_shapes_and_rows(self):
    head = TransFusionHead(num_layers=3, features=6)
    x = jax.random.normal(jax.random.key(0), (10, 5))
    params = head.init(jax.random.key(1), x)
    a = self.variant(head.apply)(params, x)
    chex.assert_shape(a, (10, 10))
    np.testing.assert_allclose(np.asarray(a).sum(1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(np.diag(a), 0.0)
    fused = self.variant(lambda p, x: head.apply(p, x, method=TransFusionHead.fuse))(params, x)
    chex.assert_shape(fused, (10, 5))

  def test_deterministic_init_and_param_shapes(self):
    head = TransFusionHead(num_layers=2)
    x = jnp.ones((4, 3))
    p1 = head.init(jax.random.key(7), x)
    p2 = head.init(jax.random.key(7), x)
    chex.assert_trees_all_equal(p1, p2)
    p3 = head.init(jax.random.key(8), x)
    self.assertFalse(
      np.allclose(
        p1["params"]["fusion_0"]["query"]["kernel"], p3["params"]["fusion_0"]["query"]["kernel"]
      )
    )
    self.assertEqual(set(p1["params"]), {"fusion_0", "adjacency"})
    self.assertNotIn("value", p1["params"]["adjacency"])  # truncated block

  def test_fusion_block_matches_formula(self):
    block = FusionBlock()
    x = jax.random.normal(jax.random.key(0), (7, 4))
    p = block.init(jax.random.key(1), x)["params"]
    xh = np.asarray(x, np.float64)
    xh = (xh - xh.mean(1, keepdims=True)) / np.sqrt(xh.var(1, keepdims=True) + 1e-6)
    xh = xh * np.asarray(p["norm"]["scale"]) + np.asarray(p["norm"]["bias"])
    dense = lambda name: xh @ np.asarray(p[name]["kernel"]) + np.asarray(p[name]["bias"])
    q, k, v = dense("query"), dense("key"), dense("value")
    from tests.test_attention import np_adjacency

    expected = np_adjacency(q, k) @ v + xh
    out, state = block.apply({"params": p}, x, mutable=["intermediates"])
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    chex.assert_shape(state["intermediates"]["adjacency"][0], (7, 7))

  def test_permutation_equivariance(self):
    head = TransFusionHead(num_layers=3)
    x = jax.random.normal(jax.random.key(0), (9, 4))
    params = head.init(jax.random.key(1), x)
    perm = np.random.default_rng().permutation(9)
    a = np.asarray(head.apply(params, x))
    np.testing.assert_allclose(head.apply(params, x[perm]), a[perm][:, perm], atol=1e-5)

  def test_bad_input(self):
    head = TransFusionHead(num_layers=2)
    with pytest.raises(ValueError, match=r"\[n, d\]"):
      head.init(jax.random.key(0), jnp.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="num_layers"):
      TransFusionHead(num_layers=0).init(jax.random.key(0), jnp.ones((2, 3)))


@pytest.mark.parametrize("implementation", ["dense", "blockwise"])
def test_layer_norm_is_two_pass_at_a_large_offset(implementation):
  # x = 300 ± 1: the one-pass variance E[x²] − E[x]² cancels catastrophically
  # in float32 (about 2e-2 relative error after one block); the two-pass
  # variance keeps the block within 1e-3 of float64.
  from tests.test_attention import np_adjacency

  x = 300.0 + np.random.default_rng(3).normal(size=(16, 8)).astype(np.float32)
  block = FusionBlock(implementation=implementation, block_size=5)
  p = block.init(jax.random.key(1), x)["params"]
  x64 = np.asarray(x, np.float64)
  mu = x64.mean(1, keepdims=True)
  var = ((x64 - mu) ** 2).mean(1, keepdims=True)
  xh = (x64 - mu) / np.sqrt(var + 1e-6) * np.asarray(p["norm"]["scale"]) + np.asarray(
    p["norm"]["bias"]
  )
  dense = lambda name: (
    xh @ np.asarray(p[name]["kernel"], np.float64) + np.asarray(p[name]["bias"], np.float64)
  )
  want = np_adjacency(dense("query"), dense("key")) @ dense("value") + xh
  out = np.asarray(block.apply({"params": p}, x), np.float64)
  assert np.max(np.abs(out - want)) / np.max(np.abs(want)) < 1e-3
  # The truncated block's LayerNorm too: its adjacency against float64.
  final = TransFusionHead(num_layers=1, implementation=implementation)
  pf = final.init(jax.random.key(2), x)["params"]["adjacency"]
  ln = (x64 - mu) / np.sqrt(var + 1e-6) * np.asarray(pf["norm"]["scale"]) + np.asarray(
    pf["norm"]["bias"]
  )
  proj = lambda name: (
    ln @ np.asarray(pf[name]["kernel"], np.float64) + np.asarray(pf[name]["bias"], np.float64)
  )
  a = final.apply({"params": {"adjacency": pf}}, x)
  np.testing.assert_allclose(a, np_adjacency(proj("query"), proj("key")), atol=1e-4)


def test_pmap_rows_and_loss_equal_single_device():
  n_dev, n_local = 4, 3
  head_1 = TransFusionHead(num_layers=3)
  head_p = TransFusionHead(num_layers=3, axis_name="batch")
  x = jax.random.normal(jax.random.key(0), (n_dev * n_local, 5))
  groups = jnp.tile(jnp.arange(6, dtype=jnp.int32), 2)
  params = head_1.init(jax.random.key(1), x)
  a = head_1.apply(params, x)
  loss = head_1.apply(params, x, groups, method=TransFusionHead.loss)

  def per_device(p, xs, gs):
    return (head_p.apply(p, xs), head_p.apply(p, xs, gs, method=TransFusionHead.loss))

  a_p, loss_p = jax.pmap(per_device, axis_name="batch", in_axes=(None, 0, 0))(
    params, x.reshape(n_dev, n_local, 5), groups.reshape(n_dev, n_local)
  )
  chex.assert_shape(a_p, (n_dev, n_local, n_dev * n_local))
  np.testing.assert_allclose(np.asarray(a_p).reshape(-1, n_dev * n_local), a, atol=1e-6)
  np.testing.assert_allclose(loss_p, np.full(n_dev, loss), rtol=1e-6)


@pytest.mark.slow
def test_head_learns_gaussian_clusters():
  """Supervised JSD training puts each row's mass on its own cluster."""
  num_clusters, per_cluster = 4, 8
  x, labels = clusters(jax.random.key(0), num_clusters, per_cluster, dim=16, noise=1.0)
  head = TransFusionHead(num_layers=3)
  params = head.init(jax.random.key(1), x)
  opt = optax.adam(1e-2)
  opt_state = opt.init(params)

  def loss_fn(p, x):
    return head.apply(p, x, labels, method=TransFusionHead.loss)

  @jax.jit
  def step(p, s, x):
    loss, g = jax.value_and_grad(loss_fn)(p, x)
    updates, s = opt.update(g, s, p)
    return optax.apply_updates(p, updates), s, loss

  same = np.asarray(labels[:, None] == labels[None, :])
  a0 = np.asarray(head.apply(params, x))
  mass0 = (a0 * same).sum(1).mean()
  first = float(loss_fn(params, x))
  for i in range(150):
    # Fresh noise each step: the head must learn the clusters, not the points.
    xi, _ = clusters(jax.random.key(0), num_clusters, per_cluster, 16, 0.0)
    xi = xi + 1.0 * jax.random.normal(jax.random.key(100 + i), xi.shape)
    params, opt_state, loss = step(params, opt_state, xi)
  x_test, _ = clusters(jax.random.key(0), num_clusters, per_cluster, 16, 0.0)
  x_test = x_test + 1.0 * jax.random.normal(jax.random.key(99999), x_test.shape)
  last = float(loss_fn(params, x_test))
  a = np.asarray(head.apply(params, x_test))
  mass = (a * same).sum(1).mean()
  print(f"JSD {first:.3f} -> {last:.3f}; same-cluster mass {mass0:.3f} -> {mass:.3f}")
  assert last < 0.5 * first
  assert mass > 0.9, mass
  assert mass > mass0 + 0.3
