"""Optimisers and schedules: closed forms, masks, and descent on a quadratic."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tfjax.optim import decay_mask, make_optimizer, make_schedule


def cosine_ref(t, base, total, warmup, end_factor):
  end = base * end_factor
  if t < warmup:
    return base * t / warmup
  t = min(t, total)
  return end + (base - end) * 0.5 * (1 + math.cos(math.pi * (t - warmup) / (total - warmup)))


@pytest.mark.parametrize("warmup,end_factor", [(10, 0.0), (0, 0.1), (25, 0.05)])
def test_warmup_cosine_closed_form(warmup, end_factor):
  base, total = 0.4, 100
  sched = make_schedule(
    "warmup_cosine", base_lr=base, total_steps=total, warmup_steps=warmup, end_lr_factor=end_factor
  )
  for t in sorted(
    {
      0,
      1,
      warmup // 2,
      max(warmup - 1, 0),
      warmup,
      warmup + 1,
      (warmup + total) // 2,
      total - 1,
      total,
      total + 50,
    }
  ):
    np.testing.assert_allclose(
      float(sched(t)),
      cosine_ref(t, base, total, warmup, end_factor),
      rtol=1e-5,
      atol=1e-7,
      err_msg=f"step {t}",
    )
  # key points: peak at the end of warm-up, half-way value, end value
  np.testing.assert_allclose(float(sched(warmup)), base, rtol=1e-6)
  np.testing.assert_allclose(float(sched(total)), base * end_factor, atol=1e-7)
  np.testing.assert_allclose(
    float(sched((warmup + total) // 2 if (total - warmup) % 2 == 0 else warmup)),
    base * (end_factor + (1 - end_factor) * 0.5) if (total - warmup) % 2 == 0 else base,
    rtol=1e-5,
  )
  # jit-able on a traced step
  np.testing.assert_allclose(
    float(jax.jit(sched)(jnp.asarray(warmup + 3))),
    cosine_ref(warmup + 3, base, total, warmup, end_factor),
    rtol=1e-5,
  )


def test_constant_schedule_with_and_without_warmup():
  s = make_schedule("constant", base_lr=0.2, total_steps=50)
  assert [float(s(t)) for t in (0, 10, 49, 500)] == pytest.approx([0.2] * 4)
  s = make_schedule("constant", base_lr=0.2, total_steps=50, warmup_steps=4)
  np.testing.assert_allclose(
    [float(s(t)) for t in (0, 1, 2, 4, 30)], [0.0, 0.05, 0.1, 0.2, 0.2], rtol=1e-6
  )


def test_schedule_errors():
  with pytest.raises(ValueError, match="choices"):
    make_schedule("step", base_lr=0.1, total_steps=10)
  with pytest.raises(ValueError, match="warmup_steps"):
    make_schedule("warmup_cosine", base_lr=0.1, total_steps=10, warmup_steps=11)
  with pytest.raises(ValueError, match="warmup_steps"):
    make_schedule("warmup_cosine", base_lr=0.1, total_steps=10, warmup_steps=10)
  with pytest.raises(ValueError, match="total_steps"):
    make_schedule("warmup_cosine", base_lr=0.1, total_steps=0)
  with pytest.raises(ValueError, match="base_lr"):
    make_schedule("constant", base_lr=-1.0, total_steps=10)
  with pytest.raises(ValueError, match="end_lr_factor"):
    make_schedule("warmup_cosine", base_lr=0.1, total_steps=10, end_lr_factor=2.0)


def _params():
  rng = np.random.default_rng(0)
  return {
    "Dense_0": {
      "kernel": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
      "bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32),
    },
    "BatchNorm_0": {"scale": jnp.ones((4,)), "bias": jnp.zeros((4,))},
    "LayerNorm_0": {"scale": jnp.ones((4,)), "bias": jnp.zeros((4,))},
    "Conv_0": {"kernel": jnp.ones((3, 3, 1, 2))},
    "pos": jnp.zeros((5, 2)),
    "temp": jnp.zeros(()),
  }


def test_decay_mask_excludes_biases_and_norm_scales():
  mask = decay_mask(_params())
  assert mask == {
    "Dense_0": {"kernel": True, "bias": False},
    "BatchNorm_0": {"scale": False, "bias": False},
    "LayerNorm_0": {"scale": False, "bias": False},
    "Conv_0": {"kernel": True},
    "pos": True,  # unnamed matrix: decayed (our choice)
    "temp": False,  # unnamed scalar: not decayed
  }
  # also on real Flax parameters
  import flax.linen as nn

  v = nn.Sequential([nn.Dense(3), nn.LayerNorm(), nn.Dense(2)]).init(
    jax.random.key(0), jnp.ones((1, 2))
  )
  m = decay_mask(v["params"])
  flat = {
    "/".join(str(getattr(k, "key", k)) for k in p): b
    for p, b in jax.tree_util.tree_leaves_with_path(m)
  }
  assert flat == {
    "layers_0/bias": False,
    "layers_0/kernel": True,
    "layers_1/bias": False,
    "layers_1/scale": False,
    "layers_2/bias": False,
    "layers_2/kernel": True,
  }


@pytest.mark.parametrize("mask", [None, "no_bias_norm"])
def test_sgd_decoupled_weight_decay_one_step(mask):
  params = _params()
  lr, wd = 0.5, 0.1
  tx = make_optimizer("sgd", lr, weight_decay=wd, momentum=0.9, weight_decay_mask=mask)
  grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  decayed = decay_mask(params) if mask else jax.tree.map(lambda _: True, params)
  for p, n, d in zip(jax.tree.leaves(params), jax.tree.leaves(new), jax.tree.leaves(decayed)):
    expected = np.asarray(p) * (1 - lr * wd) if d else np.asarray(p)
    np.testing.assert_allclose(np.asarray(n), expected, rtol=1e-6)


def test_sgd_momentum_matches_reference():
  """Two steps of SGD + momentum + decoupled decay against a float64 recursion."""
  w0 = np.array([1.0, -2.0, 3.0])
  g_fn = lambda w: 2 * (w - 0.5)
  lr, mu, wd = 0.1, 0.9, 0.01
  tx = make_optimizer("sgd", lr, momentum=mu, weight_decay=wd)
  p = {"kernel": jnp.asarray(w0, jnp.float32)}
  state = tx.init(p)
  w, m = w0.copy(), np.zeros(3)
  for _ in range(3):
    upd, state = tx.update({"kernel": g_fn(p["kernel"])}, state, p)
    p = optax.apply_updates(p, upd)
    m = mu * m + g_fn(w)
    w = w - lr * (m + wd * w)
  np.testing.assert_allclose(np.asarray(p["kernel"]), w, rtol=1e-5)


@pytest.mark.parametrize(
  "name,lr,kwargs",
  [
    ("sgd", 0.05, {}),
    ("sgd", 0.05, {"nesterov": True, "weight_decay": 1e-4, "weight_decay_mask": "no_bias_norm"}),
    ("adamw", 0.05, {"weight_decay": 1e-4}),
    ("lars", 0.1, {"weight_decay": 1e-5, "trust_coefficient": 0.5}),
  ],
)
def test_each_optimizer_reduces_a_quadratic(name, lr, kwargs):
  rng = np.random.default_rng(1)
  target = {
    "Dense_0": {
      "kernel": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
      "bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32),
    }
  }
  params = {
    "Dense_0": {
      "kernel": jnp.asarray(rng.normal(size=(3, 4)) + 2, jnp.float32),
      "bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32),
    }
  }

  def loss(p):
    return sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(target)))

  tx = make_optimizer(name, make_schedule("warmup_cosine", lr, 150, 5), **kwargs)

  @jax.jit
  def run(p):
    def step(carry, _):
      p, s = carry
      g = jax.grad(loss)(p)
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None

    (p, _), _ = jax.lax.scan(step, (p, tx.init(p)), None, length=150)
    return p

  l0 = float(loss(params))
  l1 = float(loss(run(params)))
  assert np.isfinite(l1)
  # kernel error dominates the start; every optimiser must cut the loss by at least 10x
  assert l1 < 0.1 * l0, (name, l0, l1)


def test_lars_excludes_biases_from_adaptation_and_decay_by_default():
  """With a zero gradient, LARS changes kernels (decay) but never biases or scales."""
  params = _params()
  tx = make_optimizer("lars", 0.1, weight_decay=0.5)
  grads = jax.tree.map(jnp.zeros_like, params)
  upd, _ = tx.update(grads, tx.init(params), params)
  mask = decay_mask(params)
  # decayed leaves: u = wd·p rescaled by the trust ratio tc·|p|/|wd·p| -> -lr·tc·p
  for u, p, d in zip(jax.tree.leaves(upd), jax.tree.leaves(params), jax.tree.leaves(mask)):
    expected = -0.1 * 0.001 * np.asarray(p) if d else np.zeros_like(np.asarray(p))
    np.testing.assert_allclose(np.asarray(u), expected, rtol=1e-5, atol=1e-12)
  assert np.any(np.asarray(upd["Dense_0"]["kernel"]) != 0)


def test_optimizer_errors():
  with pytest.raises(ValueError, match="choices"):
    make_optimizer("rmsprop", 0.1)
  with pytest.raises(ValueError, match="weight_decay_mask"):
    make_optimizer("sgd", 0.1, weight_decay=0.1, weight_decay_mask="everything")
  with pytest.raises(ValueError, match="weight_decay"):
    make_optimizer("adamw", 0.1, weight_decay=-1.0)
  with pytest.raises(ValueError, match="momentum"):
    make_optimizer("sgd", 0.1, momentum=1.5)
  with pytest.raises(ValueError, match="learning_rate"):
    make_optimizer("sgd", float("nan"))
