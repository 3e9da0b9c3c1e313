"""tfjax.load_run: a run's network and checkpoint from its work directory;
python -m experiments.extract over it."""

import json
import os
import re
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from tests.test_train import tiny_config
from tfjax.checkpoint import Checkpointer, CheckpointWarning
from tfjax.loading import RunLoadError, load_run
from tfjax.state import create_train_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _perturbed_state(config, seed):
  """A fresh state with random parameters and BatchNorm statistics (as after
  training: statistics other than BatchNorm's initial 0 / 1)."""
  state = create_train_state(config, jax.random.key(0), (8,), 3, data_kind="vector")
  rng = np.random.default_rng(seed)
  noisy = lambda tree, low: jax.tree.map(  # noqa: E731
    lambda a: np.asarray(a) + rng.uniform(low, 1.0, np.shape(a)).astype(np.float32), tree
  )
  return state.replace(params=noisy(state.params, -1.0), batch_stats=noisy(state.batch_stats, 0.1))


def _fake_run(path, config, steps=(2,), nan_steps=()):
  """A work directory as a run leaves it: config.json and checkpoints
  (``nan_steps`` written with a NaN parameter, bypassing the Checkpointer's
  refusal, as a corrupted disk might leave them)."""
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    f.write(config.to_json(indent=2))
  states = {}
  ckpt = Checkpointer(os.path.join(path, "checkpoints"))
  for step in steps:
    states[step] = _perturbed_state(config, step).replace(step=np.int32(step))
    ckpt.save(step, states[step])
  ckpt.close()
  import orbax.checkpoint as ocp

  for step in nan_steps:
    bad = jax.device_get(_perturbed_state(config, step).replace(step=np.int32(step)))
    bad = bad.replace(params=jax.tree.map(lambda a: np.full_like(a, np.nan), bad.params))
    with ocp.StandardCheckpointer() as c:
      c.save(os.path.join(os.path.abspath(path), "checkpoints", str(step), "default"), bad)
  return states


def _mlp_reference(params, stats, x):
  """The MLP backbone in eval mode, in NumPy float64."""
  p, s = params["backbone"], stats["backbone"]
  h = x.astype(np.float64) @ np.float64(p["Dense_0"]["kernel"]) + p["Dense_0"]["bias"]
  h = (h - s["BatchNorm_0"]["mean"]) / np.sqrt(np.float64(s["BatchNorm_0"]["var"]) + 1e-5) * p[
    "BatchNorm_0"
  ]["scale"] + p["BatchNorm_0"]["bias"]
  return np.maximum(h, 0) @ np.float64(p["Dense_1"]["kernel"]) + p["Dense_1"]["bias"]


def _listing(path):
  return sorted(
    os.path.relpath(os.path.join(d, f), path)
    for d, dirs, files in os.walk(path)
    for f in files + dirs
  )


def test_newest_finite_checkpoint_features_match_a_numpy_reference(tmp_path):
  config = tiny_config()
  states = _fake_run(str(tmp_path), config, steps=(2,), nan_steps=(4,))
  before = _listing(str(tmp_path))
  with pytest.warns(CheckpointWarning, match=r"checkpoint 4 .* not finite"):
    run = load_run(str(tmp_path))
  assert run.step == 2 and run.config.loss == "jsd"
  assert run.config.backbone_kwargs.hidden == (16,)
  chex.assert_trees_all_equal(run.variables["params"], states[2].params)
  x = np.random.default_rng(1).normal(size=(37, 8)).astype(np.float32)
  want = _mlp_reference(states[2].params, states[2].batch_stats, x)
  np.testing.assert_allclose(run.features(x), want, rtol=1e-4, atol=1e-4)
  assert run.embeddings(x).shape == (37, config.embed_dim)
  a = np.asarray(run.adjacency(x[:12]))
  assert a.shape == (12, 12)
  np.testing.assert_allclose(a.sum(1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(np.diag(a), 0.0)
  # Inside a caller's jit: the same numbers.
  np.testing.assert_allclose(jax.jit(run.features)(x), run.features(x), rtol=1e-5, atol=1e-6)
  # Loading only reads: the NaN checkpoint is neither moved nor removed.
  assert _listing(str(tmp_path)) == before
  # An explicit step is that step or an error, never a fallback.
  with pytest.raises(RunLoadError, match=r"checkpoint 4 .* cannot be restored .*not finite"):
    load_run(str(tmp_path), step=4)
  with pytest.raises(RunLoadError, match=r"no checkpoint at step 3; it has steps \[2, 4\]"):
    load_run(str(tmp_path), step=3)
  with pytest.raises(
    ValueError, match=r"cannot take inputs of shape \(5, 3\) \(ScopeParamShapeError"
  ):
    run.features(np.zeros((5, 3), np.float32))


def test_adjacency_of_a_run_without_head_is_a_clear_error(tmp_path):
  _fake_run(str(tmp_path), tiny_config(loss="info_nce"))
  run = load_run(str(tmp_path))
  assert run.model.head is None
  with pytest.raises(ValueError, match="'info_nce', a method without a TransFusion head"):
    run.adjacency(np.zeros((4, 8), np.float32))


@pytest.mark.parametrize(
  "case,pattern",
  [
    ("missing", r"does not exist"),
    ("file", r"is not a directory"),
    ("empty", r"is not a run directory \(no config.json and no checkpoints/\)"),
    ("no_config", r"config.json is missing"),
    ("corrupt", r"config.json cannot be read as JSON"),
    ("list", r"config.json holds a JSON list"),
    ("bad_field", r"config.json: unknown loss 'nope'"),
    ("no_checkpoint", r"checkpoints holds no checkpoint"),
    ("other_network", r"do not match the network of config.json \(missing: params/head/fusion_2/"),
  ],
)
def test_what_is_not_a_run_is_one_line_naming_the_path(tmp_path, case, pattern):
  path = str(tmp_path / "run")
  config = tiny_config()
  if case == "file":
    open(path, "w").close()
  elif case != "missing":
    os.makedirs(path)
  if case in ("no_config", "corrupt", "list", "bad_field", "other_network"):
    _fake_run(path, config)
  if case == "no_config":
    os.remove(os.path.join(path, "config.json"))
  text = {"corrupt": '{"seed": 0, "loss": ', "list": "[1, 2]"}.get(case)
  if case == "bad_field":
    text = config.to_json().replace('"loss": "jsd"', '"loss": "nope"')
  if case == "other_network":
    text = tiny_config(**{"head.num_layers": 4}).to_json()
  if case == "no_checkpoint":
    os.makedirs(os.path.join(path, "checkpoints"))
    text = config.to_json()
  if text is not None:
    with open(os.path.join(path, "config.json"), "w") as f:
      f.write(text)
  with pytest.raises(RunLoadError, match=pattern) as info:
    load_run(path)
  message = str(info.value)
  assert "\n" not in message and path in message


def test_source_refuses_data_other_than_the_runs(tmp_path):
  from tfjax.data.registry import get_dataset_spec

  _fake_run(str(tmp_path), tiny_config())
  run = load_run(str(tmp_path))
  assert len(run.source("test")) == get_dataset_spec("subspaces_tiny").num_test
  with open(tmp_path / "run.json", "w") as f:  # as train_and_evaluate(data=...) leaves it
    json.dump({"data_fingerprint": "0" * 32}, f)
  with pytest.raises(ValueError, match="trained on other data than dataset 'subspaces_tiny'"):
    run.source("test")
  with pytest.raises(ValueError, match="unknown split 'val'"):
    run.source("val")


def test_config_keeps_a_backbones_own_fields_and_defaults_new_ones(tmp_path):
  from tfjax.loading import read_config

  saved = json.loads(tiny_config(backbone="cnn1d", loss="info_nce").to_json())
  saved["backbone_kwargs"] = {"out_features": 8}  # CNN1D takes no "hidden"
  saved["loss_options"] = {"power": 3}
  saved["runs"] = {"a": {"seed": 1}}  # an experiment's own field
  del saved["labelled_batch_size"], saved["head"]["tie_qk_init"]  # fields added since
  with open(tmp_path / "config.json", "w") as f:
    json.dump(saved, f)
  config = read_config(str(tmp_path))
  assert config.backbone_kwargs.to_dict() == {"out_features": 8}
  assert config.loss_options.to_dict() == {"power": 3}
  assert config.labelled_batch_size == 0 and config.head.tie_qk_init is False
  assert config.head.num_layers == 3 and config.runs.a.seed == 1
  assert config.eval.finetune_fractions == (0.5,) and config.projector_hidden == (16,)


def test_import_tfjax_stays_light_and_exports_load_run():
  code = (
    "import sys, tfjax; heavy = [m for m in ('orbax.checkpoint', 'optax', "
    "'tensorflow', 'tensorflow_datasets', 'tfjax.loading') if m in sys.modules]; "
    "assert not heavy, heavy; assert tfjax.load_run.__module__ == 'tfjax.loading'; "
    "assert 'tfjax.loading' in sys.modules"
  )
  subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ----------------------------------------------------------------------------
# A trained run: load_run gives the features its own evaluation used.
# ----------------------------------------------------------------------------
def _cheap_eval(config):
  config.eval.linear_steps = 0
  config.eval.finetune_fractions = ()
  config.eval.head_knn = False
  config.write_plots = False
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  from tfjax import train

  config = _cheap_eval(tiny_config(validation_fraction=0.2))
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  results = train.train_and_evaluate(config, workdir, progress=False)
  return config, workdir, results


@pytest.mark.slow
def test_load_run_features_equal_the_runs_evaluation(trained):
  from tfjax import evaluation, probes
  from tfjax.data.splits import in_memory_splits, open_splits
  from tfjax.data import pipeline
  from tfjax.data.registry import get_dataset_spec
  from tfjax.state import eval_model

  config, workdir, results = trained
  state = results["state"]
  # The extraction the run's evaluation calls, from the state it returned.
  sources = in_memory_splits(config, *open_splits(config, get_dataset_spec(config.dataset)))
  want = [
    evaluation.extract_features(
      eval_model(state), state.variables, s, batch_size=config.eval.batch_size
    )
    for s in sources
  ]
  run = load_run(workdir)
  assert run.step == config.num_steps == results["step"]
  got = [run.features(run.source(split)) for split in ("train", "validation")]
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)
  labels = [pipeline.source_labels(run.source(s)) for s in ("train", "validation")]
  knn = probes.knn_accuracy(
    got[0],
    labels[0],
    got[1],
    labels[1],
    num_classes=3,
    k=config.eval.knn_k,
    temperature=config.eval.knn_temperature,
  )
  assert results["evaluated_on"] == "validation"
  assert knn == results["knn"]
  # The test split is the registry's, not the held-out part.
  assert len(run.source("test")) == get_dataset_spec(config.dataset).num_test
  assert (
    len(run.source("train")) + len(run.source("validation"))
    == get_dataset_spec(config.dataset).num_train
  )


# ----------------------------------------------------------------------------
# python -m experiments.extract
# ----------------------------------------------------------------------------
@pytest.mark.parametrize(
  "args,pattern",
  [
    ([], r"--workdir is required"),
    (["--workdir={missing}"], r"RunLoadError: \S+/nowhere does not exist"),
    (["--workdir={run}", "--split=valid"], r"--split=valid: value should be one of"),
    (["--workdir={run}", "--out={run}/f.txt"], r"--out must name a .npz file"),
    (["--workdir={run}", "--out={missing}/f.npz"], r"directory \S+/nowhere does not exist"),
    (
      ["--workdir={run}", "--split=validation"],
      r"split 'validation' needs a run with validation_fraction",
    ),
  ],
)
def test_extract_errors_are_one_line(tmp_path, capsys, args, pattern):
  from experiments import extract

  run = str(tmp_path / "run")
  _fake_run(run, tiny_config())
  args = [a.format(run=run, missing=str(tmp_path / "nowhere")) for a in args]
  with pytest.raises(SystemExit) as info:
    extract.main(args)
  assert info.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: ")
  assert "(--debug for the traceback)" in err
  assert re.search(pattern, err), err


@pytest.mark.slow
def test_extract_writes_the_runs_features_and_labels(trained, tmp_path):
  from tfjax.data import pipeline

  config, workdir, _ = trained
  run = load_run(workdir)
  out = str(tmp_path / "val.npz")
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.extract",
      f"--workdir={workdir}",
      "--split=validation",
      f"--out={out}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=True,
  )
  n = len(run.source("validation"))
  assert proc.stdout == (
    f"wrote features [{n}, 12] and labels [{n}] of the validation split (step 6) to {out}\n"
  )
  with np.load(out) as f:
    np.testing.assert_array_equal(f["features"], run.features(run.source("validation")))
    np.testing.assert_array_equal(f["labels"], pipeline.source_labels(run.source("validation")))
    assert int(f["step"]) == run.step
  from experiments import extract

  line = extract.main([f"--workdir={workdir}", "--split=test", "--what=embeddings"])
  with np.load(os.path.join(workdir, "embeddings_test.npz")) as f:
    assert f["embeddings"].shape == (len(run.source("test")), config.embed_dim)
    np.testing.assert_allclose(f["embeddings"], run.embeddings(run.source("test")))
  assert line.endswith(os.path.join(workdir, "embeddings_test.npz"))
