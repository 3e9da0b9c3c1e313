"""The one training path: step (jit = pmap = scan), loop (resume, metrics), registry, configs."""

import gc
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import set_fields

from experiments import train as main_job
from experiments.runs import run_configs
from tfjax import devices, evaluation, guards, methods, train
from tfjax.config import base_config, validate
from tfjax.data import splits
from tfjax.data.pipeline import batch_indices
from tfjax.data.registry import get_dataset_spec
from tfjax.metrics import read_metrics
from tfjax.state import build_network, create_train_state
from tfjax.step import step_key


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
  return set_fields(c, overrides)


def toy_data(n_train=48, n_test=24, dim=8, classes=3, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(classes, dim)) * 2

  def draw(n):
    y = np.arange(n) % classes
    return (centres[y] + rng.normal(size=(n, dim))).astype(np.float32), y.astype(np.int32)

  return (*draw(n_train), *draw(n_test))


def fresh_state(config, axis=None):
  return create_train_state(config, jax.random.key(0), (8,), 3, data_kind="vector", axis_name=axis)


def run_steps(config, num_devices, batches):
  """Runs len(batches) steps on ``num_devices`` devices; returns final state."""
  axis = "batch" if num_devices > 1 else None
  state = fresh_state(config, axis)
  step = devices.compile_step(num_devices)
  if axis is not None:
    state = devices.replicate(state, num_devices)
  metrics = None
  for i, batch in enumerate(batches):
    if axis is not None:
      batch = devices.shard(batch, num_devices)
    state, metrics = step(state, batch, step_key(0, i))
  if axis is not None:
    state, metrics = devices.unreplicate(state), devices.unreplicate(metrics)
  return state, metrics


# Each loss's pmap value and gradient are tested in test_losses_pmap.py; here
# the whole step: views, BatchNorm, head, OAR, pmean, optimiser.
@pytest.mark.slow
@pytest.mark.parametrize("loss,oar", [("jsd", True), ("info_nce", False)])
def test_pmap_equals_single_device(loss, oar):
  # SGD: Adam would blow float noise in near-zero gradients (a bias before
  # BatchNorm has gradient ~0) up to full-size steps on either side.
  config = tiny_config(
    loss=loss,
    label_fraction=0.5 if oar else None,
    oar_weight=1.0 if oar else 0.0,
    optimizer="sgd",
    learning_rate=0.05,
  )
  x, y, _, _ = toy_data()
  semi = np.where(np.arange(len(y)) % 2 == 0, y, -1).astype(np.int32)
  batches = []
  for s in range(3):
    idx = batch_indices(0, s, len(x), config.batch_size)
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
  fresh = fresh_state(config)
  diff = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), fresh.params, single.params)
  assert max(jax.tree.leaves(diff)) > 1e-4


def _jsd_batches(config, steps=2):
  x, y, _, _ = toy_data()
  semi = np.where(np.arange(len(y)) % 2 == 0, y, -1).astype(np.int32)
  out = []
  for s in range(steps):
    idx = batch_indices(0, s, len(x), config.batch_size)
    out.append({"x": x[idx], "semi_label": semi[idx]})
  return out


@pytest.mark.parametrize("num_devices", [1, pytest.param(4, marks=pytest.mark.slow)])
def test_blockwise_head_trains_like_dense(num_devices):
  """The whole train step with head.implementation="blockwise" (blocks of 5
  keys, so the 32 samples of a step span 7 blocks with a padded tail) moves
  the parameters exactly as the dense head does."""
  options = dict(
    loss="jsd",
    label_fraction=0.5,
    labels_in_loss=True,
    oar_weight=1.0,
    optimizer="sgd",
    learning_rate=0.05,
  )
  dense = tiny_config(**options)
  block = tiny_config(**options, **{"head.implementation": "blockwise", "head.block_size": 5})
  validate(block, num_devices)
  batches = _jsd_batches(dense)
  want, m_dense = run_steps(dense, 1, batches)
  got, m_block = run_steps(block, num_devices, batches)
  np.testing.assert_allclose(m_block["loss"], m_dense["loss"], rtol=1e-5)
  chex.assert_trees_all_close(got.params, want.params, rtol=1e-4, atol=2e-5)
  fresh = fresh_state(dense)
  moved = jax.tree.map(
    lambda a, b: float(jnp.abs(a - b).max()), fresh.params["head"], got.params["head"]
  )
  assert max(jax.tree.leaves(moved)) > 1e-4  # the head did learn


def test_blockwise_bfloat16_compute_from_config():
  config = tiny_config(
    **{"head.implementation": "blockwise", "head.block_size": 8, "head.compute_dtype": "bfloat16"}
  )
  net = build_network(config)
  assert net.head.compute_dtype == jnp.bfloat16
  # Two steps: the first has learning rate 0 (warm-up).
  want, _ = run_steps(tiny_config(), 1, _jsd_batches(config))
  got, _ = run_steps(config, 1, _jsd_batches(config))
  # bf16 matmuls (8 mantissa bits): one step agrees to ~1e-3.
  chex.assert_trees_all_close(got.params, want.params, rtol=2e-2, atol=2e-3)
  # ... and differs from fp32 (the option reached the matmuls).
  diff = jax.tree.map(
    lambda a, b: float(jnp.abs(a - b).max()), got.params["head"], want.params["head"]
  )
  assert max(jax.tree.leaves(diff)) > 0


@pytest.mark.slow
@pytest.mark.parametrize("source", ["arrays", "tfds"])
def test_kill_and_resume_matches_uninterrupted(tmp_path, source):
  """Arrays, or the offline TFDS dataset streamed from its array_record files."""
  config = tiny_config(num_steps=6, checkpoint_every=2)
  data = toy_data() if source == "arrays" else None
  full = train.train_and_evaluate(config, str(tmp_path / "full"), data=data, progress=False)
  # "Killed" after 3 steps: the last checkpoint is at step 2.
  part = train.train_and_evaluate(
    config, str(tmp_path / "resumed"), data=data, progress=False, stop_after=3
  )
  assert part["step"] == 3
  resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"), data=data, progress=False)
  chex.assert_trees_all_equal(full["state"].params, resumed["state"].params)
  assert full["knn"] == resumed["knn"]
  steps = [r["step"] for r in read_metrics(str(tmp_path / "resumed" / "metrics.jsonl"))]
  assert steps == [2, 4, 6]  # the lines after the checkpoint were replaced, not duplicated
  for name in ("results.json", "loss.png", "affinity.png", "spectrum.png"):
    assert os.path.getsize(tmp_path / "resumed" / name) > 0


@pytest.mark.slow
@pytest.mark.parametrize("steps_per_call", [1, 2])
def test_loop_on_four_devices_equals_one(tmp_path, steps_per_call):
  """The whole loop: streaming input, device prefetch (sharded over 4
  devices), the pmapped step (or scan of steps) and checkpoints."""
  options = dict(
    loss="jsd",
    label_fraction=0.5,
    labels_in_loss=True,
    oar_weight=1.0,
    optimizer="sgd",
    learning_rate=0.05,
    num_steps=4,
    steps_per_call=steps_per_call,
  )
  data = toy_data()
  one = train.train_and_evaluate(
    tiny_config(num_devices=1, **options),
    str(tmp_path / "one"),
    data=data,
    progress=False,
    stop_after=4,
  )
  four = train.train_and_evaluate(
    tiny_config(num_devices=4, **options),
    str(tmp_path / "four"),
    data=data,
    progress=False,
    stop_after=4,
  )
  chex.assert_trees_all_close(one["state"].params, four["state"].params, rtol=1e-4, atol=2e-5)


def test_steps_per_call_scan_equals_single_steps(tmp_path):
  """steps_per_call=3 (a lax.scan over steps) trains the same parameters and
  logs the same metrics as one step per call."""
  data = toy_data()
  one = train.train_and_evaluate(
    tiny_config(num_steps=6, log_every=1),
    str(tmp_path / "a"),
    data=data,
    progress=False,
    stop_after=6,
  )
  three = train.train_and_evaluate(
    tiny_config(num_steps=6, log_every=1, steps_per_call=3),
    str(tmp_path / "b"),
    data=data,
    progress=False,
    stop_after=6,
  )
  chex.assert_trees_all_close(one["state"].params, three["state"].params, rtol=1e-5, atol=1e-6)
  m1 = read_metrics(str(tmp_path / "a" / "metrics.jsonl"))
  m3 = read_metrics(str(tmp_path / "b" / "metrics.jsonl"))
  assert [r["step"] for r in m3] == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose([r["loss"] for r in m3], [r["loss"] for r in m1], rtol=1e-5)


def test_diverged_run_stops_with_valid_json(tmp_path):
  """A non-finite metric stops the run, naming the step and the quantity;
  metrics.jsonl stays valid JSON (null, never a bare NaN)."""
  config = tiny_config(
    learning_rate=1e12, optimizer="sgd", warmup_steps=0, num_steps=20, log_every=1
  )
  with pytest.raises(
    FloatingPointError,
    match=r"training diverged: loss.* not "
    r"finite at step \d+ \(learning_rate=1e\+12\)",
  ):
    train.train_and_evaluate(config, str(tmp_path), data=toy_data(), progress=False)
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  records = [json.loads(l) for l in lines]  # json.loads rejects nothing here...
  assert "NaN" not in "".join(lines) and "Infinity" not in "".join(lines)  # ...so check
  last = records[-1]
  assert last["nonfinite"] and all(last[k] is None for k in last["nonfinite"])


def test_nonfinite_state_names_the_leaves_in_order():
  state = fresh_state(tiny_config())
  assert guards.nonfinite_state(state) == []
  kernel = state.params["backbone"]["Dense_0"]["kernel"]
  params = jax.tree.map(lambda x: x, state.params)
  params["backbone"]["Dense_0"]["kernel"] = kernel.at[0, 0].set(jnp.inf)
  stats = jax.tree.map(lambda x: x * jnp.nan, state.batch_stats)
  bad = guards.nonfinite_state(state.replace(params=params, batch_stats=stats))
  assert bad[0] == "params/backbone/Dense_0/kernel"
  assert bad[1:] and all(b.startswith("batch_stats/") for b in bad[1:])
  assert len(bad) == 1 + len(jax.tree.leaves(state.batch_stats))
  # The pmapped loop's replicated state: one device's bad copy is enough.
  both = devices.replicate(state.replace(params=params), 2)
  assert guards.nonfinite_state(both, replicated=True) == bad[:1]
  good = devices.replicate(state, 2)
  assert guards.nonfinite_state(good, replicated=True) == []
  one_bad = jax.tree.map(lambda g, b: np.stack([g[0], b[1]]), good, both)
  assert guards.nonfinite_state(one_bad, replicated=True) == bad[:1]


def test_config_errors_before_compute():
  with pytest.raises(ValueError, match="not divisible by the device count 4"):
    validate(tiny_config(batch_size=18), num_devices=4)
  with pytest.raises(ValueError, match="unknown loss 'simclr'"):
    validate(tiny_config(loss="simclr"))
  with pytest.raises(ValueError, match="unknown dataset 'cifar11'"):
    validate(tiny_config(dataset="cifar11"))
  with pytest.raises(ValueError, match="unknown backbone 'resnet19'"):
    validate(tiny_config(backbone="resnet19"))
  with pytest.raises(ValueError, match=r"warmup_steps \(6\) must lie in \[0, num_steps=6\)"):
    validate(tiny_config(warmup_steps=6))
  with pytest.raises(ValueError, match=r"label_fraction must be in \(0, 1\]"):
    validate(tiny_config(label_fraction=0.0))
  with pytest.raises(ValueError, match="needs label_fraction"):
    validate(tiny_config(oar_weight=1.0))
  with pytest.raises(ValueError, match="unknown head.implementation 'flash'"):
    validate(tiny_config(**{"head.implementation": "flash"}))
  with pytest.raises(ValueError, match="head.block_size must be a positive"):
    validate(tiny_config(**{"head.implementation": "blockwise", "head.block_size": 0}))
  with pytest.raises(ValueError, match="head.compute_dtype must name a float"):
    validate(tiny_config(**{"head.implementation": "blockwise", "head.compute_dtype": "int8"}))
  with pytest.raises(ValueError, match="head.compute_dtype must name a float"):
    validate(tiny_config(**{"head.implementation": "blockwise", "head.compute_dtype": "bfloat17"}))
  with pytest.raises(ValueError, match="takes exactly 2 views"):
    validate(tiny_config(loss="info_nce", num_views=3))
  with pytest.raises(ValueError, match="num_views must be >= 2"):
    validate(tiny_config(num_views=1))
  with pytest.raises(ValueError, match="cannot use labels"):
    validate(tiny_config(loss="info_nce", label_fraction=1.0, labels_in_loss=True))
  with pytest.raises(ValueError, match="unknown augmentation 'blur'"):
    validate(tiny_config(augment="blur"))
  with pytest.raises(ValueError, match="steps_per_call must be an integer >= 1"):
    validate(tiny_config(steps_per_call=0))
  # num_steps = 0 blames num_steps (not warmup_steps); fields are named as in the config.
  with pytest.raises(ValueError, match="^num_steps must be an integer >= 1, got 0$"):
    validate(tiny_config(num_steps=0))
  with pytest.raises(ValueError, match=r"^learning_rate must be finite and >= 0, got -0.1$"):
    validate(tiny_config(learning_rate=-0.1))
  with pytest.raises(ValueError, match=r"^weight_decay must be finite and >= 0, got inf$"):
    validate(tiny_config(weight_decay=float("inf")))
  with pytest.raises(ValueError, match=r"^checkpoint_every must be an integer >= 1"):
    validate(tiny_config(checkpoint_every=0))
  with pytest.raises(ValueError, match=r"^batch_size must be an integer >= 1, got 0$"):
    validate(tiny_config(batch_size=0))
  with pytest.raises(ValueError, match=r"^eval.knn_k must be an integer >= 1, got 0$"):
    validate(tiny_config(**{"eval.knn_k": 0}))
  with pytest.raises(
    ValueError, match=r"eval.finetune_fractions must lie in \(0, 1\], got \[1.5\]"
  ):
    validate(tiny_config(**{"eval.finetune_fractions": (0.5, 1.5)}))
  with pytest.raises(ValueError, match=r"^augment_strength must be finite and >= 0"):
    validate(tiny_config(augment_strength=-1.0))
  validate(tiny_config(num_views=1, label_fraction=1.0, labels_in_loss=True))
  with pytest.raises(AttributeError):
    tiny_config().learning_rte = 0.1


def test_batch_indices_pure_function_of_step():
  a = [batch_indices(3, s, 50, 16) for s in range(7)]
  b = [batch_indices(3, s, 50, 16) for s in range(7)]
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  np.testing.assert_equal(len(set(np.concatenate(a[:3]))), 48)  # one epoch, no repeats
  with pytest.raises(ValueError, match="exceeds"):
    batch_indices(0, 0, 10, 16)


@pytest.mark.slow
def test_main_job_on_mock_mnist(tmp_path):
  """The real main job end to end on tfds.testing.mock_data (no download)."""
  import tensorflow_datasets as tfds
  from experiments.configs.default import get_config

  c = get_config()
  c.dataset = "mnist"
  c.backbone = "small_cnn"
  c.backbone_kwargs = {"out_features": 16}
  c.embed_dim, c.projector_hidden, c.head.num_layers = 8, (16,), 2
  c.batch_size, c.num_steps, c.warmup_steps, c.log_every = 16, 3, 1, 1
  c.num_devices = 1
  c.eval.linear_steps, c.eval.finetune_steps = 10, 10
  c.eval.finetune_fractions, c.eval.knn_k = (1.0,), 3
  c.compare, c.random_baseline, c.seeds = "transfusion,simclr", False, 1
  for run in c.runs.values():  # the recipes set their own number of steps
    run.num_steps = 3
  with tfds.testing.mock_data(num_examples=48):
    rows = main_job.run(c, str(tmp_path / "w"), progress=False)
  assert [r["method"] for r in rows] == [
    "TransFusion (JSD), class targets",
    "SimCLR (InfoNCE), self-supervised",
    "raw inputs (no training)",
  ]
  for r in rows:
    assert 0.0 <= r["knn"] <= 1.0
  table = (tmp_path / "w" / "results.md").read_text()
  assert "| TransFusion (JSD), class targets |" in table
  assert (tmp_path / "w" / "comparison.png").stat().st_size > 0
  run = tmp_path / "w" / "transfusion" / "seed0"
  metrics = [json.loads(l) for l in open(run / "metrics.jsonl")]
  assert [m["step"] for m in metrics] == [1, 2, 3]
  assert os.listdir(run / "tensorboard")  # event files


def test_cli_overrides_and_one_line_errors(tmp_path, capsys):
  """--config.FIELD=VALUE reaches the config; a misspelt field is one line, exit 2."""
  seen = {}

  def fake_run(config, workdir, *, progress):
    seen.update(config=config, workdir=workdir, progress=progress)
    return "ran"

  from experiments.common import cli

  out = cli(
    fake_run,
    "train",
    [
      "--config=experiments/configs/default.py:quick",
      "--config.runs.supcon.num_steps=7",
      "--config.warmup_steps=7",
      "--config.compare=supcon",
      f"--workdir={tmp_path}",
      "--noprogress",
    ],
    config_name="default",
  )
  assert out == "ran" and seen["config"].runs.supcon.num_steps == 7
  assert seen["config"].warmup_steps == 7
  assert seen["config"].compare == "supcon" and seen["progress"] is False
  assert seen["workdir"] == str(tmp_path)
  with pytest.raises(SystemExit) as e:
    cli(
      fake_run,
      "train",
      ["--config.learning_rte=0.1", f"--workdir={tmp_path}"],
      config_name="default",
    )
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "unknown config field 'learning_rte'" in err[0]
  assert "did you mean learning_rate?" in err[0] and "seed" not in err[0]  # no dump
  # A top-level field every compared run sets again is an error (it would
  # change nothing); one some runs set is a one-line warning.
  with pytest.raises(SystemExit):
    cli(
      fake_run,
      "train",
      [
        "--config=experiments/configs/default.py:quick",
        "--config.labels_in_loss=False",
        "--config.compare=supcon",
        f"--workdir={tmp_path}",
      ],
      config_name="default",
    )
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "--config.labels_in_loss changes no run" in err[0]
  assert "--config.runs.supcon.labels_in_loss" in err[0]
  # A recipe field a run leaves unset is not the run's: the top-level value holds.
  cli(
    fake_run,
    "train",
    [
      "--config=experiments/configs/default.py:quick",
      "--config.num_steps=7",
      "--config.compare=supcon",
      f"--workdir={tmp_path}",
    ],
    config_name="default",
  )
  assert dict(run_configs(seen["config"]))["supcon"].num_steps == 7
  with pytest.warns(
    UserWarning,
    match=r"--config.temperature is replaced by "
    r"the own temperature of runs supcon \(set "
    r"--config.runs.supcon.temperature",
  ):
    cli(
      fake_run,
      "train",
      [
        "--config=experiments/configs/default.py:quick",
        "--config.temperature=0.2",
        "--config.runs.supcon.temperature=0.3",
        "--config.compare=transfusion,supcon",
        f"--workdir={tmp_path}",
      ],
      config_name="default",
    )
  assert seen["config"].temperature == 0.2
  with pytest.raises(ValueError, match="compare names unknown runs"):
    cfg = seen["config"]
    cfg.compare = "nope"
    run_configs(cfg)


def test_semi_supervised_ids_match_positive_mask():
  import tfjax

  rng = np.random.default_rng()
  source = rng.integers(0, 6, size=8)
  groups = np.tile(source, 2).astype(np.int32)  # two views per source
  per_source = np.where(rng.random(6) < 0.5, rng.integers(0, 3, 6), -1)
  labels = per_source[groups].astype(np.int32)
  ids = np.asarray(methods.semi_supervised_ids(jnp.asarray(groups), jnp.asarray(labels)))
  same_id = (ids[:, None] == ids[None, :]) & ~np.eye(16, dtype=bool)
  np.testing.assert_array_equal(same_id, tfjax.positive_mask(groups, labels))


def test_validation_fraction_evaluates_on_held_out_training_data(tmp_path):
  config = tiny_config(validation_fraction=0.25, num_steps=2, warmup_steps=0)
  res = train.train_and_evaluate(config, str(tmp_path), data=toy_data(), progress=False)
  assert res["evaluated_on"] == "validation"
  spec = validate(config)
  tr, val = splits.open_splits(config, spec, toy_data())
  assert (len(tr), len(val)) == (36, 12)  # 25 % of 48, class-balanced
  with pytest.raises(ValueError, match="validation_fraction must be in"):
    validate(tiny_config(validation_fraction=1.0))


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="Linux memory maps")
def test_finished_runs_release_their_compiled_programs(tmp_path):
  # Each run compiles its own programs (the recipe is static); on CPU their
  # machine code takes memory mappings, of which a process may hold 65,530.
  # Kept for ever, ~35 MNIST-1D runs in one process crashed XLA (segfault).
  def maps():
    with open("/proc/self/maps") as f:
      return sum(1 for _ in f)

  counts = []
  for i in range(3):  # a different static recipe each time: new programs
    config = tiny_config(
      num_steps=2, warmup_steps=0, learning_rate=1e-3 * (i + 1), temperature=0.1 * (i + 1), seed=i
    )
    train.train_and_evaluate(config, str(tmp_path / f"r{i}"), data=toy_data(), progress=False)
    evaluation.evaluate_untrained(config, data=toy_data())
    gc.collect()
    counts.append(maps())
  # without the release each run kept ~600 mappings; allow allocator noise
  assert counts[-1] - counts[0] < 150, counts


def test_in_memory_input_trains_exactly_as_streaming(tmp_path):
  """``input.in_memory_mb``: the split read into memory gives the same run as
  the one streamed from its array_record files (same batches, same views)."""
  runs = {}
  for name, limit in (("memory", 32), ("stream", 0)):
    config = tiny_config(
      num_steps=4,
      **{
        "input.in_memory_mb": limit,
        "eval.linear_steps": 0,
        "eval.finetune_fractions": (),
        "write_plots": False,
      },
    )
    runs[name] = train.train_and_evaluate(config, str(tmp_path / name), progress=False)
  chex.assert_trees_all_equal(runs["memory"]["state"].params, runs["stream"]["state"].params)
  assert runs["memory"]["knn"] == runs["stream"]["knn"]
  # The in-memory copy is made once per source object a caller passes.
  sources = splits.open_splits(tiny_config(), get_dataset_spec("subspaces_tiny"))
  first = splits.in_memory_splits(tiny_config(), *sources)
  again = splits.in_memory_splits(tiny_config(), *sources)
  assert all(a is b for a, b in zip(first, again))
  assert splits.in_memory_splits(tiny_config(**{"input.in_memory_mb": 0}), *sources) == sources


def test_compilation_cache_holds_a_jobs_programs_and_restores_jax(tmp_path):
  """experiments.common.compilation_cache: programs compiled inside are
  written to the directory and read back by a fresh function; JAX's own
  settings come back afterwards (also when the block raises)."""
  from experiments.common import COMPILATION_CACHE, cli, compilation_cache

  before = jax.config.jax_compilation_cache_dir
  cache = tmp_path / "cache"

  def program():  # a fresh function each time: no in-memory hit
    return jax.jit(lambda x: jnp.sin(x) @ jnp.cos(x).T + 7.25)

  x = jnp.ones((8, 8))
  with compilation_cache(str(cache), min_compile_seconds=0.0):
    assert jax.config.jax_compilation_cache_dir == str(cache)
    want = program()(x)
    written = set(os.listdir(cache))
    assert written
    got = program()(x)  # the same program, read from the cache
    assert set(os.listdir(cache)) == written
  np.testing.assert_array_equal(got, want)
  assert jax.config.jax_compilation_cache_dir == before
  with pytest.raises(RuntimeError):
    with compilation_cache(str(tmp_path / "other")):
      raise RuntimeError("inside")
  assert jax.config.jax_compilation_cache_dir == before
  with compilation_cache(None):
    assert jax.config.jax_compilation_cache_dir == before

  # The command line turns it on for configs that ask (the main job does).
  seen = {}

  def fake_run(config, workdir, *, progress):
    seen["dir"] = jax.config.jax_compilation_cache_dir

  cli(
    fake_run,
    "train",
    ["--config=experiments/configs/default.py:quick", f"--workdir={tmp_path / 'job'}"],
    config_name="default",
  )
  assert seen["dir"] == os.path.abspath(tmp_path / "job" / COMPILATION_CACHE)
  cli(
    fake_run,
    "train",
    [
      "--config=experiments/configs/default.py:quick",
      "--config.compilation_cache=False",
      f"--workdir={tmp_path / 'job2'}",
    ],
    config_name="default",
  )
  assert seen["dir"] == before
  assert jax.config.jax_compilation_cache_dir == before
