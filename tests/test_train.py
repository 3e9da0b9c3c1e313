"""Training loop: pmap equals one device, kill-and-resume, config errors, mock TFDS."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import train as main_job
from tfjax import train
from tfjax.config import base_config
from tfjax.data.augment import get_augment_fn


def tiny_config(**overrides):
  c = base_config()
  c.dataset = "subspaces_tiny"
  c.backbone = "mlp"
  c.backbone_kwargs = {"hidden": (16,), "out_features": 12, "batch_norm": True}
  c.embed_dim = 8
  c.projector_hidden = (16,)
  c.head.num_layers = 3
  c.batch_size = 16
  c.num_steps = 6
  c.warmup_steps = 2
  c.log_every = 2
  c.checkpoint_every = 2
  c.num_devices = 1
  c.eval.linear_steps = 20
  c.eval.finetune_steps = 20
  c.eval.finetune_fractions = (0.5,)
  c.eval.knn_k = 3
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    setattr(node, leaf, value)
  return c


def toy_data(n_train=48, n_test=24, dim=8, classes=3, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(classes, dim)) * 2
  def draw(n):
    y = np.arange(n) % classes
    return (centres[y] + rng.normal(size=(n, dim))).astype(np.float32), y.astype(np.int32)
  return (*draw(n_train), *draw(n_test))


def run_steps(config, num_devices, batches):
  """Runs len(batches) steps on ``num_devices`` devices; returns final state."""
  axis = "batch" if num_devices > 1 else None
  model_1 = train.build_network(config)
  model = train.build_network(config, axis)
  tx = train.build_optimizer(config)
  anchors = train.class_anchors(config, 3)
  state = train.create_train_state(config, model_1, tx, jax.random.key(0), (8,))
  step = train.make_train_step(config, model, tx, get_augment_fn("vector"), anchors, axis)
  if axis is None:
    step = jax.jit(step)
  else:
    step = jax.pmap(step, axis_name=axis, in_axes=(0, 0, None))
    state = train.replicate(state, num_devices)
  metrics = None
  for i, batch in enumerate(batches):
    if axis is not None:
      batch = train.shard(batch, num_devices)
    state, metrics = step(state, batch, train.step_key(0, i))
  if axis is not None:
    state, metrics = train.unreplicate(state), train.unreplicate(metrics)
  return state, metrics


# Each loss's pmap value and gradient are tested in test_losses_pmap.py; here
# the whole step: views, BatchNorm, head, OAR, pmean, optimiser.
@pytest.mark.slow
@pytest.mark.parametrize("loss,oar", [("jsd", True), ("info_nce", False)])
def test_pmap_equals_single_device(loss, oar):
  # SGD: Adam would blow float noise in near-zero gradients (a bias before
  # BatchNorm has gradient ~0) up to full-size steps on either side.
  config = tiny_config(loss=loss, label_fraction=0.5 if oar else None,
                       oar_weight=1.0 if oar else 0.0, optimizer="sgd",
                       learning_rate=0.05)
  x, y, _, _ = toy_data()
  semi = np.where(np.arange(len(y)) % 2 == 0, y, -1).astype(np.int32)
  batches = []
  for s in range(3):
    idx = train.batch_indices(0, s, len(x), config.batch_size)
    b = {"x": x[idx]}
    if oar:
      b["semi_label"] = semi[idx]
    batches.append(b)
  single, m1 = run_steps(config, 1, batches)
  multi, m4 = run_steps(config, 4, batches)
  # float32 sums in a different order: agreement to ~1e-5 relative.
  chex.assert_trees_all_close(single.params, multi.params, rtol=1e-4, atol=2e-5)
  chex.assert_trees_all_close(single.batch_stats, multi.batch_stats, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-4)
  # The steps moved the parameters (the comparison is not trivially true).
  fresh = train.create_train_state(config, train.build_network(config),
                                   train.build_optimizer(config), jax.random.key(0), (8,))
  diff = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), fresh.params, single.params)
  assert max(jax.tree.leaves(diff)) > 1e-4


def _jsd_batches(config, steps=2):
  x, y, _, _ = toy_data()
  semi = np.where(np.arange(len(y)) % 2 == 0, y, -1).astype(np.int32)
  out = []
  for s in range(steps):
    idx = train.batch_indices(0, s, len(x), config.batch_size)
    out.append({"x": x[idx], "semi_label": semi[idx]})
  return out


@pytest.mark.parametrize("num_devices", [
    1, pytest.param(4, marks=pytest.mark.slow)])
def test_blockwise_head_trains_like_dense(num_devices):
  """The whole train step with head.implementation="blockwise" (blocks of 5
  keys, so the 32 samples of a step span 7 blocks with a padded tail) moves
  the parameters exactly as the dense head does."""
  options = dict(loss="jsd", label_fraction=0.5, labels_in_loss=True,
                 oar_weight=1.0, optimizer="sgd", learning_rate=0.05)
  dense = tiny_config(**options)
  block = tiny_config(**options, **{"head.implementation": "blockwise",
                                    "head.block_size": 5})
  train.validate_config(block, num_devices)
  batches = _jsd_batches(dense)
  want, m_dense = run_steps(dense, 1, batches)
  got, m_block = run_steps(block, num_devices, batches)
  np.testing.assert_allclose(m_block["loss"], m_dense["loss"], rtol=1e-5)
  chex.assert_trees_all_close(got.params, want.params, rtol=1e-4, atol=2e-5)
  fresh = train.create_train_state(dense, train.build_network(dense),
                                   train.build_optimizer(dense),
                                   jax.random.key(0), (8,))
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()),
                       fresh.params["head"], got.params["head"])
  assert max(jax.tree.leaves(moved)) > 1e-4       # the head did learn


def test_blockwise_bfloat16_compute_from_config():
  config = tiny_config(**{"head.implementation": "blockwise",
                          "head.block_size": 8,
                          "head.compute_dtype": "bfloat16"})
  net = train.build_network(config)
  assert net.head.compute_dtype == jnp.bfloat16
  # Two steps: the first has learning rate 0 (warm-up).
  want, _ = run_steps(tiny_config(), 1, _jsd_batches(config))
  got, _ = run_steps(config, 1, _jsd_batches(config))
  # bf16 matmuls (8 mantissa bits): one step agrees to ~1e-3.
  chex.assert_trees_all_close(got.params, want.params, rtol=2e-2, atol=2e-3)
  # ... and differs from fp32 (the option reached the matmuls).
  diff = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()),
                      got.params["head"], want.params["head"])
  assert max(jax.tree.leaves(diff)) > 0


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted(tmp_path):
  config = tiny_config(num_steps=6, checkpoint_every=2)
  data = toy_data()
  full = train.train_and_evaluate(config, str(tmp_path / "full"), data=data, progress=False)
  # "Killed" after 3 steps: the last checkpoint is at step 2.
  part = train.train_and_evaluate(config, str(tmp_path / "resumed"), data=data,
                                  progress=False, stop_after=3)
  assert part["step"] == 3
  resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"), data=data,
                                     progress=False)
  chex.assert_trees_all_equal(full["state"].params, resumed["state"].params)
  assert full["knn"] == resumed["knn"]
  steps = [r["step"] for r in train.read_metrics(str(tmp_path / "resumed" / "metrics.jsonl"))]
  assert steps == [2, 4, 6]  # the lines after the checkpoint were replaced, not duplicated
  for name in ("results.json", "loss.png", "affinity.png", "spectrum.png"):
    assert os.path.getsize(tmp_path / "resumed" / name) > 0


def test_config_errors_before_compute():
  with pytest.raises(ValueError, match="not divisible by the device count 4"):
    train.validate_config(tiny_config(batch_size=18), num_devices=4)
  with pytest.raises(ValueError, match="unknown loss 'simclr'"):
    train.validate_config(tiny_config(loss="simclr"))
  with pytest.raises(ValueError, match="unknown dataset 'cifar11'"):
    train.validate_config(tiny_config(dataset="cifar11"))
  with pytest.raises(ValueError, match="unknown backbone 'resnet19'"):
    train.validate_config(tiny_config(backbone="resnet19"))
  with pytest.raises(ValueError, match=r"warmup_steps \(6\) must lie in \[0, num_steps=6\)"):
    train.validate_config(tiny_config(warmup_steps=6))
  with pytest.raises(ValueError, match=r"label_fraction must be in \(0, 1\]"):
    train.validate_config(tiny_config(label_fraction=0.0))
  with pytest.raises(ValueError, match="needs label_fraction"):
    train.validate_config(tiny_config(oar_weight=1.0))
  with pytest.raises(ValueError, match="unknown head.implementation 'flash'"):
    train.validate_config(tiny_config(**{"head.implementation": "flash"}))
  with pytest.raises(ValueError, match="head.block_size must be a positive"):
    train.validate_config(tiny_config(**{"head.implementation": "blockwise",
                                         "head.block_size": 0}))
  with pytest.raises(ValueError, match="head.compute_dtype must name a float"):
    train.validate_config(tiny_config(**{"head.implementation": "blockwise",
                                         "head.compute_dtype": "int8"}))
  with pytest.raises(ValueError, match="head.compute_dtype must name a float"):
    train.validate_config(tiny_config(**{"head.implementation": "blockwise",
                                         "head.compute_dtype": "bfloat17"}))
  with pytest.raises(ValueError, match="unknown config field 'learning_rte'"):
    main_job.apply_overrides(tiny_config(), ["learning_rte=0.1"])
  with pytest.raises(AttributeError):
    tiny_config().learning_rte = 0.1


def test_batch_indices_pure_function_of_step():
  a = [train.batch_indices(3, s, 50, 16) for s in range(7)]
  b = [train.batch_indices(3, s, 50, 16) for s in range(7)]
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  np.testing.assert_equal(len(set(np.concatenate(a[:3]))), 48)  # one epoch, no repeats
  with pytest.raises(ValueError, match="exceeds"):
    train.batch_indices(0, 0, 10, 16)


@pytest.mark.slow
def test_main_job_on_mock_mnist(tmp_path):
  """The real main job end to end on tfds.testing.mock_data (no download)."""
  import tensorflow_datasets as tfds
  config = tmp_path / "mock.py"
  config.write_text(
      "from tfjax.config import base_config\n"
      "COMPARE = ('jsd', 'info_nce')\nRAW_BASELINE = True\n"
      "def get_config():\n"
      "  c = base_config()\n"
      "  c.dataset = 'mnist'\n  c.backbone = 'small_cnn'\n"
      "  c.backbone_kwargs = {'out_features': 16}\n"
      "  c.embed_dim = 8\n  c.projector_hidden = (16,)\n  c.head.num_layers = 2\n"
      "  c.batch_size = 16\n  c.num_steps = 3\n  c.warmup_steps = 1\n  c.log_every = 1\n  c.num_devices = 1\n"
      "  c.eval.linear_steps = 10\n  c.eval.finetune_steps = 10\n"
      "  c.eval.finetune_fractions = (1.0,)\n  c.eval.knn_k = 3\n"
      "  return c\n")
  with tfds.testing.mock_data(num_examples=48):
    rows = main_job.main(["--config", str(config), "--workdir", str(tmp_path / "w"),
                          "--no-progress"])
  assert [r["method"] for r in rows] == ["TransFusion (JSD)", "SimCLR (InfoNCE)",
                                         "raw inputs (no training)"]
  for r in rows:
    assert 0.0 <= r["knn"] <= 1.0
  table = (tmp_path / "w" / "results.md").read_text()
  assert "| TransFusion (JSD) |" in table
  assert (tmp_path / "w" / "comparison.png").stat().st_size > 0
  metrics = [json.loads(l) for l in open(tmp_path / "w" / "jsd" / "metrics.jsonl")]
  assert [m["step"] for m in metrics] == [1, 2, 3]


def test_semi_supervised_ids_match_positive_mask():
  import tfjax
  rng = np.random.default_rng()
  source = rng.integers(0, 6, size=8)
  groups = np.tile(source, 2).astype(np.int32)            # two views per source
  per_source = np.where(rng.random(6) < 0.5, rng.integers(0, 3, 6), -1)
  labels = per_source[groups].astype(np.int32)
  ids = np.asarray(train.semi_supervised_ids(jnp.asarray(groups), jnp.asarray(labels)))
  same_id = (ids[:, None] == ids[None, :]) & ~np.eye(16, dtype=bool)
  np.testing.assert_array_equal(same_id, tfjax.positive_mask(groups, labels))
