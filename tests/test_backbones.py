"""Backbones: shapes, BatchNorm behaviour, determinism, registry, ResNet-18 size."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tfjax.backbones import BACKBONES, CNN1D, MLP, ResNet18, SmallCNN, get_backbone


def key(seed):
  # XLA:CPU compiles the default threefry PRNG very slowly inside a large init
  # (about a minute for ResNet-18 on 2 busy cores); the "rbg" implementation
  # compiles in seconds and is just as deterministic per key.
  return jax.random.key(seed, impl="rbg")


# (module, input shape, expected output width); small configurations keep compiles cheap.
CASES = {
  "mlp": (lambda: MLP(hidden=(16,), out_features=8, batch_norm=True), (6, 5), 8),
  "cnn1d": (lambda: CNN1D(channels=(4, 8), out_features=7), (6, 40, 1), 7),
  "small_cnn_8": (lambda: SmallCNN(channels=(4, 8, 8), out_features=5), (6, 8, 8, 1), 5),
  "small_cnn_32": (lambda: SmallCNN(channels=(4, 8, 8), out_features=5), (3, 32, 32, 3), 5),
  "resnet18": (lambda: ResNet18(width=0.125), (2, 8, 8, 3), 64),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_shapes_bn_updates_and_determinism(case):
  make, shape, out = CASES[case]
  net = make()
  init = jax.jit(net.init)
  apply_eval = jax.jit(net.apply)
  apply_train = jax.jit(lambda v, x: net.apply(v, x, train=True, mutable=["batch_stats"]))
  x = jnp.asarray(np.random.default_rng(1).normal(size=shape) * 2.0 + 0.5, jnp.float32)
  v1 = init(key(0), x)
  v2 = init(key(0), x)
  v3 = init(key(7), x)
  # deterministic init per key, different keys differ
  chex.assert_trees_all_equal(v1, v2)
  assert any(
    not np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(v1["params"]), jax.tree.leaves(v3["params"]))
  )

  y_eval = apply_eval(v1, x)
  chex.assert_shape(y_eval, (shape[0], out))
  assert np.all(np.isfinite(np.asarray(y_eval)))
  # eval mode is deterministic and per-sample: permuting the batch permutes the rows
  np.testing.assert_array_equal(np.asarray(apply_eval(v1, x)), np.asarray(y_eval))
  perm = np.roll(np.arange(shape[0]), 1)
  np.testing.assert_allclose(
    np.asarray(apply_eval(v1, x[perm])), np.asarray(y_eval)[perm], rtol=1e-4, atol=1e-5
  )

  # train mode: batch statistics are used and the running stats move
  y_train, updates = apply_train(v1, x)
  chex.assert_shape(y_train, (shape[0], out))
  old = jax.tree.leaves(v1["batch_stats"])
  new = jax.tree.leaves(updates["batch_stats"])
  assert len(new) == len(old) > 0
  assert all(not np.allclose(a, b) for a, b in zip(old, new))
  assert not np.allclose(np.asarray(y_train), np.asarray(y_eval))


def test_train_mode_requires_mutable_batch_stats():
  net = MLP(hidden=(4,), out_features=2, batch_norm=True)
  x = jnp.ones((3, 2))
  v = net.init(key(0), x)
  with pytest.raises(Exception, match="batch_stats"):
    net.apply(v, x, train=True)


def test_bn_train_mode_uses_batch_statistics():
  """A 1-layer MLP with BN in train mode: the pre-ReLU activations are standardised."""
  net = MLP(hidden=(3,), out_features=2, batch_norm=True)
  x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32) * 3 + 1
  v = net.init(key(0), x)
  _, inter = net.apply(
    v,
    x,
    train=True,
    mutable=["batch_stats", "intermediates"],
    capture_intermediates=lambda mdl, _: mdl.name == "BatchNorm_0",
  )
  z = np.asarray(inter["intermediates"]["BatchNorm_0"]["__call__"][0])
  np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-4)
  np.testing.assert_allclose(z.var(0), 1.0, atol=1e-3)
  # running mean after one step: 0.9 * 0 + 0.1 * batch mean of the Dense output (float64 reference)
  w = np.asarray(v["params"]["Dense_0"]["kernel"], np.float64)
  b = np.asarray(v["params"]["Dense_0"]["bias"], np.float64)
  h = x.astype(np.float64) @ w + b
  _, upd = net.apply(v, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(
    np.asarray(upd["batch_stats"]["BatchNorm_0"]["mean"]), 0.1 * h.mean(0), rtol=1e-4, atol=1e-5
  )
  np.testing.assert_allclose(
    np.asarray(upd["batch_stats"]["BatchNorm_0"]["var"]), 0.9 + 0.1 * h.var(0), rtol=1e-4
  )


def test_cnn1d_accepts_two_axis_signals():
  net = CNN1D(channels=(4,), out_features=3)
  x = jnp.ones((2, 40))
  v = net.init(key(0), x)
  np.testing.assert_array_equal(np.asarray(net.apply(v, x)), np.asarray(net.apply(v, x[..., None])))


def test_resnet18_parameter_count_and_structure():
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  v = jax.eval_shape(lambda: ResNet18().init(key(0), jnp.zeros(x.shape)))
  n = sum(int(np.prod(l.shape)) for l in jax.tree.leaves(v["params"]))
  # CIFAR ResNet-18 without the classifier: 11,168,832 parameters.
  assert 11.1e6 < n < 11.25e6, n
  out = jax.eval_shape(lambda v_: ResNet18().apply(v_, jnp.zeros(x.shape)), v)
  assert out.shape == (1, 512)
  head = jax.eval_shape(lambda: ResNet18(out_features=10).init(key(0), jnp.zeros(x.shape)))
  n_head = sum(int(np.prod(l.shape)) for l in jax.tree.leaves(head["params"]))
  assert n_head == n + 512 * 10 + 10
  # stage strides 1, 2, 2, 2 on 32x32 inputs: no max-pool in the stem
  stem = v["params"]["stem_conv"]["kernel"]
  assert stem.shape == (3, 3, 3, 64)
  assert v["params"]["stage4_block2"]["conv2"]["kernel"].shape == (3, 3, 512, 512)


def test_registry_and_errors():
  assert set(BACKBONES) == {"mlp", "cnn1d", "small_cnn", "resnet18"}
  assert isinstance(get_backbone("resnet18", width=0.5), ResNet18)
  assert get_backbone("small_cnn", out_features=3).out_features == 3
  with pytest.raises(ValueError, match="known"):
    get_backbone("vgg")
  with pytest.raises(AssertionError, match=r"rank 2 .*SmallCNN expects inputs shaped"):
    SmallCNN().init(key(0), jnp.ones((2, 8)))
  with pytest.raises(AssertionError, match=r"ResNet18 expects inputs shaped \[n, H, W, C\]"):
    ResNet18().init(key(0), jnp.ones((2, 8, 8)))
  with pytest.raises(AssertionError, match=r"CNN1D expects inputs shaped \[n, L, C\]"):
    CNN1D().init(key(0), jnp.ones((2,)))
  with pytest.raises(ValueError, match="width"):
    ResNet18(width=0.0).init(key(0), jnp.ones((1, 8, 8, 3)))


def test_cross_device_batch_norm_equals_single_device_global_batch():
  """Under pmap with axis_name, BN statistics cover the global batch."""
  n_dev = 4
  assert jax.local_device_count() >= n_dev
  x = np.random.default_rng(2).normal(size=(8, 10, 1)).astype(np.float32) * 3 + 1
  single = CNN1D(channels=(4,), out_features=3)
  multi = CNN1D(channels=(4,), out_features=3, axis_name="batch")
  v = jax.jit(single.init)(key(0), x)
  y_ref, upd_ref = jax.jit(
    lambda v_, x_: single.apply(v_, x_, train=True, mutable=["batch_stats"])
  )(v, x)

  replicated = jax.tree.map(lambda a: jnp.stack([a] * n_dev), v)
  y, upd = jax.pmap(
    lambda v_, x_: multi.apply(v_, x_, train=True, mutable=["batch_stats"]),
    axis_name="batch",
    devices=jax.local_devices()[:n_dev],
  )(replicated, x.reshape(n_dev, 2, 10, 1))
  np.testing.assert_allclose(np.asarray(y).reshape(8, 3), np.asarray(y_ref), rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(upd["batch_stats"]), jax.tree.leaves(upd_ref["batch_stats"])):
    for d in range(n_dev):
      np.testing.assert_allclose(np.asarray(a[d]), np.asarray(b), rtol=1e-4, atol=1e-6)
  # eval mode ignores the axis (no collective needed outside pmap)
  np.testing.assert_array_equal(
    np.asarray(jax.jit(multi.apply)(v, x)), np.asarray(jax.jit(single.apply)(v, x))
  )
