"""tfjax.workdir and tfjax.workdir_access: the remembered config, the lock, clearing,
fingerprints, data checks."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.test_train import tiny_config, toy_data
from tfjax import rerun, workdir as wd, workdir_access as access
from tfjax.config import validate
from tfjax.rerun import suggest_fields
from tfjax.data import pipeline
from tfjax.data.fingerprint import data_fingerprint
from tfjax.data.registry import DatasetNotFoundError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------
# The remembered config.
def test_config_fields_are_the_training_fields_flattened():
  c = tiny_config(learning_rate=1e-3)
  with c.unlocked():
    c.runs = {"supcon": {"learning_rate": 1.0}}  # an experiment's own field
  fields = rerun.config_fields(c)
  assert fields["head.num_layers"] == 3 and fields["learning_rate"] == 1e-3
  assert fields["backbone_kwargs.hidden"] == [16]
  assert fields["eval.finetune_fractions"] == [0.5]
  assert not any(k.startswith("runs") for k in fields)
  # The same dict from the config.json a run wrote.
  assert rerun.config_fields(json.loads(c.to_json())) == fields


def test_config_diff_splits_fixed_and_free_fields():
  old = rerun.config_fields(tiny_config(learning_rate=1e-3))
  new = rerun.config_fields(
    tiny_config(
      learning_rate=0.01,
      log_every=1,
      **{"eval.knn_k": 7, "input.num_threads": 1, "backbone_kwargs.hidden": (32,)},
    )
  )
  fixed, free = rerun.config_diff(old, new)
  assert fixed == [("backbone_kwargs.hidden", [16], [32]), ("learning_rate", 0.001, 0.01)]
  assert free == [("eval.knn_k", 3, 7), ("input.num_threads", 4, 1), ("log_every", 2, 1)]
  assert rerun.config_diff(old, dict(old)) == ([], [])
  # A key only one side has (an unlocked dict's entry) differs too.
  fixed, _ = rerun.config_diff({**old, "loss_options.margin": 1.0}, old)
  assert fixed == [("loss_options.margin", 1.0, "(absent)")]
  # A training field added since the run started (absent from its
  # config.json) is unchanged at its default, changed otherwise.
  older = {k: v for k, v in old.items() if k != "labelled_batch_size"}
  assert rerun.config_diff(older, old) == ([], [])
  assert rerun.config_diff(older, {**old, "labelled_batch_size": 8})[0] == [
    ("labelled_batch_size", "(absent)", 8)
  ]


@pytest.mark.parametrize(
  "field",
  [
    "input.num_threads",
    "input.device_prefetch",
    "log_every",
    "checkpoint_every",
    "write_plots",
    "data_dir",
    "eval.knn_k",
  ],
)
def test_free_fields(field):
  assert rerun._free(field)


@pytest.mark.parametrize(
  "field",
  [
    "learning_rate",
    "num_steps",
    "seed",
    "num_devices",
    "steps_per_call",
    "evaluate",
    "head.num_layers",
    "dataset",
  ],
)
def test_fixed_fields(field):
  assert not rerun._free(field)


def test_run_directory_refuses_other_config_in_one_line(tmp_path):
  """A checkpoint makes the directory remember; before it, anything goes."""
  d = str(tmp_path)
  with wd.RunDirectory(d, tiny_config()) as run:
    run.start(*pipeline_sources())
  with wd.RunDirectory(d, tiny_config(learning_rate=5.0)) as run:  # no checkpoint yet
    run.start(*pipeline_sources())
  os.makedirs(os.path.join(d, "checkpoints", "4"))
  with pytest.raises(wd.ConfigMismatchError) as e:
    wd.RunDirectory(d, tiny_config(learning_rate=1.0, seed=3)).__enter__()
  assert str(e.value) == (
    f"work directory {d!r} holds a run (checkpoint at step 4) of another "
    "config: learning_rate 5.0 -> 1.0; seed 0 -> 3. Rerun with --overwrite "
    "(overwrite=True) to start afresh, or use another --workdir"
  )
  said = []
  with wd.RunDirectory(d, tiny_config(learning_rate=5.0, num_steps=9), say=said.append) as run:
    assert run.resumed_from == 4 and run.changes == [("num_steps", 6, 9)]
    run.start(*pipeline_sources())
  assert "num_steps raised from 6 to 9" in said[0] and "warmup_cosine" in said[0]
  with open(os.path.join(d, "run.json")) as f:
    record = json.load(f)
  # A start without a checkpoint began a new run: the history restarted then.
  assert [s["resumed_from"] for s in record["starts"]] == [None, 4]
  assert record["starts"][-1]["changed"] == {"num_steps": [6, 9]}
  with open(os.path.join(d, "config.json")) as f:
    assert json.load(f)["num_steps"] == 9
  # Lowering num_steps is refused; the lock is free again after a refusal.
  with pytest.raises(wd.ConfigMismatchError, match="num_steps 9 -> 7"):
    wd.RunDirectory(d, tiny_config(learning_rate=5.0, num_steps=7)).__enter__()
  assert not access._HELD


def test_raising_num_steps_of_a_constant_schedule_says_nothing(tmp_path):
  d = str(tmp_path)
  with wd.RunDirectory(d, tiny_config(schedule="constant")) as run:
    run.start(*pipeline_sources())
  os.makedirs(os.path.join(d, "checkpoints", "6"))
  said = []
  with wd.RunDirectory(d, tiny_config(schedule="constant", num_steps=20), say=said.append) as run:
    assert run.changes == [("num_steps", 6, 20)]
  assert said == []


def pipeline_sources(seed=0):
  x, y, xt, yt = toy_data(seed=seed)
  return pipeline.ArraySource(x, y), pipeline.ArraySource(xt, yt)


def test_overwrite_clears_and_data_fingerprint_guards(tmp_path):
  d = str(tmp_path)
  with wd.RunDirectory(d, tiny_config()) as run:
    run.start(*pipeline_sources())
  os.makedirs(os.path.join(d, "checkpoints", "2"))
  with pytest.raises(wd.ConfigMismatchError, match="trained on other data"):
    with wd.RunDirectory(d, tiny_config()) as run:
      run.start(*pipeline_sources(seed=1))
  with wd.RunDirectory(d, tiny_config(seed=5), overwrite=True) as run:
    assert run.resumed_from is None
    assert not os.path.exists(os.path.join(d, "checkpoints"))
    run.start(*pipeline_sources(seed=1))
  with open(os.path.join(d, "config.json")) as f:
    assert json.load(f)["seed"] == 5


# ----------------------------------------------------------------------------
# The lock.
_TRY = (
  "import fcntl, sys; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)"
)


def _free_elsewhere(d):
  return (
    subprocess.run([sys.executable, "-c", _TRY, os.path.join(d, access.LOCK_FILE)]).returncode == 0
  )


def test_lock_is_exclusive_reentrant_and_released_on_error(tmp_path):
  d = str(tmp_path)
  with pytest.raises(ZeroDivisionError):
    with access.lock(d):
      with access.lock(d):  # re-entrant in this process
        assert not _free_elsewhere(d)  # ...exclusive across processes
      assert not _free_elsewhere(d)  # the outer hold remains
      1 / 0
  assert _free_elsewhere(d) and not access._HELD


def test_second_process_is_refused_at_once(tmp_path):
  d = str(tmp_path)
  holder = subprocess.Popen(
    [
      sys.executable,
      "-c",
      _TRY + "; f.write('pid 1 since now'); f.flush(); "
      "print('locked', flush=True); import time; time.sleep(600)",
      os.path.join(d, access.LOCK_FILE),
    ],
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert holder.stdout.readline().strip() == "locked"
    t0 = time.time()
    with pytest.raises(
      access.WorkdirBusyError,
      match=r"is in use by another run "
      r"\(pid 1 since now\); wait for it",
    ):
      with access.lock(d):
        pass
    assert time.time() - t0 < 1.0
  finally:
    holder.kill()
    holder.wait()
  with access.lock(d):  # the killed holder left no lock
    with open(os.path.join(d, access.LOCK_FILE)) as f:
      assert f.read().startswith(f"pid {os.getpid()} since ")


def test_file_system_without_locks_warns_and_goes_on(tmp_path, monkeypatch):
  import errno
  import fcntl

  def no_locks(*args):
    raise OSError(errno.ENOLCK, "No locks available")

  monkeypatch.setattr(fcntl, "flock", no_locks)
  with pytest.warns(
    UserWarning,
    match=r"cannot lock .*\.lock \(No locks "
    r"available\): a second run in this work directory would "
    r"not be detected",
  ):
    with access.lock(str(tmp_path)):
      pass
  assert not access._HELD


def test_check_writable(tmp_path):
  access.check_writable(str(tmp_path / "new" / "dir"))
  assert os.listdir(tmp_path / "new" / "dir") == []  # the probe file is gone
  (tmp_path / "file").write_text("x")
  with pytest.raises(
    access.WorkdirError,
    match=r"work directory .* is not "
    r"writable: .* choose another --workdir",
  ):
    access.check_writable(str(tmp_path / "file" / "dir"))


# ----------------------------------------------------------------------------
# Clearing.
def test_clear_tree_removes_run_files_only(tmp_path):
  run = tmp_path / "a" / "seed0"
  (run / "checkpoints" / "4").mkdir(parents=True)
  (run / "tensorboard").mkdir()
  for name in (
    "config.json",
    "metrics.jsonl",
    "results.json",
    "run.json",
    "loss.png",
    "mine.txt",
    ".lock",
  ):
    (run / name).write_text("{}")
  lone = tmp_path / "b"  # config.json alone: not a run directory
  lone.mkdir()
  (lone / "config.json").write_text("{}")
  (tmp_path / "results.md").write_text("table")
  (tmp_path / "figure.png").write_text("png")
  removed = wd.clear_tree(str(tmp_path))
  assert sorted(os.listdir(run)) == [".lock", "mine.txt"]
  assert os.listdir(lone) == ["config.json"]
  assert sorted(os.listdir(tmp_path)) == ["a", "b", "figure.png"]
  assert len(removed) == 8


# ----------------------------------------------------------------------------
# Fingerprints.
def test_data_fingerprint():
  a = pipeline_sources()
  same = data_fingerprint(*a)
  assert len(same) == 32 and same == data_fingerprint(*pipeline_sources())
  x, y, xt, yt = toy_data()
  x2 = x.copy()
  x2[17, 3] += 1e-6  # one entry of in-memory data
  y2 = y.copy()
  y2[5] = (y2[5] + 1) % 3  # one label
  for changed in [
    (pipeline.ArraySource(x2, y), a[1]),
    (pipeline.ArraySource(x, y2), a[1]),
    (a[1], a[0]),  # the order of the sources
    pipeline.split_source(a[0], 0.25),
  ]:
    assert data_fingerprint(*changed) != same
  # A subset is its parent plus its indices.
  tr, val = pipeline.split_source(a[0], 0.25)
  assert data_fingerprint(tr, val) == data_fingerprint(
    *pipeline.split_source(pipeline_sources()[0], 0.25)
  )


class _Records:
  """A source without arrays: the fingerprint samples 16 records."""

  def __init__(self, x, y):
    self.x_, self.y_, self.reads = x, y, []

  def __len__(self):
    return len(self.x_)

  def __getitem__(self, i):
    self.reads.append(i)
    return {"x": self.x_[i], "label": self.y_[i]}

  @property
  def x_shape(self):
    return self.x_.shape[1:]


def test_fingerprint_of_a_record_source_reads_16_records():
  x = np.arange(400, dtype=np.float32).reshape(100, 4)
  y = np.arange(100) % 3
  src = _Records(x, y)
  first = data_fingerprint(src)
  assert sorted(set(src.reads)) == sorted(set(np.linspace(0, 99, 16).astype(int)))
  x2 = x.copy()
  x2[99] += 1  # the last record is sampled
  assert data_fingerprint(_Records(x2, y)) != first
  assert data_fingerprint(_Records(x[:99], y[:99])) != first  # the size


# ----------------------------------------------------------------------------
# The data, before any compute.
def test_validate_checks_the_dataset_before_reading_it(tmp_path, monkeypatch):
  validate(tiny_config())  # offline: generated
  with pytest.raises(
    ValueError, match="batch_size 61 exceeds the 60 training examples of 'subspaces_tiny'$"
  ):
    validate(tiny_config(batch_size=61))
  with pytest.raises(ValueError, match="unknown dataset 'cifar11'"):
    validate(tiny_config(dataset="cifar11"))
  c = tiny_config(dataset="mnist", data_dir=str(tmp_path))
  with pytest.raises(
    DatasetNotFoundError,
    match=(
      f"dataset 'mnist' is not prepared under data_dir '{tmp_path}' \\(no "
      "array_record files of its train/test split in .*tfds build mnist"
    ),
  ):
    validate(c)
  # Prepared (file names as TFDS writes them): passes; one split missing: named.
  version = tmp_path / "mnist" / "3.0.1"
  version.mkdir(parents=True)
  (version / "mnist-train.array_record-00000-of-00001").write_text("")
  with pytest.raises(DatasetNotFoundError, match="of its test split"):
    validate(c)
  (version / "mnist-test.array_record-00000-of-00001").write_text("")
  validate(c)
  # $TFDS_DATA_DIR when data_dir is unset; remote directories are not checked.
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "elsewhere"))
  with pytest.raises(DatasetNotFoundError, match="elsewhere"):
    validate(tiny_config(dataset="mnist"))
  validate(tiny_config(dataset="mnist", data_dir="gs://bucket/tfds"))


def test_validate_skips_the_disk_check_under_tfds_mock_data():
  import tensorflow_datasets as tfds

  c = tiny_config(dataset="cifar10", data_dir="/nonexistent", batch_size=16)
  with pytest.raises(DatasetNotFoundError):
    validate(c)
  with tfds.testing.mock_data(num_examples=8):
    validate(c)  # no files on disk; the registry's sizes do not hold


def test_suggest_fields():
  assert suggest_fields("learning_rte") == ["learning_rate"]
  assert suggest_fields("head.num_layrs") == ["head.num_layers"]
  assert suggest_fields("zzzz") == []


# ----------------------------------------------------------------------------
# Several processes: process 0 decides, nobody waits forever.
_WORKER = r"""
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
sys.path.insert(0, sys.argv[4])
from tfjax import distributed
distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
from tests.test_train import tiny_config, toy_data
from tfjax import train
try:
  train.train_and_evaluate(tiny_config(num_devices=0), sys.argv[3],
                           data=toy_data(), progress=False, stop_after=1)
except Exception as e:
  print(f"{type(e).__name__}: {e}", flush=True)
  sys.exit(3)
"""


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_stop_together_on_a_busy_workdir(tmp_path):
  """Process 0 cannot lock the work directory (a third process holds it):
  both processes stop with an error instead of waiting on a collective."""
  d = str(tmp_path / "run")
  os.makedirs(d)
  holder = subprocess.Popen(
    [
      sys.executable,
      "-c",
      _TRY + "; print('locked', flush=True); import time; time.sleep(600)",
      os.path.join(d, access.LOCK_FILE),
    ],
    stdout=subprocess.PIPE,
    text=True,
  )
  assert holder.stdout.readline().strip() == "locked"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  address = f"127.0.0.1:{_free_port()}"
  try:
    procs = [
      subprocess.Popen(
        [sys.executable, "-c", _WORKER, address, str(i), d, ROOT],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
      )
      for i in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
  finally:
    holder.kill()
    holder.wait()
  assert [p.returncode for p in procs] == [3, 3], outs
  assert "WorkdirBusyError: work directory" in outs[0], outs[0][-2000:]
  assert "WorkdirError: process 0 failed while preparing the work directory" in outs[1], outs[1][
    -2000:
  ]
