"""config.compute_dtype: bfloat16 computation, float32 parameters, statistics, losses and state."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import set_fields

from tfjax import evaluation, train
from tfjax.backbones import get_backbone
from tfjax.config import base_config, validate
from tfjax.models import TransFusionHead
from tfjax.networks import ContrastiveNet
from tfjax.precision import at_least_float32, compute_dtypes
from tfjax.state import build_network, create_train_state
from tfjax.step import step_key, train_step

BF16 = jnp.dtype(jnp.bfloat16)
F32 = jnp.dtype(jnp.float32)


def small_config(compute_dtype="bfloat16", **overrides):
  """CNN1D (BatchNorm in the backbone and the projector) + a 2-layer head."""
  c = base_config()
  c.dataset = "mnist1d"
  c.backbone = "cnn1d"
  c.backbone_kwargs = {"channels": (8, 8), "out_features": 12}
  c.embed_dim = 8
  c.projector_hidden = (16,)
  c.head.num_layers = 2
  c.batch_size = 16
  c.num_steps = 10
  c.warmup_steps = 0
  c.num_devices = 1
  c.compute_dtype = compute_dtype
  return set_fields(c, overrides)


def float_dtypes(tree):
  return {
    jnp.dtype(x.dtype) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)
  }


def relative_error(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return np.linalg.norm(got - want) / np.linalg.norm(want)


# ----------------------------------------------------------------------------
# The config field.
# ----------------------------------------------------------------------------
def test_compute_dtypes_of_config():
  c = base_config()
  assert compute_dtypes(c) == (None, None)  # float32: the modules' default
  c.compute_dtype = "bfloat16"
  assert compute_dtypes(c) == (BF16, BF16)  # the head inherits it
  c.head.compute_dtype = "float32"
  assert compute_dtypes(c) == (BF16, None)  # ... unless it overrides
  c.compute_dtype = "float32"
  c.head.compute_dtype = "bfloat16"
  assert compute_dtypes(c) == (None, BF16)


@pytest.mark.parametrize(
  "field, value, message",
  [
    (
      "compute_dtype",
      "float16",
      r"compute_dtype must name .* got 'float16' "
      r"\(float16 needs loss scaling",
    ),
    (
      "compute_dtype",
      "bf16",
      r"^compute_dtype must name a float dtype .*'float32', "
      r"'bfloat16'\), got 'bf16'$",
    ),
    ("head.compute_dtype", "int8", r"^head.compute_dtype must name a float"),
  ],
)
def test_bad_compute_dtype_is_one_line_naming_the_field(field, value, message):
  c = small_config(**{field: value})
  with pytest.raises(ValueError, match=message):
    validate(c, 1, check_data=False)
  with pytest.raises(ValueError, match=message):
    build_network(c)


def test_float32_builds_the_network_without_a_compute_dtype():
  net = build_network(small_config("float32"))
  assert net.dtype is None and net.backbone.dtype is None
  assert net.head.compute_dtype is None
  net = build_network(small_config("bfloat16"))
  assert net.dtype == BF16 and net.backbone.dtype == BF16
  assert net.head.compute_dtype == BF16


def test_at_least_float32():
  assert at_least_float32(jnp.ones(2, jnp.bfloat16)).dtype == F32
  assert at_least_float32(jnp.ones(2, jnp.float32)).dtype == F32


# ----------------------------------------------------------------------------
# What is in which dtype.
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bf16_state():
  return create_train_state(small_config(), jax.random.key(0), (40, 1), 10, data_kind="signal")


def _batch(n=16, seed=0):
  rng = np.random.default_rng(seed)
  return {
    "x": jnp.asarray(rng.normal(size=(n, 40, 1)), jnp.float32),
    "semi_label": jnp.asarray(rng.integers(0, 10, n), jnp.int32),
  }


def test_state_is_float32_and_a_step_keeps_it(bf16_state):
  s = bf16_state
  assert float_dtypes(s.params) == {F32}
  assert float_dtypes(s.batch_stats) == {F32}
  assert float_dtypes(s.opt_state) == {F32}
  new, metrics = jax.jit(train_step)(s, _batch(), step_key(0, 0))
  for tree in (new.params, new.batch_stats, new.opt_state):
    assert float_dtypes(tree) == {F32}
  assert metrics["loss"].dtype == F32 and np.isfinite(metrics["loss"])
  assert np.isfinite(metrics["grad_norm"]) and metrics["grad_norm"] > 0
  # The BatchNorm running averages moved (float32 updates are not rounded away).
  moved = jax.tree.map(
    lambda a, b: np.max(np.abs(np.asarray(a) - np.asarray(b))), new.batch_stats, s.batch_stats
  )
  assert min(jax.tree.leaves(moved)) > 0


def test_activations_are_bfloat16_outputs_float32(bf16_state):
  s = bf16_state
  x = _batch()["x"]
  (features, z), state = s.model.apply(
    s.variables,
    x,
    method=ContrastiveNet.init_all,
    capture_intermediates=True,
    mutable=["intermediates"],
  )
  seen = state["intermediates"]
  call = lambda *path: functools.reduce(lambda d, k: d[k], path, seen)["__call__"][0]
  assert call("backbone", "Conv_0").dtype == BF16
  assert call("backbone", "BatchNorm_0").dtype == BF16
  assert call("backbone", "Dense_0").dtype == BF16
  assert call("projector", "Dense_0").dtype == BF16
  assert call("head", "fusion_0").dtype == BF16
  assert call("head", "fusion_0", "query").dtype == BF16
  # The network's outputs: float32.
  assert features.dtype == F32 and z.dtype == F32
  assert call("head").dtype == F32  # the adjacency
  fused = s.model.apply(s.variables, z, method=ContrastiveNet.fuse)
  assert fused.dtype == F32
  # Every convolution of the training step takes bfloat16 operands.
  jaxpr = jax.make_jaxpr(train_step)(s, _batch(), step_key(0, 0))
  convs = [e for e in _equations(jaxpr.jaxpr) if e.primitive.name == "conv_general_dilated"]
  assert convs and all(v.aval.dtype == BF16 for e in convs for v in e.invars)


def _equations(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      for p in param if isinstance(param, (list, tuple)) else (param,):
        inner = getattr(p, "jaxpr", None)
        if inner is not None and hasattr(inner, "eqns"):
          yield from _equations(inner)
        elif hasattr(p, "eqns"):
          yield from _equations(p)


@pytest.mark.parametrize("implementation", ["dense", "blockwise"])
def test_losses_and_gradients_are_float32(bf16_state, implementation):
  s = bf16_state
  model = s.model.clone(head=s.model.head.clone(implementation=implementation, block_size=8))
  batch = _batch(seed=1)
  groups = jnp.tile(jnp.arange(8, dtype=jnp.int32), 2)

  def loss(params):
    (_, z), _ = model.apply(
      {"params": params, "batch_stats": s.batch_stats},
      batch["x"],
      train=True,
      mutable=["batch_stats"],
    )
    return model.apply(
      {"params": params},
      z,
      groups,
      None,
      2,
      method=ContrastiveNet.head_loss,
      mutable=["diagnostics"],
    )[0]

  value, grads = jax.jit(jax.value_and_grad(loss))(s.params)
  assert value.dtype == F32 and np.isfinite(value)
  assert float_dtypes(grads) == {F32}
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


# ----------------------------------------------------------------------------
# bfloat16 agrees with float32 within bfloat16's rounding.
# ----------------------------------------------------------------------------
BACKBONE_CASES = {
  "mlp": (dict(hidden=(32,), out_features=16, batch_norm=True), (8, 20)),
  "cnn1d": (dict(channels=(16, 16), out_features=16), (8, 40, 1)),
  "small_cnn": (dict(channels=(8, 16), out_features=16), (8, 8, 8, 1)),
  "resnet18": (dict(width=0.125, out_features=16), (4, 16, 16, 3)),
}


@pytest.mark.parametrize("name", sorted(BACKBONE_CASES))
def test_backbone_bfloat16_forward_agrees_with_float32(name):
  kwargs, shape = BACKBONE_CASES[name]
  x = jax.random.normal(jax.random.key(11), shape)
  net32 = get_backbone(name, **kwargs)
  net16 = get_backbone(name, dtype=jnp.bfloat16, **kwargs)
  variables = jax.jit(net32.init)(jax.random.key(0), x)

  @jax.jit
  def both(v, x):
    return tuple(
      net.apply(v, x, train=train, mutable=["batch_stats"] if train else [])
      for net in (net32, net16)
      for train in (False, True)
    )

  (e32, _), (t32, s32), (e16, _), (t16, s16) = both(variables, x)
  assert e16.dtype == BF16 and t16.dtype == BF16
  assert float_dtypes(s16) <= {F32}
  # Rounding of bfloat16 (2^-8 relative) compounds over a few layers.
  assert relative_error(e16, e32) < 3e-2
  assert relative_error(t16, t32) < 3e-2
  for a, b in zip(jax.tree.leaves(s16), jax.tree.leaves(s32)):
    np.testing.assert_allclose(a, b, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("implementation", ["dense", "blockwise"])
def test_head_bfloat16_agrees_with_float32(implementation):
  x = jax.random.normal(jax.random.key(3), (24, 16))
  groups = jnp.arange(24, dtype=jnp.int32) % 12
  kw = dict(num_layers=3, implementation=implementation, block_size=8)
  head32 = TransFusionHead(**kw)
  head16 = TransFusionHead(compute_dtype=jnp.bfloat16, **kw)
  params = jax.jit(head32.init)(jax.random.key(0), x)

  @jax.jit
  def outputs(p):
    return [
      (
        h.apply(p, x, method=h.fuse),
        h.apply(p, x),
        jax.value_and_grad(
          lambda p, h=h: h.apply(p, x, groups, method=h.loss, mutable=["diagnostics"])[0]
        )(p),
      )
      for h in (head32, head16)
    ]

  (f32, a32, (l32, g32)), (f16, a16, (l16, g16)) = outputs(params)
  assert f16.dtype == F32 and a16.dtype == F32 and l16.dtype == F32
  assert float_dtypes(g16) == {F32}
  assert relative_error(f16, f32) < 3e-2
  assert relative_error(a16, a32) < 3e-2
  np.testing.assert_allclose(a16.sum(axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(l16, l32, rtol=2e-2)
  assert (
    relative_error(
      np.concatenate([np.ravel(g) for g in jax.tree.leaves(g16)]),
      np.concatenate([np.ravel(g) for g in jax.tree.leaves(g32)]),
    )
    < 1e-1
  )


# ----------------------------------------------------------------------------
# A bfloat16 run learns.
# ----------------------------------------------------------------------------
def hidden_classes(n, seed):
  """4 classes in 2 of 16 dimensions, among 14 dimensions of noise."""
  rng = np.random.default_rng(seed)
  y = np.arange(n) % 4
  angle = y * np.pi / 2
  x = rng.normal(size=(n, 16)) * 1.5
  x[:, 0] = 2 * np.cos(angle) + 0.3 * rng.normal(size=n)
  x[:, 1] = 2 * np.sin(angle) + 0.3 * rng.normal(size=n)
  return x.astype(np.float32), y.astype(np.int32)


@pytest.mark.slow
def test_bfloat16_run_learns(tmp_path):
  c = base_config()
  c.backbone_kwargs = {"hidden": (32,), "out_features": 16, "batch_norm": True}
  c.embed_dim = 8
  c.projector_hidden = (32,)
  c.head.num_layers = 1
  c.update_from_flattened_dict(
    {
      "compute_dtype": "bfloat16",
      "label_fraction": 1.0,
      "labels_in_loss": True,
      "augment_strength": 0.1,
      "learning_rate": 3e-3,
      "batch_size": 32,
      "num_steps": 150,
      "warmup_steps": 10,
      "log_every": 50,
      "checkpoint_every": 150,
      "num_devices": 1,
      "write_plots": False,
      "eval.linear_steps": 0,
      "eval.finetune_fractions": (),
      "eval.head_knn": False,
      "eval.knn_k": 5,
    }
  )
  data = (*hidden_classes(256, 0), *hidden_classes(128, 1))
  untrained = evaluation.evaluate_untrained(c, data=data)["knn"]
  res = train.train_and_evaluate(c, str(tmp_path / "run"), data=data, progress=False)
  assert res["final_loss"] is not None and np.isfinite(res["final_loss"])
  assert float_dtypes(res["state"].params) == {F32}
  # Measured: 0.594 untrained -> 0.719 (bfloat16), 0.688 (float32, same
  # setting); 128 test points, so 0.05 is about one standard error.
  assert res["knn"] > untrained + 0.05, (res["knn"], untrained)
