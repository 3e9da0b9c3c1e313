"""Blockwise attention / fused JSD loss == the dense path, values and gradients.

References: an independent float64 NumPy implementation written here (values,
and central finite differences for directional derivatives), and the dense
JAX path (elementwise gradients).  Block sizes never divide the key count,
so the padded last block is always exercised.

Tolerances (float32 computations): values vs float64 NumPy atol 2e-6 /
rtol 1e-5; gradients blockwise vs dense rtol 1e-4 with atol 1e-6 × the
gradient's largest entry (1e-5 × under pmap, where cross-device sums
reorder the additions); directional derivatives vs float64 central
differences (h = 1e-4) rtol 2e-3; bfloat16 compute vs float32: loss within
2e-2 (bf16 keeps 8 mantissa bits).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tfjax.affinity import jsd_loss, target_affinity
from tfjax.attention import adjacency, relu_attention
from tfjax.blockwise import blockwise_attention, blockwise_jsd_loss, blockwise_row_jsd
from tfjax.fusion_blocks import AdjacencyBlock, FusionBlock
from tfjax.models import TransFusionHead

ACTS = ("relu", "sigmoid", "leaky_relu")


# ----------------------------------------------------------------------------
# float64 NumPy reference
# ----------------------------------------------------------------------------
def np_act(name, c):
  if name == "relu":
    return np.maximum(c, 0.0)
  if name == "sigmoid":
    return 1.0 / (1.0 + np.exp(-c))
  return np.maximum(c, 0.01 * c) + 0.01


def np_adjacency(q, k, act, offset):
  q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
  qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
  kn = k / np.maximum(np.linalg.norm(k, axis=1, keepdims=True), 1e-12)
  n, m = len(q), len(k)
  self_ = (np.arange(n)[:, None] + offset) == np.arange(m)[None, :]
  w = np.where(self_, 0.0, np_act(act, qn @ kn.T) + 1e-10)
  return w / w.sum(1, keepdims=True)


def np_attention(q, k, v, act, offset):
  return np_adjacency(q, k, act, offset) @ np.asarray(v, np.float64)


def np_row_jsd(q, k, gi, li, gj, lj, act, offset):
  a = np_adjacency(q, k, act, offset)
  n, m = a.shape
  pos = gi[:, None] == gj[None, :]
  if li is not None:
    pos |= (li[:, None] >= 0) & (lj[None, :] >= 0) & (li[:, None] == lj[None, :])
  pos &= (np.arange(n)[:, None] + offset) != np.arange(m)[None, :]
  c = pos.sum(1)
  t = pos / np.maximum(c, 1)[:, None]
  mid = (a + t) / 2

  def xlogx(x):
    return np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0)

  jsd = (0.5 * (xlogx(a) + xlogx(t)) - xlogx(mid)).sum(1)
  return jsd, c


def np_jsd_loss(*args):
  jsd, c = np_row_jsd(*args)
  valid = c > 0
  return jsd[valid].sum() / max(valid.sum(), 1)


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------
def _data(seed, n, m, h, hv=5):
  kq, kk, kv, kr = jax.random.split(jax.random.key(seed), 4)
  return (
    jax.random.normal(kq, (n, h)),
    jax.random.normal(kk, (m, h)),
    jax.random.normal(kv, (m, hv)),
    jax.random.normal(kr, (n, hv)),
  )


def _ids(seed, n, m, offset, with_labels):
  """Row/column ids: the rows are columns offset..offset+n-1 (as under pmap)."""
  rng = np.random.default_rng(seed)
  gj = rng.integers(0, m // 2, size=m).astype(np.int32)
  lj = (
    np.where(rng.random(m) < 0.5, rng.integers(0, 3, size=m), -1).astype(np.int32)
    if with_labels
    else None
  )
  gj[offset] = 10**6  # row 0 has no positive at all
  if lj is not None:
    lj[offset] = -1
  gi = gj[offset : offset + n]
  li = None if lj is None else lj[offset : offset + n]
  return gi, li, gj, lj


def assert_grads_close(got, want, atol=1e-6):
  """Elementwise rtol 1e-4, atol ``atol`` × the largest |entry| of each leaf."""
  got, want = jax.tree.leaves(got), jax.tree.leaves(want)
  assert len(got) == len(want)
  for g, w in zip(got, want):
    g, w = np.asarray(g), np.asarray(w)
    assert g.shape == w.shape and np.all(np.isfinite(g))
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=atol * np.abs(w).max())


# ----------------------------------------------------------------------------
# values against float64 NumPy (chex variants: jit and no jit)
# ----------------------------------------------------------------------------
class BlockwiseValuesTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_attention_and_row_jsd_match_numpy(self):
    n, m, offset = 13, 23, 6  # blocks of 5 and 7 don't divide 23
    q, k, v, _ = _data(0, n, m, 8)
    gi, li, gj, lj = _ids(0, n, m, offset, True)

    @self.variant
    def fn(q, k, v):
      out = blockwise_attention(q, k, v, activation="sigmoid", diagonal_offset=offset, block_size=5)
      return out, blockwise_row_jsd(
        q, k, gi, li, column_groups=gj, column_labels=lj, diagonal_offset=offset, block_size=7
      )

    out, (jsd, count) = fn(q, k, v)
    chex.assert_shape(out, (n, 5))
    chex.assert_shape([jsd, count], (n,))
    np.testing.assert_allclose(out, np_attention(q, k, v, "sigmoid", offset), rtol=1e-5, atol=2e-6)
    want_jsd, want_c = np_row_jsd(q, k, gi, li, gj, lj, "relu", offset)
    np.testing.assert_array_equal(count, want_c)
    valid = want_c > 0
    assert valid.sum() >= 3 and (~valid).sum() >= 1
    np.testing.assert_allclose(np.asarray(jsd)[valid], want_jsd[valid], rtol=1e-5, atol=2e-6)


# ----------------------------------------------------------------------------
# gradients: blockwise == dense, and == float64 finite differences
# ----------------------------------------------------------------------------
@pytest.mark.parametrize(
  "act,with_labels", [("relu", True), ("sigmoid", False), ("leaky_relu", True)]
)
def test_values_and_grads_equal_dense(act, with_labels):
  """Attention (block 6 ∤ 29 keys) and JSD loss (block 8 ∤ 29) vs dense."""
  n, m, offset = 17, 29, 4
  q, k, v, r = _data(2, n, m, 8)
  gi, li, gj, lj = _ids(2, n, m, offset, with_labels)

  def attention(fn, **kw):
    return lambda q, k, v: jnp.sum(r * fn(q, k, v, activation=act, diagonal_offset=offset, **kw))

  def blockwise_loss(q, k):
    return blockwise_jsd_loss(
      q,
      k,
      gi,
      li,
      column_groups=gj,
      column_labels=lj,
      activation=act,
      diagonal_offset=offset,
      block_size=8,
    )

  def dense_loss(q, k):
    a = adjacency(q, k, activation=act, diagonal_offset=offset)
    t = target_affinity(gi, li, column_groups=gj, column_labels=lj, diagonal_offset=offset)
    return jsd_loss(a, t)

  @jax.jit
  def everything(q, k, v):
    vg = jax.value_and_grad
    return (
      vg(attention(blockwise_attention, block_size=6), argnums=(0, 1, 2))(q, k, v),
      vg(attention(relu_attention), argnums=(0, 1, 2))(q, k, v),
      vg(blockwise_loss, argnums=(0, 1))(q, k),
      vg(dense_loss, argnums=(0, 1))(q, k),
    )

  (ab, gab), (ad, gad), (lb, glb), (ld, gld) = everything(q, k, v)
  np.testing.assert_allclose(ab, ad, rtol=1e-5)
  assert_grads_close(gab, gad)
  np.testing.assert_allclose(
    lb, np_jsd_loss(q, k, gi, li, gj, lj, act, offset), rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(lb, ld, rtol=1e-5)
  assert_grads_close(glb, gld)
  if act != "relu":
    return
  # Directional derivatives of both against float64 central differences.
  rng = np.random.default_rng(4)
  dirs = [rng.normal(size=x.shape) for x in (q, k, v)]
  f64 = [np.asarray(x, np.float64) for x in (q, k, v)]
  h = 1e-4
  refs = (
    lambda s: np.sum(
      np.asarray(r, np.float64) * np_attention(*(x + s * d for x, d in zip(f64, dirs)), act, offset)
    ),
    lambda s: np_jsd_loss(f64[0] + s * dirs[0], f64[1] + s * dirs[1], gi, li, gj, lj, act, offset),
  )
  for grads, ref in zip((gab, glb), refs):
    got = sum(np.sum(np.asarray(g, np.float64) * d) for g, d in zip(grads, dirs))
    want = (ref(h) - ref(-h)) / (2 * h)
    assert abs(want) > 1e-3
    np.testing.assert_allclose(got, want, rtol=2e-3)


# ----------------------------------------------------------------------------
# edge cases: zero query row, all-negative cosines
# ----------------------------------------------------------------------------
def test_finite_gradients_at_zero_row_and_all_negative_cosines():
  n = 10
  u = jax.random.normal(jax.random.key(5), (1, 4))
  noise = 0.01 * jax.random.normal(jax.random.key(6), (n, 4))
  cases = {
    "zero_query_row": (
      jax.random.normal(jax.random.key(7), (n, 4)).at[2].set(0.0),
      jax.random.normal(jax.random.key(8), (n, 4)),
    ),
    "all_negative": (u + noise, -u + noise),
  }
  groups = jnp.arange(n) // 2
  v = jax.random.normal(jax.random.key(9), (n, 3))
  grad = lambda f, q, k: jax.value_and_grad(f, argnums=(0, 1))(q, k)

  @jax.jit
  def everything(q, k):
    return (
      grad(lambda q, k: jnp.sum(jnp.tanh(blockwise_attention(q, k, v, block_size=3))), q, k),
      grad(lambda q, k: jnp.sum(jnp.tanh(relu_attention(q, k, v))), q, k),
      grad(lambda q, k: blockwise_jsd_loss(q, k, groups, block_size=3), q, k),
      grad(lambda q, k: jsd_loss(adjacency(q, k), target_affinity(groups)), q, k),
    )

  assert np.all(
    np.isclose(np_adjacency(*cases["all_negative"], "relu", 0)[~np.eye(n, dtype=bool)], 1 / (n - 1))
  )  # relu ≡ 0: uniform rows
  for name, (q, k) in cases.items():
    (ab, gab), (ad, gad), (lb, glb), (ld, gld) = everything(q, k)
    for g in jax.tree.leaves((ab, gab, lb, glb)):
      assert np.all(np.isfinite(g)), name
    np.testing.assert_allclose(ab, ad, rtol=1e-5)
    np.testing.assert_allclose(lb, ld, rtol=1e-6)
    assert_grads_close(gab, gad)
    assert_grads_close(glb, gld)


# ----------------------------------------------------------------------------
# the Flax head: whole-model equality, pmap, bf16, no n×N intermediates
# ----------------------------------------------------------------------------
def _head_data(n=26, d=6, seed=10):
  x = jax.random.normal(jax.random.key(seed), (n, d))
  groups = jnp.arange(n, dtype=jnp.int32) // 2
  labels = jnp.where(jnp.arange(n) % 3 == 0, jnp.arange(n) % 4, -1).astype(jnp.int32)
  return x, groups, labels


def test_head_loss_and_param_grads_equal_dense_and_bfloat16():
  x, groups, labels = _head_data()
  dense = TransFusionHead(num_layers=2)
  block = TransFusionHead(num_layers=2, implementation="blockwise", block_size=8)
  bf16 = TransFusionHead(
    num_layers=2, implementation="blockwise", block_size=8, compute_dtype=jnp.bfloat16
  )
  params = jax.jit(dense.init)(jax.random.key(0), x)
  assert jax.tree.structure(jax.eval_shape(block.init, jax.random.key(0), x)) == jax.tree.structure(
    params
  )

  @jax.jit
  def everything(p):
    def vg(head):
      return jax.value_and_grad(lambda p: head.apply(p, x, groups, labels, method=head.loss))(p)

    return (
      vg(block),
      vg(dense),
      vg(bf16),
      block.apply(p, x, method=block.fuse),
      dense.apply(p, x, method=dense.fuse),
    )

  (lb, gb), (ld, gd), (l16, g16), fb, fd = everything(params)
  np.testing.assert_allclose(lb, ld, rtol=1e-5)
  assert_grads_close(gb, gd)
  np.testing.assert_allclose(fb, fd, rtol=1e-5, atol=2e-6)
  # bfloat16 matmuls, float32 sums: the loss stays float32 and close.
  assert l16.dtype == jnp.float32
  np.testing.assert_allclose(l16, ld, rtol=2e-2)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(g16))


def test_pmap_blockwise_equals_single_device_dense():
  n_dev, n_local, d = 4, 7, 6
  x, groups, labels = _head_data(n_dev * n_local, d, seed=11)
  dense = TransFusionHead(num_layers=2)
  block = TransFusionHead(num_layers=2, axis_name="batch", implementation="blockwise", block_size=5)
  params = jax.jit(dense.init)(jax.random.key(1), x)

  @jax.jit
  def single(p):
    return (
      jax.value_and_grad(lambda p: dense.apply(p, x, groups, labels, method=dense.loss))(p),
      dense.apply(p, x, method=dense.fuse),
    )

  (loss, grads), fused = single(params)

  def per_device(p, xs, gs, ls):
    l, g = jax.value_and_grad(lambda p: block.apply(p, xs, gs, ls, method=block.loss))(p)
    # Each device differentiates the psum-reduced loss: the mean of the
    # per-device gradients is the global gradient (as for the dense path).
    return l, jax.lax.pmean(g, "batch"), block.apply(p, xs, method=block.fuse)

  shard = lambda a: a.reshape((n_dev, n_local) + a.shape[1:])
  loss_p, grads_p, fused_p = jax.pmap(per_device, axis_name="batch", in_axes=(None, 0, 0, 0))(
    params, shard(x), shard(groups), shard(labels)
  )
  np.testing.assert_allclose(loss_p, np.full(n_dev, loss), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(fused_p).reshape(-1, d), fused, rtol=1e-5, atol=2e-6)
  # Cross-device sums reorder the float32 additions: atol 1e-5 × max |g|.
  assert_grads_close(jax.tree.map(lambda g: g[0], grads_p), grads, atol=1e-5)


def _largest_intermediate(jaxpr) -> int:
  biggest = 0
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      biggest = max(biggest, int(np.prod(getattr(var.aval, "shape", ()))))
    for p in eqn.params.values():
      for sub in p if isinstance(p, (tuple, list)) else (p,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          biggest = max(biggest, _largest_intermediate(sub.jaxpr))
        elif isinstance(sub, jax.extend.core.Jaxpr):
          biggest = max(biggest, _largest_intermediate(sub))
  return biggest


def test_no_n_by_n_intermediate_in_forward_or_backward():
  n, d, block_size = 64, 8, 16
  x, groups, labels = _head_data(n, d, seed=13)
  sizes = {}
  for impl in ("dense", "blockwise"):
    head = TransFusionHead(num_layers=2, implementation=impl, block_size=block_size)
    params = jax.jit(head.init)(jax.random.key(0), x[:4])
    step = jax.value_and_grad(lambda p, x: head.apply(p, x, groups, labels, method=head.loss))
    sizes[impl] = _largest_intermediate(jax.make_jaxpr(step)(params, x).jaxpr)
  assert sizes["dense"] >= n * n  # the check can see n×n
  assert sizes["blockwise"] <= n * block_size  # [n, block] at most


def test_bad_arguments():
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((4, 3), (6, 3), (6, 3)))
  with pytest.raises(ValueError, match="block_size"):
    blockwise_attention(q, k, v, block_size=0)
  with pytest.raises(ValueError, match="same number of rows"):
    blockwise_attention(q, k, v[:5])
  with pytest.raises(ValueError, match="same width"):
    blockwise_attention(q, k[:, :2], v)
  with pytest.raises(AssertionError, match=r"int32.*q must be floating point"):
    blockwise_attention(q.astype(jnp.int32), k, v)
  with pytest.raises(AssertionError, match=r"v must be a 2-D array"):
    blockwise_attention(q, k, v[:, 0])
  with pytest.raises(AssertionError, match=r"k must be a 2-D array"):
    blockwise_jsd_loss(q, k[0], jnp.arange(4))
  with pytest.raises(ValueError, match="activation"):
    blockwise_attention(q, k, v, activation="tanhh")
  with pytest.raises(ValueError, match="column_groups"):
    blockwise_jsd_loss(q, k, jnp.arange(4))  # 6 keys, 4 ids
  with pytest.raises(AssertionError, match="groups must be integers"):
    blockwise_jsd_loss(q, q, jnp.arange(4.0))
  x = jnp.ones((4, 3))
  for module in (
    TransFusionHead(implementation="flash"),
    FusionBlock(implementation="flash"),
    AdjacencyBlock(implementation="flash"),
  ):
    with pytest.raises(ValueError, match="dense.*blockwise"):
      module.init(jax.random.key(0), x)
