"""TransFusionHead's options: the truncated block's projection, the squared
cosine, fusion within each view, and the dead-row diagnostic."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tfjax
from tfjax.models import TransFusionHead, uniform_row_fraction
from tfjax.guards import DeadTrainingWatch


def _np_adjacency(q, k, act):
  """float64 reference: act(cos), zero diagonal, rows normalised."""
  q = np.asarray(q, np.float64)
  k = np.asarray(k, np.float64)
  qn = q / np.linalg.norm(q, axis=1, keepdims=True)
  kn = k / np.linalg.norm(k, axis=1, keepdims=True)
  w = act(qn @ kn.T) + 1e-10
  np.fill_diagonal(w, 0.0)
  return w / w.sum(1, keepdims=True)


class ProjectionTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_no_projection_is_the_adjacency_of_the_fused_features(self):
    head = TransFusionHead(num_layers=3, final_projection="none")
    x = jax.random.normal(jax.random.key(0), (12, 6))
    params = head.init(jax.random.key(1), x)
    assert "adjacency" not in params["params"]  # no parameters at all
    a = self.variant(head.apply)(params, x)
    fused = head.apply(params, x, method=TransFusionHead.fuse)
    np.testing.assert_allclose(
      a, _np_adjacency(fused, fused, lambda c: np.maximum(c, 0)), rtol=2e-5, atol=1e-6
    )

  @chex.variants(with_jit=True, without_jit=True)
  def test_square_activation_against_float64(self):
    head = TransFusionHead(num_layers=1, final_projection="none", activation="square")
    x = jax.random.normal(jax.random.key(2), (9, 5))
    a = self.variant(head.apply)(head.init(jax.random.key(3), x), x)
    np.testing.assert_allclose(a, _np_adjacency(x, x, np.square), rtol=2e-5, atol=1e-7)
    # cos = −1 weighs like +1 under the square
    y = jnp.stack([jnp.ones(3), -jnp.ones(3), jnp.array([1.0, -1.0, 0.0])])
    b = tfjax.adjacency(y, y, activation="square")
    np.testing.assert_allclose(b[0, 1], 1.0 / (1.0 + 1e-10 + 0.0), rtol=1e-6)

  def test_tied_projection_has_one_matrix(self):
    head = TransFusionHead(num_layers=1, final_projection="tied")
    x = jax.random.normal(jax.random.key(4), (8, 4))
    params = head.init(jax.random.key(5), x)["params"]["adjacency"]
    assert set(params) == {"norm", "query"}
    a = head.apply({"params": {"adjacency": params}}, x)
    # q = k: the un-normalised weights are symmetric
    ln = (x - x.mean(1, keepdims=True)) / jnp.sqrt(x.var(1, keepdims=True) + 1e-6)
    q = ln * params["norm"]["scale"] + params["norm"]["bias"]
    q = q @ params["query"]["kernel"] + params["query"]["bias"]
    np.testing.assert_allclose(
      a, _np_adjacency(q, q, lambda c: np.maximum(c, 0)), rtol=1e-4, atol=1e-6
    )

  @chex.variants(with_jit=True, without_jit=True)
  def test_norm_projection_is_layernorm_then_cosine_against_float64(self):
    # "norm": q = k = LayerNorm(x) with its scale and bias, no Q/K matrices.
    head = TransFusionHead(num_layers=1, final_projection="norm")
    x = jax.random.normal(jax.random.key(8), (11, 7)) * 3.0 + 1.5
    params = head.init(jax.random.key(9), x)
    block = params["params"]["adjacency"]
    assert set(block) == {"norm"}  # no query/key
    chex.assert_shape([block["norm"]["scale"], block["norm"]["bias"]], [(7,), (7,)])
    # Move the LayerNorm's affine parameters off their initial 1 / 0.
    k1, k2 = jax.random.split(jax.random.key(10))
    scale = 1.0 + 0.5 * jax.random.normal(k1, (7,))
    bias = 0.3 * jax.random.normal(k2, (7,))
    params = {"params": {"adjacency": {"norm": {"scale": scale, "bias": bias}}}}
    a = self.variant(head.apply)(params, x)
    chex.assert_shape(a, (11, 11))
    chex.assert_type(a, jnp.float32)
    # float64 reference: two-pass LayerNorm (eps 1e-6), cosine, ReLU, zero
    # diagonal, rows normalised with the ε rule.
    x64 = np.asarray(x, np.float64)
    mu = x64.mean(1, keepdims=True)
    var = ((x64 - mu) ** 2).mean(1, keepdims=True)
    ln = (x64 - mu) / np.sqrt(var + 1e-6) * np.asarray(scale, np.float64) + np.asarray(
      bias, np.float64
    )
    want = _np_adjacency(ln, ln, lambda c: np.maximum(c, 0))
    np.testing.assert_allclose(a, want, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(a).sum(1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(np.diag(np.asarray(a)), 0.0)
    # It differs from comparing the raw inputs ("none"): LayerNorm centres.
    raw = _np_adjacency(x64, x64, lambda c: np.maximum(c, 0))
    assert np.abs(want - raw).max() > 1e-2

  def test_norm_projection_at_init_is_the_correlation_adjacency(self):
    # Scale 1, bias 0: the cosine of two LayerNormed rows is their Pearson
    # correlation, whatever the rows' offsets and scales.
    x = np.random.default_rng(0).normal(size=(9, 6))
    y = x * np.random.default_rng(1).uniform(0.5, 3.0, size=(9, 1)) + 4.0
    head = TransFusionHead(num_layers=1, final_projection="norm")
    params = head.init(jax.random.key(0), jnp.asarray(y, jnp.float32))
    a = head.apply(params, jnp.asarray(y, jnp.float32))
    corr = np.corrcoef(x)
    w = np.maximum(corr, 0) + 1e-10
    np.fill_diagonal(w, 0.0)
    want = w / w.sum(1, keepdims=True)
    np.testing.assert_allclose(a, want, rtol=1e-4, atol=1e-6)

  def test_norm_projection_trains_its_layernorm(self):
    head = TransFusionHead(num_layers=2, final_projection="norm")
    x = jax.random.normal(jax.random.key(11), (12, 5))
    groups = jnp.tile(jnp.arange(6), 2)
    params = head.init(jax.random.key(12), x)
    loss_fn = lambda p: head.apply(p, x, groups, method=TransFusionHead.loss)
    loss = loss_fn(params)
    assert 0.0 <= float(loss) <= np.log(2) + 1e-6
    g = jax.grad(loss_fn)(params)["params"]["adjacency"]["norm"]
    for leaf in (g["scale"], g["bias"]):
      chex.assert_shape(leaf, (5,))
      chex.assert_tree_all_finite(leaf)
      assert float(jnp.abs(leaf).max()) > 0.0

  def test_unknown_projection(self):
    head = TransFusionHead(num_layers=1, final_projection="random")
    with pytest.raises(ValueError, match="unknown projection 'random'"):
      head.init(jax.random.key(0), jnp.ones((4, 3)))


def test_config_accepts_every_projection():
  from tfjax.config import base_config, validate
  from tfjax.fusion_blocks import PROJECTIONS
  from tfjax.state import build_network

  assert PROJECTIONS == ("learned", "tied", "norm", "none")
  for projection in PROJECTIONS:
    c = base_config()
    c.head.final_projection = projection
    validate(c, 1)
    assert build_network(c).head.final_projection == projection
  c = base_config()
  c.head.final_projection = "layernorm"
  with pytest.raises(ValueError, match="unknown head.final_projection 'layernorm'.*'norm'"):
    validate(c, 1)


def test_fusion_within_each_view():
  head = TransFusionHead(num_layers=3, fuse_within_view=True)
  x = jax.random.normal(jax.random.key(6), (10, 4))  # 2 views of 5 sources
  params = head.init(jax.random.key(7), x)
  both = head.apply(params, x, 2, method=TransFusionHead.fuse)
  v1 = head.apply(params, x[:5], method=TransFusionHead.fuse)
  v2 = head.apply(params, x[5:], method=TransFusionHead.fuse)
  np.testing.assert_allclose(both, jnp.concatenate([v1, v2]), rtol=1e-6, atol=1e-6)
  across = TransFusionHead(num_layers=3).apply(params, x, method=TransFusionHead.fuse)
  assert float(jnp.abs(across - both).max()) > 1e-3  # attention spanned views
  groups = jnp.tile(jnp.arange(5), 2)
  loss = head.apply(params, x, groups, None, 2, method=TransFusionHead.loss)
  assert 0.0 <= float(loss) <= np.log(2) + 1e-6
  g = jax.grad(lambda p: head.apply(p, x, groups, None, 2, method=TransFusionHead.loss))(params)
  assert all(bool(jnp.all(jnp.isfinite(l))) for l in jax.tree.leaves(g))
  with pytest.raises(ValueError, match="do not split into 3 views"):
    head.apply(params, x, 3, method=TransFusionHead.fuse)


def test_uniform_row_fraction_counts_dead_rows():
  rng = np.random.default_rng()
  x = rng.normal(size=(6, 4)).astype(np.float32)
  x[2] = -x[2]  # still has positive cosines with others...
  a = np.asarray(tfjax.adjacency(jnp.asarray(x), jnp.asarray(x)))
  dead = np.array([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0]], np.float32)
  # rows 0 and 1: cosines with the others are 0 or −1 -> no positive weight
  b = np.asarray(tfjax.adjacency(jnp.asarray(dead), jnp.asarray(dead)))
  want = np.mean([np.ptp(np.delete(r, i)) <= 1e-12 for i, r in enumerate(b)])
  assert float(uniform_row_fraction(jnp.asarray(b))) == pytest.approx(want)
  assert want == 1.0
  assert float(uniform_row_fraction(jnp.asarray(a))) < 1.0
  # head.loss sows it
  head = TransFusionHead(num_layers=1, final_projection="none")
  z = jnp.asarray(dead)
  _, sown = head.apply({}, z, jnp.arange(3), method=TransFusionHead.loss, mutable=["diagnostics"])
  assert float(sown["diagnostics"]["uniform_rows"][0]) == 1.0


def test_dead_training_watch_warns_once_each():
  watch = DeadTrainingWatch()
  assert watch.check({"step": 1, "grad_norm": 0.3, "uniform_rows": 0.1}) == []
  assert "uniform" in watch.check({"step": 2, "grad_norm": 0.0, "uniform_rows": 0.9})[0]
  out = watch.check({"step": 3, "grad_norm": 0.0, "uniform_rows": 0.9})
  assert len(out) == 1 and "grad_norm is 0" in out[0]
  assert watch.check({"step": 4, "grad_norm": 0.0, "uniform_rows": 1.0}) == []
