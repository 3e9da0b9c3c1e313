"""Deep Fusion (the paper's v2 head): shapes, float64 references, pmap, blockwise.

References: an independent float64 NumPy implementation written here from the
parameters (LayerNorm, multi-head softmax attention, FFN with exact GELU,
post- and pre-norm), on fresh random inputs.  Tolerances (float32
computations): values vs float64 rtol 1e-4 / atol 1e-5 (five blocks of
LayerNorm and softmax); pmap vs one device and blockwise vs dense: rtol
1e-5 on values, gradients rtol 1e-4 with atol 1e-6 × the gradient's largest
entry (cross-device sums and blocks reorder the additions).
"""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from tfjax import methods
from tfjax.config import base_config
from tfjax.deep_fusion import DeepFusionBlock, DeepFusionHead
from tfjax.softmax_attention import blockwise_softmax_attention, softmax_attention
from tfjax.config import validate
from tfjax.state import build_network

AXIS = "batch"


# ----------------------------------------------------------------------------
# float64 NumPy reference
# ----------------------------------------------------------------------------
def f64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


_erf = np.vectorize(math.erf)


def np_activation(name, x):
  if name == "gelu":
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
  return np.maximum(x, 0.0)


def np_layer_norm(p, x):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def np_attention(p, x, num_heads):
  """Multi-head softmax self-attention of all rows of x [n, d], per head."""
  n, d = x.shape
  c = d // num_heads
  out = np.zeros((n, d))
  w_o = p["out"]["kernel"].reshape(d, d)  # rows: (head, channel)
  for a in range(num_heads):
    proj = {}
    for name in ("query", "key", "value"):
      proj[name] = x @ p[name]["kernel"][:, a, :] + p[name]["bias"][a]
    s = proj["query"] @ proj["key"].T / math.sqrt(c)
    s = np.exp(s - s.max(1, keepdims=True))
    weights = s / s.sum(1, keepdims=True)
    out += (weights @ proj["value"]) @ w_o[a * c : (a + 1) * c]
  return out + p["out"]["bias"]


def np_block(p, x, num_heads, activation="gelu", norm="post"):
  def ffn(h):
    hidden = np_activation(
      activation, h @ p["mlp"]["hidden"]["kernel"] + p["mlp"]["hidden"]["bias"]
    )
    return hidden @ p["mlp"]["output"]["kernel"] + p["mlp"]["output"]["bias"]

  if norm == "post":
    x = np_layer_norm(p["norm_1"], x + np_attention(p["attention"], x, num_heads))
    return np_layer_norm(p["norm_2"], x + ffn(x))
  x = x + np_attention(p["attention"], np_layer_norm(p["norm_1"], x), num_heads)
  return x + ffn(np_layer_norm(p["norm_2"], x))


def np_head(p, x, num_layers, num_heads, **kw):
  h = x @ p["input"]["kernel"] + p["input"]["bias"]
  for i in range(num_layers):
    h = np_block(p[f"block_{i}"], h, num_heads, **kw)
  return h @ p["output"]["kernel"] + p["output"]["bias"]


def np_nt_xent(z1, z2, tau):
  u = np.concatenate([z1, z2])
  u = u / np.linalg.norm(u, axis=1, keepdims=True)
  n = len(z1)
  logits = u @ u.T / tau
  np.fill_diagonal(logits, -np.inf)
  pos = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
  lse = np.log(np.exp(logits).sum(1))
  return float(np.mean(lse - logits[np.arange(2 * n), pos]))


def _random(key, shape, scale=1.0):
  return scale * jax.random.normal(jax.random.key(key), shape)


# ----------------------------------------------------------------------------
# Shapes and float64 references
# ----------------------------------------------------------------------------
class HeadTest(chex.TestCase, parameterized.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_shapes_and_parameters(self):
    head = DeepFusionHead(num_layers=2, num_heads=4, features=12, out_features=5, mlp_ratio=2.0)
    x = _random(0, (10, 7))
    params = head.init(jax.random.key(1), x)
    out = self.variant(head.apply)(params, x)
    chex.assert_shape(out, (10, 5))
    chex.assert_tree_all_finite(out)
    p = params["params"]
    assert set(p) == {"input", "block_0", "block_1", "output"}
    chex.assert_shape(p["input"]["kernel"], (7, 12))
    chex.assert_shape(p["block_0"]["attention"]["query"]["kernel"], (12, 4, 3))
    chex.assert_shape(p["block_0"]["mlp"]["hidden"]["kernel"], (12, 24))
    chex.assert_shape(p["output"]["kernel"], (12, 5))

  @parameterized.product(norm=("post", "pre"), activation=("gelu", "relu"))
  def test_block_against_float64(self, norm, activation):
    block = DeepFusionBlock(num_heads=4, mlp_ratio=3.0, activation=activation, norm=norm)
    x = _random(2, (11, 8), scale=2.0) + 0.5
    params = block.init(jax.random.key(3), x)
    # Non-trivial LayerNorm and bias parameters: the defaults (1, 0) would
    # hide a scale applied in the wrong place.
    params = jax.tree.map(lambda a: a + 0.3 * _random(4, a.shape), params)
    got = jax.jit(block.apply)(params, x)
    want = np_block(f64(params["params"]), f64(x), 4, activation=activation, norm=norm)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

  @parameterized.parameters("post", "pre")
  def test_head_against_float64(self, norm):
    head = DeepFusionHead(num_layers=3, num_heads=2, features=6, out_features=4, norm=norm)
    x = _random(5, (9, 5))
    params = head.init(jax.random.key(6), x)
    params = jax.tree.map(lambda a: a + 0.2 * _random(7, a.shape), params)
    got = head.apply(params, x)
    want = np_head(f64(params["params"]), f64(x), 3, 2, norm=norm)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

  def test_loss_is_nt_xent_of_the_fused_views_against_float64(self):
    head = DeepFusionHead(num_layers=2, num_heads=2, features=6)
    x = _random(8, (2 * 7, 5))
    groups = jnp.tile(jnp.arange(7, dtype=jnp.int32), 2)
    params = head.init(jax.random.key(9), x)
    loss = head.apply(params, x, groups, None, 2, temperature=0.3, method=DeepFusionHead.loss)
    out = np_head(f64(params["params"]), f64(x), 2, 2)
    np.testing.assert_allclose(loss, np_nt_xent(out[:7], out[7:], 0.3), rtol=1e-5)

  def test_fuse_within_view_fuses_each_view_alone(self):
    head = DeepFusionHead(num_layers=2, num_heads=2, fuse_within_view=True)
    x = _random(10, (12, 4))
    params = head.init(jax.random.key(11), x)
    both = head.apply(params, x, 2)
    np.testing.assert_allclose(both[:6], head.apply(params, x[:6]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(both[6:], head.apply(params, x[6:]), rtol=1e-5, atol=1e-6)
    across = DeepFusionHead(num_layers=2, num_heads=2).apply(params, x, 2)
    assert np.abs(np.asarray(across[:6] - both[:6])).max() > 1e-3  # the option matters

  def test_permutation_equivariant_over_rows_and_rows_interact(self):
    head = DeepFusionHead(num_layers=3, num_heads=4)
    x = _random(12, (16, 8))
    params = head.init(jax.random.key(13), x)
    out = head.apply(params, x)
    perm = np.random.default_rng(0).permutation(16)
    np.testing.assert_allclose(head.apply(params, x[perm]), out[perm], rtol=1e-5, atol=1e-5)
    # Attention spans the batch: changing row 0 moves every other row's output.
    moved = head.apply(params, x.at[0].add(3.0))
    assert np.abs(np.asarray(moved[1:] - out[1:])).max(axis=1).min() > 1e-4

  def test_gradients_finite_and_nonzero(self):
    head = DeepFusionHead(num_layers=5)
    x = _random(14, (2 * 16, 16))
    groups = jnp.tile(jnp.arange(16, dtype=jnp.int32), 2)
    params = head.init(jax.random.key(15), x)
    grads = jax.grad(
      lambda p, x: head.apply(p, x, groups, method=DeepFusionHead.loss), argnums=(0, 1)
    )(params, x)
    chex.assert_tree_all_finite(grads)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))

  def test_bad_options_raise_one_clear_error(self):
    x = _random(16, (6, 6))
    for kwargs, match in [
      (dict(num_heads=4), "not divisible by num_heads=4"),
      (dict(norm="middle"), "unknown norm 'middle'"),
      (dict(activation="tanh"), "unknown activation 'tanh'"),
      (dict(num_layers=0), "num_layers must be a positive int"),
      (dict(mlp_ratio=0.0), "mlp_ratio must be finite and > 0"),
      (dict(implementation="flash"), "unknown implementation"),
    ]:
      with pytest.raises(ValueError, match=match):
        DeepFusionHead(**kwargs).init(jax.random.key(0), x)
    head = DeepFusionHead(num_layers=1, num_heads=2)
    params = head.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="exactly 2 views"):
      head.apply(params, x, jnp.zeros(6, jnp.int32), None, 3, method=DeepFusionHead.loss)


# ----------------------------------------------------------------------------
# Blockwise (query blocks) == dense
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("n,m,block", [(13, 13, 4), (7, 20, 3), (9, 9, 64)])
def test_blockwise_attention_equals_dense_values_and_gradients(n, m, block):
  q, k, v = _random(20, (n, 3, 5)), _random(21, (m, 3, 5)), _random(22, (m, 3, 4))
  cot = _random(23, (n, 3, 4))
  dense = lambda q, k, v: jnp.sum(softmax_attention(q, k, v) * cot)
  blocked = lambda q, k, v: jnp.sum(blockwise_softmax_attention(q, k, v, block_size=block) * cot)
  np.testing.assert_allclose(
    blockwise_softmax_attention(q, k, v, block_size=block),
    softmax_attention(q, k, v),
    rtol=1e-5,
    atol=1e-6,
  )
  g_dense = jax.grad(dense, argnums=(0, 1, 2))(q, k, v)
  g_block = jax.jit(jax.grad(blocked, argnums=(0, 1, 2)))(q, k, v)
  for a, b in zip(g_block, g_dense):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * float(jnp.abs(b).max()))


def test_softmax_attention_against_float64():
  q, k, v = _random(24, (6, 2, 3)), _random(25, (8, 2, 3)), _random(26, (8, 2, 4))
  qn, kn, vn = f64(q), f64(k), f64(v)
  for a in range(2):
    s = qn[:, a] @ kn[:, a].T / math.sqrt(3)
    w = np.exp(s - s.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    np.testing.assert_allclose(softmax_attention(q, k, v)[:, a], w @ vn[:, a], rtol=1e-5, atol=1e-6)


def test_blockwise_head_equals_dense_head():
  x = _random(27, (2 * 11, 8))
  groups = jnp.tile(jnp.arange(11, dtype=jnp.int32), 2)
  dense = DeepFusionHead(num_layers=2, num_heads=4)
  block = DeepFusionHead(num_layers=2, num_heads=4, implementation="blockwise", block_size=5)
  params = dense.init(jax.random.key(28), x)
  loss_grad = lambda h: jax.value_and_grad(
    lambda p: h.apply(p, x, groups, method=DeepFusionHead.loss)
  )(params)
  (l_d, g_d), (l_b, g_b) = loss_grad(dense), loss_grad(block)
  np.testing.assert_allclose(block.apply(params, x), dense.apply(params, x), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(l_b, l_d, rtol=1e-6)
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g_d))
  chex.assert_trees_all_close(g_b, g_d, rtol=1e-4, atol=1e-6 * scale)


# ----------------------------------------------------------------------------
# pmap over 4 fake CPU devices == one device
# ----------------------------------------------------------------------------
@pytest.mark.parametrize(
  "options", [{}, {"fuse_within_view": True}, {"implementation": "blockwise", "block_size": 3}]
)
def test_pmap_global_batch_equals_one_device(options):
  n_dev, n_local = 4, 3  # 12 sources, two views each
  n = n_dev * n_local
  x = _random(30, (2 * n, 8))  # view-major: [view 0; view 1]
  groups = jnp.tile(jnp.arange(n, dtype=jnp.int32), 2)
  head_1 = DeepFusionHead(num_layers=2, num_heads=2, **options)
  head_p = DeepFusionHead(num_layers=2, num_heads=2, axis_name=AXIS, **options)
  params = head_1.init(jax.random.key(31), x)

  def loss(head, p, x, g):
    return head.apply(p, x, g, None, 2, temperature=0.2, method=DeepFusionHead.loss)

  out_1 = head_1.apply(params, x, 2)
  loss_1, grad_1 = jax.value_and_grad(functools.partial(loss, head_1))(params, x, groups)

  # Each device holds its share of both views, view-major: [its view-0 rows;
  # its view-1 rows] — what the train step feeds the head.
  def shard(a):
    return (
      a.reshape(2, n_dev, n_local, *a.shape[1:])
      .swapaxes(0, 1)
      .reshape(n_dev, 2 * n_local, *a.shape[1:])
    )

  def per_device(p, xs, gs):
    value, grad = jax.value_and_grad(functools.partial(loss, head_p))(p, xs, gs)
    return head_p.apply(p, xs, 2), value, jax.lax.pmean(grad, AXIS)

  out_p, loss_p, grad_p = jax.pmap(per_device, axis_name=AXIS, in_axes=(None, 0, 0))(
    params, shard(x), shard(groups)
  )
  np.testing.assert_allclose(out_p, shard(out_1), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(loss_p, np.full(n_dev, loss_1), rtol=1e-5)
  # pmean of per-device gradients of the global loss = the one-device gradient.
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grad_1))
  chex.assert_trees_all_close(
    jax.tree.map(lambda g: g[0], grad_p), grad_1, rtol=1e-4, atol=1e-6 * scale
  )


# ----------------------------------------------------------------------------
# The method, its config and the network
# ----------------------------------------------------------------------------
def _config(**deep_fusion):
  c = base_config()
  c.loss = "deep_fusion"
  for key, value in deep_fusion.items():
    setattr(c.deep_fusion, key, value)
  return c


def test_registered_method_builds_the_configured_head():
  m = methods.get("deep_fusion")
  assert m.uses_head and m.num_views == 2 and not m.accepts_labels
  assert m.display_name == "Deep Fusion (NT-Xent)"
  c = _config(num_layers=2, num_heads=4, mlp_ratio=2.0, norm="pre")
  validate(c, 1, check_data=False)
  head = build_network(c, axis_name=AXIS).head
  assert isinstance(head, DeepFusionHead)
  assert (head.num_layers, head.num_heads, head.mlp_ratio, head.norm, head.axis_name) == (
    2,
    4,
    2.0,
    "pre",
    AXIS,
  )
  assert build_network(base_config()).head.__class__.__name__ == "TransFusionHead"


@pytest.mark.parametrize(
  "field,value,match",
  [
    ("num_heads", 0, "deep_fusion.num_heads must be a positive int"),
    ("num_heads", 5, "does not divide the head's width embed_dim=64"),
    ("features", 30, "deep_fusion.features=30 is not divisible"),
    ("norm", "sandwich", "unknown deep_fusion.norm 'sandwich'"),
    ("activation", "swish", "unknown deep_fusion.activation 'swish'"),
    ("implementation", "flash", "unknown deep_fusion.implementation 'flash'"),
    ("block_size", 0, "deep_fusion.block_size must be a positive int"),
    ("mlp_ratio", -1.0, "deep_fusion.mlp_ratio must be finite and > 0"),
  ],
)
def test_config_errors_name_the_field(field, value, match):
  with pytest.raises(ValueError, match=match):
    validate(_config(**{field: value}), 1, check_data=False)


def test_deep_fusion_takes_exactly_two_views():
  c = _config()
  c.num_views = 3
  with pytest.raises(ValueError, match="takes exactly 2 views"):
    validate(c, 1, check_data=False)


# ----------------------------------------------------------------------------
# Through the one train step
# ----------------------------------------------------------------------------
@pytest.mark.slow
def test_train_step_on_four_devices_equals_one():
  """The whole step (views, BatchNorm, projector, Deep Fusion head, NT-Xent,
  pmean, optimiser) on 4 devices moves the parameters as on one."""
  from tests.test_train import fresh_state, run_steps, tiny_config, toy_data
  from tfjax.data.pipeline import batch_indices

  config = tiny_config(
    loss="deep_fusion",
    optimizer="sgd",
    learning_rate=0.05,
    **{"deep_fusion.num_layers": 2, "deep_fusion.num_heads": 2},
  )
  x, _, _, _ = toy_data()
  batches = [{"x": x[batch_indices(0, s, len(x), config.batch_size)]} for s in range(3)]
  single, m1 = run_steps(config, 1, batches)
  multi, m4 = run_steps(config, 4, batches)
  assert "head" in single.params and "block_1" in single.params["head"]
  chex.assert_trees_all_close(single.params, multi.params, rtol=1e-4, atol=2e-5)
  chex.assert_trees_all_close(single.batch_stats, multi.batch_stats, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-4)
  fresh = fresh_state(config)
  moved = jax.tree.map(
    lambda a, b: float(jnp.abs(a - b).max()), fresh.params["head"], single.params["head"]
  )
  assert max(jax.tree.leaves(moved)) > 1e-4  # the head itself trained


def test_command_line_selects_deep_fusion_and_its_options(tmp_path):
  from experiments.runs import run_configs
  from experiments.common import cli

  seen = {}

  def fake_run(config, workdir, *, progress):
    seen["config"] = config
    return "ran"

  cli(
    fake_run,
    "train",
    [
      "--config=experiments/configs/default.py:quick",
      "--config.compare=simclr",
      "--config.runs.simclr.loss=deep_fusion",
      "--config.deep_fusion.num_heads=4",
      "--config.deep_fusion.norm=pre",
      "--config.deep_fusion.mlp_ratio=2",
      f"--workdir={tmp_path}",
      "--noprogress",
    ],
    config_name="default",
  )
  ((name, c),) = run_configs(seen["config"])
  validate(c, 1, check_data=False)
  assert c.loss == "deep_fusion" and methods.run_name(c) == "deep_fusion"
  head = build_network(c).head
  assert isinstance(head, DeepFusionHead)
  assert (head.num_heads, head.norm, head.mlp_ratio) == (4, "pre", 2.0)
