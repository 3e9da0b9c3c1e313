"""CLOA's protocol: a separate labelled batch per step for OAR, and the two
losses' gradient norms logged apart (input pipeline, step, loop)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.test_train import fresh_state, tiny_config, toy_data
from tfjax import devices, losses, train
from tfjax.config import validate
from tfjax.data import pipeline
from tfjax.data.pipeline import ArraySource, batch_indices, labelled_batch
from tfjax.metrics import read_metrics
from tfjax.step import LABELLED_KEY, global_index_views, step_key, train_step
from tfjax.data.augment import get_augmentation


def _source(n=60, dim=8, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, dim)).astype(np.float32)
  y = (np.arange(n) % 3).astype(np.int32)
  return ArraySource(x, y), x, y


def test_labelled_batch_reads_only_labelled_examples_in_its_own_order():
  source, x, y = _source()
  semi = np.where(np.arange(len(y)) % 4 == 0, y, -1).astype(np.int32)  # 15 labelled
  labelled = np.flatnonzero(semi >= 0)
  seen = []
  for step in range(6):
    b = labelled_batch(source, labelled, seed=3, step=step, batch_size=5)
    chex.assert_shape(b["labelled_x"], (5, 8))
    chex.assert_shape(b["labelled_label"], (5,))
    # every row is a labelled example, with its own label
    rows = [int(np.flatnonzero((x == r).all(1))[0]) for r in b["labelled_x"]]
    assert all(semi[r] >= 0 for r in rows)
    np.testing.assert_array_equal(b["labelled_label"], y[rows])
    seen.append(rows)
  # 3 batches cover the 15 labelled examples once per epoch
  assert sorted(sum(seen[:3], [])) == list(labelled)
  # a pure function of (seed, step), independent of the main batch's order
  again = labelled_batch(source, labelled, seed=3, step=4, batch_size=5)
  np.testing.assert_array_equal(again["labelled_x"], x[seen[4]])
  main = batch_indices(3, 0, 15, 5)
  assert list(labelled[main]) != seen[0]


def test_labelled_batch_larger_than_the_labelled_subset_is_a_clear_error():
  source, _, y = _source()
  with pytest.raises(ValueError, match="labelled_batch_size 20 exceeds the 15"):
    list(
      pipeline.train_batches(
        source,
        seed=0,
        batch_size=10,
        start_step=0,
        end_step=2,
        semi=np.where(np.arange(len(y)) % 4 == 0, y, -1),
        labelled_batch_size=20,
        num_threads=0,
      )
    )


def test_train_batches_add_the_labelled_batch_per_step_and_device():
  source, _, y = _source()
  semi = np.where(np.arange(len(y)) % 2 == 0, y, -1).astype(np.int32)
  ((first, count, b),) = list(
    pipeline.train_batches(
      source,
      seed=0,
      batch_size=8,
      start_step=5,
      end_step=6,
      semi=semi,
      num_devices=4,
      labelled_batch_size=4,
      num_threads=0,
    )
  )
  assert (first, count) == (5, 1)
  chex.assert_shape(b["x"], (4, 2, 8))
  chex.assert_shape(b["labelled_x"], (4, 1, 8))
  want = labelled_batch(source, np.flatnonzero(semi >= 0), seed=0, step=5, batch_size=4)
  np.testing.assert_array_equal(b["labelled_x"].reshape(4, 8), want["labelled_x"])


def test_config_checks_for_the_labelled_batch():
  with pytest.raises(ValueError, match="set oar_weight > 0"):
    validate(tiny_config(labelled_batch_size=4), 1)
  with pytest.raises(ValueError, match="divisible by the 4 devices"):
    validate(
      tiny_config(labelled_batch_size=6, label_fraction=0.5, oar_weight=1.0, loss="info_nce"), 4
    )


def _batch(config, step=0, labelled=8):
  x, y, _, _ = toy_data()
  idx = batch_indices(0, step, len(x), config.batch_size)
  lidx = batch_indices(0, step, len(x), labelled, stream=1)
  return {
    "x": x[idx],
    "semi_label": np.full(len(idx), -1, np.int32),
    "labelled_x": x[lidx],
    "labelled_label": y[lidx],
  }


def test_step_takes_oar_on_the_labelled_batch_and_logs_each_gradient():
  config = tiny_config(
    loss="info_nce",
    label_fraction=0.1,
    oar_weight=0.7,
    labelled_batch_size=8,
    optimizer="sgd",
    learning_rate=0.1,
    temperature=0.1,
  )
  state = fresh_state(config)
  batch = _batch(config)
  key = step_key(0, 0)
  new, m = jax.jit(train_step)(state, batch, key)

  # Independent reference: the two losses rebuilt from the public pieces,
  # differentiated separately with jax.grad.
  recipe = state.recipe
  augment = get_augmentation(recipe.augment, recipe.data_kind)

  def flat_views(k, x):
    v = global_index_views(augment, k, jnp.asarray(x), recipe.augment_strength, 2, 0)
    return v.reshape((-1,) + v.shape[2:])

  xu = flat_views(key, batch["x"])
  xl = flat_views(jax.random.fold_in(key, LABELLED_KEY), batch["labelled_x"])
  yl = jnp.tile(jnp.asarray(batch["labelled_label"]), 2)

  def embed(params, x, stats):
    (_, z), new_stats = state.model.apply(
      {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
    )
    return z, new_stats["batch_stats"]

  def base_fn(params):
    z, _ = embed(params, xu, state.batch_stats)
    return losses.info_nce(z[:16], z[16:], temperature=config.temperature)

  def oar_fn(params):
    _, stats = embed(params, xu, state.batch_stats)
    z, _ = embed(params, xl, stats)
    return losses.oar_loss(z, yl, state.anchors)

  base, g_base = jax.value_and_grad(base_fn)(state.params)
  oar, g_oar = jax.value_and_grad(oar_fn)(state.params)
  np.testing.assert_allclose(m["base_loss"], base, rtol=1e-5)
  np.testing.assert_allclose(m["oar_loss"], oar, rtol=1e-5)
  np.testing.assert_allclose(m["loss"], base + 0.7 * oar, rtol=1e-5)
  np.testing.assert_allclose(m["base_grad_norm"], optax.global_norm(g_base), rtol=1e-4)
  np.testing.assert_allclose(m["oar_grad_norm"], optax.global_norm(g_oar), rtol=1e-4)
  total = jax.tree.map(lambda a, b: a + 0.7 * b, g_base, g_oar)
  np.testing.assert_allclose(m["grad_norm"], optax.global_norm(total), rtol=1e-4)
  assert float(m["oar_grad_norm"]) > 0
  # the labelled rows of the main batch are not used: none are labelled
  # here, yet OAR is positive (it came from the labelled batch)
  assert 0 < float(m["oar_loss"]) < 2


def test_without_oar_the_oar_gradient_is_zero():
  config = tiny_config(loss="info_nce")
  state = fresh_state(config)
  x, _, _, _ = toy_data()
  _, m = jax.jit(train_step)(state, {"x": x[:16]}, step_key(0, 0))
  assert float(m["oar_grad_norm"]) == 0.0
  np.testing.assert_allclose(m["base_grad_norm"], m["grad_norm"], rtol=1e-6)


@pytest.mark.slow
def test_labelled_batch_on_four_devices_equals_one():
  config = tiny_config(
    loss="info_nce",
    label_fraction=0.5,
    oar_weight=1.0,
    labelled_batch_size=8,
    optimizer="sgd",
    learning_rate=0.05,
  )
  batches = [_batch(config, s) for s in range(2)]

  def run(num_devices):
    axis = "batch" if num_devices > 1 else None
    state = fresh_state(config, axis)
    step = devices.compile_step(num_devices)
    if axis:
      state = devices.replicate(state, num_devices)
    for i, b in enumerate(batches):
      state, m = step(state, devices.shard(b, num_devices) if axis else b, step_key(0, i))
    return (devices.unreplicate(state), devices.unreplicate(m)) if axis else (state, m)

  one, m1 = run(1)
  four, m4 = run(4)
  chex.assert_trees_all_close(one.params, four.params, rtol=1e-4, atol=2e-5)
  for k in ("loss", "oar_loss", "base_grad_norm", "oar_grad_norm"):
    np.testing.assert_allclose(m1[k], m4[k], rtol=1e-4)


def test_loop_trains_with_a_labelled_batch(tmp_path):
  config = tiny_config(
    loss="info_nce", label_fraction=0.25, oar_weight=1.0, labelled_batch_size=8, num_steps=4
  )
  res = train.train_and_evaluate(config, str(tmp_path), progress=False, data=toy_data())
  rows = read_metrics(str(tmp_path / "metrics.jsonl"))
  assert rows and all(r["oar_grad_norm"] > 0 and r["base_grad_norm"] > 0 for r in rows)
  assert 0 <= res["knn"] <= 1
