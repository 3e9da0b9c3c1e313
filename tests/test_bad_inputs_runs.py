"""No silent wrong results, runs and command lines: one table row per probe.

Each row of ``CASES`` is ``(name, fn, expect)``.  ``fn(ctx)`` runs the
training loop, the work directory, the checkpoints or the command line on a
bad input (a diverging learning rate, a rerun with another config, a busy or
unwritable work directory, a corrupt checkpoint, a bad config field) and
``expect`` says what must come out:

* ``Raises(type, substring, after)`` — the call raises that exception with
  that substring in its message (one line), then ``after(ctx)`` checks what
  is left on disk;
* ``Cli(substring)`` — the command line exits with status 2 and prints
  exactly one line, holding the substring; no data was read (the loaders
  are patched to fail) and the time is printed;
* ``Check(predicate, what)`` — anything else (the run resumed correctly,
  the lock is free, ...).

Data loading is patched to fail in every "before any compute" row: those
errors must come from the config, the work directory and the registry
alone.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from typing import Any, Callable, Optional

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.test_train import tiny_config, toy_data
from tfjax import train, workdir as workdirs
from tfjax.checkpoint import Checkpointer, CheckpointError, CheckpointWarning
from tfjax.data.registry import DatasetNotFoundError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fast(**overrides):
  """The tiny config without the slow evaluations and plots."""
  return tiny_config(**{"eval.linear_steps": 0, "eval.finetune_fractions": (),
                        "eval.head_knn": False, "write_plots": False,
                        "num_steps": 4, "checkpoint_every": 2, **overrides})


# ----------------------------------------------------------------------------
# Expectations.


@dataclasses.dataclass
class Raises:
  error: type
  match: str
  after: Optional[Callable[[Any], None]] = None


@dataclasses.dataclass
class Cli:
  match: str


@dataclasses.dataclass
class Check:
  predicate: Callable[[Any, Any], bool]
  what: str


class Ctx:
  """What a probe gets: a fresh directory, monkeypatch, and a finished run."""

  def __init__(self, tmp_path, monkeypatch, request):
    self.tmp, self.monkeypatch, self._request = tmp_path, monkeypatch, request
    self.dir = str(tmp_path / "run")

  @property
  def _finished(self):
    return self._request.getfixturevalue("finished")   # trained once, on demand

  def copy_finished(self) -> str:
    """A copy of the finished 4-step run (checkpoints 2 and 4) in ``self.dir``."""
    shutil.copytree(self._finished["dir"], self.dir)
    os.remove(os.path.join(self.dir, workdirs.LOCK_FILE))
    return self.dir

  @property
  def finished_state(self):
    return self._finished["state"]

  def no_data(self):
    """Every data loader fails: what follows must not read data."""
    def fail(*args, **kwargs):
      raise AssertionError("data was loaded")
    from tfjax.data import pipeline, sources
    for module, name in ((train, "open_splits"), (sources, "open_source"),
                         (pipeline, "open_source"), (sources, "prepare_dataset")):
      self.monkeypatch.setattr(module, name, fail)

  def no_compute(self):
    """Building the state fails: what follows must stop before compute."""
    def fail(*args, **kwargs):
      raise AssertionError("the state was built")
    self.monkeypatch.setattr(train, "create_train_state", fail)


def run(ctx, config, **kwargs):
  return train.train_and_evaluate(config, ctx.dir, data=kwargs.pop("data", toy_data()),
                                  progress=False, **kwargs)


# ----------------------------------------------------------------------------
# Helpers that look at the disk.


def checkpoint_steps(workdir):
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def checkpoints_finite(workdir) -> bool:
  """Every checkpoint on disk, read raw by orbax, holds finite floats only."""
  for step in checkpoint_steps(workdir):
    tree = ocp.StandardCheckpointer().restore(
        os.path.join(workdir, "checkpoints", str(step), "default"))
    for leaf in jax.tree.leaves(tree):
      leaf = np.asarray(leaf)
      if np.issubdtype(leaf.dtype, np.inexact) and not np.isfinite(leaf).all():
        return False
  return True


def corrupt(workdir, step):
  """Truncates the largest file of checkpoint ``step`` (a killed copy)."""
  files = [p for p in glob.glob(os.path.join(workdir, "checkpoints", str(step), "**"),
                                recursive=True) if os.path.isfile(p)]
  with open(max(files, key=os.path.getsize), "r+b") as f:
    f.truncate(10)


_HOLD = """
import fcntl, sys, time
f = open(sys.argv[1], "a+")
fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
f.seek(0); f.truncate(); f.write("pid held by the test"); f.flush()
print("locked", flush=True)
time.sleep(600)
"""


def hold_lock(workdir):
  """A process holding ``workdir``'s lock (kill it when done)."""
  os.makedirs(workdir, exist_ok=True)
  proc = subprocess.Popen([sys.executable, "-c", _HOLD,
                           os.path.join(workdir, workdirs.LOCK_FILE)],
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "locked"
  return proc


def lock_is_free(workdir) -> bool:
  """Another process can take ``workdir``'s lock now."""
  code = ("import fcntl, sys; f = open(sys.argv[1], 'a+'); "
          "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)")
  return subprocess.run([sys.executable, "-c", code,
                         os.path.join(workdir, workdirs.LOCK_FILE)]).returncode == 0


def config_json(workdir):
  with open(os.path.join(workdir, "config.json")) as f:
    return json.load(f)


# ----------------------------------------------------------------------------
# 1. The loop stops at the first non-finite value; never a NaN checkpoint.


def _diverge(optimizer):
  def fn(ctx):
    # Logged every 5 steps, checkpoints every 3: with AdamW the state is
    # already non-finite at the (unlogged) checkpoint step 3.
    run(ctx, fast(learning_rate=1e8, optimizer=optimizer, num_steps=20,
                  log_every=5, checkpoint_every=3))
  return fn


def _after_adamw(ctx):
  assert checkpoint_steps(ctx.dir) == []
  assert lock_is_free(ctx.dir)


def _after_sgd(ctx):
  assert checkpoint_steps(ctx.dir) == [3] and checkpoints_finite(ctx.dir)
  records = train.read_metrics(os.path.join(ctx.dir, "metrics.jsonl"))
  assert records[-1]["step"] == 5 and "loss" in records[-1]["nonfinite"]


# ----------------------------------------------------------------------------
# 2. Work directories: the config is remembered, one writer at a time.


def _rerun(ctx, **overrides):
  ctx.copy_finished()
  return run(ctx, fast(**overrides))


def _after_mismatch(ctx):
  assert config_json(ctx.dir)["learning_rate"] == 1e-3      # not overwritten
  assert checkpoint_steps(ctx.dir) == [2, 4]
  assert lock_is_free(ctx.dir)


def _raised_num_steps(ctx):
  res = _rerun(ctx, num_steps=6)
  with open(os.path.join(ctx.dir, "run.json")) as f:
    starts = json.load(f)["starts"]
  steps = [r["step"] for r in train.read_metrics(os.path.join(ctx.dir, "metrics.jsonl"))]
  return (res["step"] == 6 and steps == [2, 4, 6]
          and starts[-1]["changed"] == {"num_steps": [4, 6]}
          and starts[-1]["resumed_from"] == 4
          and config_json(ctx.dir)["num_steps"] == 6)


def _free_fields(ctx):
  before = open(os.path.join(ctx.copy_finished(), "metrics.jsonl")).read()
  res = run(ctx, fast(log_every=1, **{"eval.knn_k": 5, "input.num_threads": 0}))
  after = open(os.path.join(ctx.dir, "metrics.jsonl")).read()
  # Nothing trained again; the evaluation ran with the new k.
  chex.assert_trees_all_equal(res["state"].params, ctx.finished_state.params)
  # The finished run's logged loss, not None (nothing trained in this call).
  assert res["final_loss"] == ctx._finished["final_loss"]
  return (before == after and config_json(ctx.dir)["eval"]["knn_k"] == 5
          and res["step"] == 4)


def _other_data(ctx):
  ctx.copy_finished()
  return run(ctx, fast(), data=toy_data(seed=1))


def _overwrite(ctx):
  ctx.copy_finished()
  res = run(ctx, fast(learning_rate=1e-2), overwrite=True)
  with open(os.path.join(ctx.dir, "run.json")) as f:
    starts = json.load(f)["starts"]
  return (res["step"] == 4 and config_json(ctx.dir)["learning_rate"] == 1e-2
          and len(starts) == 1 and starts[0]["resumed_from"] is None)


def _busy(ctx):
  ctx.no_data()
  proc = hold_lock(ctx.dir)
  try:
    t0 = time.time()
    try:
      run(ctx, fast())
    finally:
      print(f"busy work directory refused after {time.time() - t0:.2f} s")
  finally:
    proc.kill()
    proc.wait()


def _killed_holder(ctx):
  proc = hold_lock(ctx.dir)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  res = run(ctx, fast(), stop_after=2)
  return res["step"] == 2 and lock_is_free(ctx.dir)


# ----------------------------------------------------------------------------
# 3. Checkpoints: fall back past a corrupt one, clean up killed writes.


def _corrupt_latest(ctx):
  ctx.copy_finished()
  corrupt(ctx.dir, 4)
  with pytest.warns(CheckpointWarning, match="checkpoint 4 .* cannot be restored .*"
                    "falling back to checkpoint 2"):
    res = run(ctx, fast())
  # Resumed from step 2: bit-identical to the uninterrupted run.
  chex.assert_trees_all_equal(res["state"].params, ctx.finished_state.params)
  return (os.path.isdir(os.path.join(ctx.dir, "checkpoints", "4.unreadable"))
          and checkpoint_steps(ctx.dir) == [2, 4] and checkpoints_finite(ctx.dir))


def _corrupt_all(ctx):
  ctx.copy_finished()
  corrupt(ctx.dir, 2)
  corrupt(ctx.dir, 4)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", CheckpointWarning)
    run(ctx, fast())


def _stale_tmp(ctx):
  directory = os.path.join(ctx.dir, "checkpoints")
  stale = [os.path.join(directory, "6.orbax-checkpoint-tmp-1795000000"),
           os.path.join(directory, "2", "default.orbax-checkpoint-tmp-1795000001")]
  for path in stale:
    os.makedirs(os.path.join(path, "d"))
  Checkpointer(directory).close()
  return not any(os.path.exists(p) for p in stale) and os.path.isdir(
      os.path.join(directory, "2"))


def _save_nan(ctx):
  Checkpointer(ctx.dir).save(1, {"w": np.array([1.0, np.nan], np.float32)})


def _restore_nan(ctx):
  """A non-finite checkpoint (written by hand, as an older version could)
  is skipped like an unreadable one."""
  manager = ocp.CheckpointManager(ctx.dir, options=ocp.CheckpointManagerOptions(
      create=True, enable_async_checkpointing=False))
  good = {"w": np.array([1.0, 2.0], np.float32)}
  manager.save(2, args=ocp.args.StandardSave(good))
  manager.save(4, args=ocp.args.StandardSave({"w": np.array([1.0, np.inf], np.float32)}))
  manager.wait_until_finished()
  manager.close()
  with pytest.warns(CheckpointWarning, match=r"checkpoint 4 .*\['w'\] not finite"):
    out = Checkpointer(ctx.dir).restore_latest(good)
  return np.array_equal(np.asarray(out["w"]), good["w"])


# ----------------------------------------------------------------------------
# 4. Errors before any compute (no data read, no state built).


def _before_compute(config=None, data="arrays", **kwargs):
  def fn(ctx):
    ctx.no_compute()
    if data is None:
      ctx.no_data()
    workdir = kwargs.get("workdir", ctx.dir)
    if callable(workdir):
      workdir = workdir(ctx)
    t0 = time.time()
    try:
      train.train_and_evaluate(config, workdir, progress=False,
                               data=None if data is None else toy_data())
    finally:
      print(f"refused after {time.time() - t0:.2f} s")
  return fn


def _file_parent(ctx):
  (ctx.tmp / "a_file").write_text("not a directory")
  return str(ctx.tmp / "a_file" / "run")


def _missing_download(ctx):
  empty = ctx.tmp / "tfds"
  empty.mkdir()
  ctx.no_data()
  train.train_and_evaluate(tiny_config(dataset="cifar10", data_dir=str(empty),
                                       backbone="small_cnn",
                                       backbone_kwargs={"out_features": 8}),
                           ctx.dir, progress=False)


# ----------------------------------------------------------------------------
# 5. Command lines: one line, before any data.


def _cli(*args, experiment="train", workdir=None):
  def fn(ctx):
    import importlib
    ctx.no_data()
    ctx.no_compute()
    module = importlib.import_module(f"experiments.{experiment}")
    where = workdir(ctx) if callable(workdir) else ctx.dir
    t0 = time.time()
    try:
      module.main([f"--workdir={where}", "--noprogress", *args])
    finally:
      print(f"{experiment} {' '.join(args)}: exit after {time.time() - t0:.2f} s")
  return fn


def _cli_busy(ctx):
  proc = hold_lock(ctx.dir)
  try:
    _cli("--config=experiments/configs/default.py:quick")(ctx)
  finally:
    proc.kill()
    proc.wait()


def _cli_overwrite(ctx):
  """--overwrite removes what runs wrote (every run directory below the
  work directory, the tables), keeps other files, then runs."""
  from experiments.common import cli
  run_dir = os.path.join(ctx.dir, "supcon", "seed0")
  os.makedirs(os.path.join(run_dir, "checkpoints", "4"))
  for name in ("config.json", "metrics.jsonl", "results.json", "run.json"):
    open(os.path.join(run_dir, name), "w").write("{}")
  open(os.path.join(ctx.dir, "results.md"), "w").write("old")
  open(os.path.join(ctx.dir, "notes.txt"), "w").write("mine")
  seen = {}

  def fake_run(config, workdir, *, progress):
    seen["left"] = sorted(os.listdir(run_dir))
    seen["lock_free"] = lock_is_free(workdir)
    return "ran"

  out = cli(fake_run, "train", ["--config=experiments/configs/default.py:quick",
                                f"--workdir={ctx.dir}", "--overwrite"],
            config_name="default")
  return (out == "ran" and seen["left"] == [] and not seen["lock_free"]
          and sorted(os.listdir(ctx.dir)) == [".lock", "notes.txt", "supcon"]
          and lock_is_free(ctx.dir))


def _main_job_table(ctx):
  """The main job's table with training faked: each run's row carries its own
  steps (800 supervised, 1600 self-supervised) and the minutes its seeds'
  runs report (train_seconds), and the header claims no one number of steps."""
  from experiments import train as main_job
  from experiments.configs.default import get_config
  seconds = {800: 30.0, 1600: 90.0}   # per seed, as a resumed run reports it

  def fake_train(config, workdir, **kwargs):
    os.makedirs(workdir, exist_ok=True)
    return {"knn": 0.5, "final_loss": 1.0, "train_seconds": seconds[config.num_steps],
            "step": config.num_steps, "state": None}

  ctx.monkeypatch.setattr(train, "train_and_evaluate", fake_train)
  ctx.monkeypatch.setattr(train, "evaluate_untrained", lambda c, data=None: {"knn": 0.25})
  config = get_config("quick")
  config.seeds, config.raw_baseline = 2, False
  rows = main_job.run(config, ctx.dir, progress=False, data=toy_data())
  cells = {r["method"]: (r.get("steps"), r.get("minutes")) for r in rows}
  with open(os.path.join(ctx.dir, "results.md")) as f:
    title, table = f.readline(), f.read()
  header = [line for line in table.splitlines() if line.startswith("|")][0]
  want = _display_steps(config)       # {method: its own num_steps}
  return (set(want.values()) == {800, 1600} and "steps" not in title
          and all(cells[m] == (n, round(2 * seconds[n] / 60, 2)) for m, n in want.items())
          and "| steps |" in header and "train_seconds" in table)


def _display_steps(config):
  from experiments.runs import run_configs
  from tfjax import methods
  return {methods.display_name(c): c.num_steps for _, c in run_configs(config)}


CASES = [
    # 1. Divergence.
    ("learning_rate=1e8 (AdamW): state non-finite at an unlogged checkpoint step",
     _diverge("adamw"),
     Raises(FloatingPointError, "not finite at step 3 (learning_rate=1e+08); "
            "no checkpoint was written", _after_adamw)),
    ("learning_rate=1e8 (SGD): loss non-finite at logged step 5",
     _diverge("sgd"),
     Raises(FloatingPointError, "training diverged: loss, grad_norm, param_norm",
            _after_sgd)),
    ("learning_rate=1e8 (SGD): message names the last finite checkpoint",
     _diverge("sgd"),
     Raises(FloatingPointError, "at step 5 (learning_rate=1e+08); the last "
            "checkpoint (step 3) is finite")),
    # 2. Work directories.
    ("rerun with another learning_rate",
     lambda ctx: _rerun(ctx, learning_rate=1e-2),
     Raises(workdirs.ConfigMismatchError, "of another config: learning_rate "
            "0.001 -> 0.01. Rerun with --overwrite", _after_mismatch)),
    ("rerun with fewer num_steps",
     lambda ctx: _rerun(ctx, num_steps=2, warmup_steps=1),
     Raises(workdirs.ConfigMismatchError, "num_steps 4 -> 2; warmup_steps 2 -> 1")),
    ("rerun with another seed and head depth",
     lambda ctx: _rerun(ctx, seed=1, **{"head.num_layers": 2}),
     Raises(workdirs.ConfigMismatchError, "head.num_layers 3 -> 2; seed 0 -> 1")),
    ("rerun raising num_steps continues training",
     _raised_num_steps, Check(lambda out, ctx: out, "continued to step 6, recorded")),
    ("rerun of a finished run keeps its final_loss",
     lambda ctx: _rerun(ctx)["final_loss"] == ctx._finished["final_loss"],
     Check(lambda out, ctx: out, "final_loss read back from metrics.jsonl")),
    ("rerun changing free fields re-evaluates only",
     _free_fields, Check(lambda out, ctx: out, "no training, new eval, config.json updated")),
    ("rerun on other data",
     _other_data, Raises(workdirs.ConfigMismatchError, "trained on other data")),
    ("overwrite=True starts afresh",
     _overwrite, Check(lambda out, ctx: out, "a fresh run with the new config")),
    ("second run while another holds the work directory",
     _busy, Raises(workdirs.WorkdirBusyError, "is in use by another run (pid held by the test)")),
    ("lock of a killed run does not block",
     _killed_holder, Check(lambda out, ctx: out, "trained, lock released")),
    # 3. Checkpoints.
    ("truncated latest checkpoint: falls back, resumes bit-exactly",
     _corrupt_latest, Check(lambda out, ctx: out, "fell back to step 2")),
    ("every checkpoint unreadable",
     _corrupt_all, Raises(CheckpointError, "no checkpoint in")),
    ("stale orbax temporary directories",
     _stale_tmp, Check(lambda out, ctx: out, "removed, step directory kept")),
    ("saving a non-finite tree",
     _save_nan, Raises(FloatingPointError, "not writing checkpoint 1: ['w'] not finite")),
    ("restoring a non-finite checkpoint",
     _restore_nan, Check(lambda out, ctx: out, "fell back to the finite one")),
    # 4. Before any compute.
    ("num_steps=0", _before_compute(fast(num_steps=0)),
     Raises(ValueError, "num_steps must be an integer >= 1, got 0")),
    ("head.num_layers=0", _before_compute(fast(**{"head.num_layers": 0})),
     Raises(ValueError, "head.num_layers must be >= 1, got 0")),
    ("learning_rate=-1", _before_compute(fast(learning_rate=-1.0)),
     Raises(ValueError, "learning_rate must be finite and >= 0, got -1.0")),
    ("learning_rate=nan", _before_compute(fast(learning_rate=float("nan"))),
     Raises(ValueError, "learning_rate must be finite and >= 0, got nan")),
    ("momentum=1.5", _before_compute(fast(momentum=1.5)),
     Raises(ValueError, "momentum must be finite and in [0, 1), got 1.5")),
    ("log_every=0", _before_compute(fast(log_every=0)),
     Raises(ValueError, "log_every must be an integer >= 1, got 0")),
    ("input.in_memory_mb=-1", _before_compute(fast(**{"input.in_memory_mb": -1})),
     Raises(ValueError, "input.in_memory_mb must be an integer >= 0, got -1")),
    ("unknown schedule", _before_compute(fast(schedule="cosine")),
     Raises(ValueError, "unknown schedule 'cosine'")),
    ("batch larger than the registry split (no data read)",
     _before_compute(fast(batch_size=64), data=None),
     Raises(ValueError, "batch_size 64 exceeds the 60 training examples of "
            "'subspaces_tiny'")),
    ("batch larger than the validation-reduced registry split",
     _before_compute(fast(batch_size=48, validation_fraction=0.5), data=None),
     Raises(ValueError, "batch_size 48 exceeds the 30 training examples of "
            "'subspaces_tiny' after holding out validation_fraction=0.5")),
    ("batch larger than the arrays given (no state built)",
     _before_compute(fast(batch_size=64)),
     Raises(ValueError, "batch_size 64 exceeds the 48 training examples")),
    ("unwritable work directory (no data read)",
     _before_compute(fast(), data=None, workdir=_file_parent),
     Raises(workdirs.WorkdirError, "is not writable: Not a directory")),
    ("real dataset not downloaded (no data read)",
     _missing_download,
     Raises(DatasetNotFoundError, "dataset 'cifar10' is not prepared under data_dir")),
    # 5. Command lines.
    ("cli: misspelt field", _cli("--config.learning_rte=0.1"),
     Cli("unknown config field 'learning_rte'; did you mean learning_rate?")),
    ("cli: misspelt nested field", _cli("--config.head.num_layrs=2"),
     Cli("unknown config field 'head.num_layrs'; did you mean head.num_layers?")),
    ("cli: misspelt experiment field", _cli("--config.clusters.sigm=2",
                                            experiment="fusion"),
     Cli("unknown config field 'clusters.sigm'; did you mean clusters.sigma?")),
    ("cli: unknown config argument", _cli("--config=experiments/configs/default.py:quik"),
     Cli("ValueError: unknown config argument 'quik'")),
    ("cli: override every run replaces", _cli("--config.num_steps=7"),
     Cli("--config.num_steps changes no run: every run sets its own num_steps")),
    ("cli: num_steps=0 of a run", _cli("--config.compare=supcon",
                                       "--config.runs.supcon.num_steps=0"),
     Cli("num_steps must be an integer >= 1, got 0")),
    ("cli: head.num_layers=0", _cli("--config.compare=supcon",
                                    "--config.head.num_layers=0"),
     Cli("head.num_layers must be >= 1, got 0")),
    ("cli: negative learning rate of a run",
     _cli("--config.compare=supcon", "--config.runs.supcon.learning_rate=-1"),
     Cli("learning_rate must be finite and >= 0, got -1.0")),
    ("cli: unwritable work directory", _cli(workdir=_file_parent),
     Cli("is not writable: Not a directory")),
    ("cli: second command in a busy work directory", _cli_busy,
     Cli("is in use by another run (pid held by the test)")),
    ("cli: a stray positional argument", _cli("--config=experiments/configs/default.py:quick",
                                              "overwrite"),
     Cli("unexpected argument 'overwrite' (flags start with --); did you mean --overwrite?")),
    ("cli: a run named twice in compare",
     _cli("--config=experiments/configs/default.py:quick",
          "--config.compare=transfusion,transfusion"),
     Cli("compare names run 'transfusion' twice")),
    ("cli: seeds=0", _cli("--config=experiments/configs/default.py:quick", "--config.seeds=0"),
     Cli("seeds must be an integer >= 1 (how many seeds), got 0")),
    ("cli: seeds=-1", _cli("--config=experiments/configs/default.py:quick", "--config.seeds=-1"),
     Cli("seeds must be an integer >= 1 (how many seeds), got -1")),
    ("main job's table: each run's own steps, minutes from its train_seconds",
     _main_job_table, Check(lambda out, ctx: out, "steps and minutes per row, no one "
                            "number of steps in the header")),
    ("cli: --overwrite clears earlier runs, keeps other files",
     _cli_overwrite, Check(lambda out, ctx: out, "run files gone, lock held")),
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """One finished 4-step run (checkpoints at 2 and 4), copied by the rows."""
  path = str(tmp_path_factory.mktemp("finished") / "run")
  res = train.train_and_evaluate(fast(), path, data=toy_data(), progress=False)
  assert res["final_loss"] is not None
  return {"dir": path, "state": res["state"], "final_loss": res["final_loss"]}


@pytest.mark.parametrize("name, fn, expect", CASES, ids=[c[0] for c in CASES])
def test_bad_run_input(name, fn, expect, tmp_path, monkeypatch, capsys, request):
  del name
  ctx = Ctx(tmp_path, monkeypatch, request)
  if isinstance(expect, Raises):
    with pytest.raises(expect.error) as info:
      fn(ctx)
    message = str(info.value)
    assert expect.match in message, message
    assert "\n" not in message, message
    if expect.after is not None:
      expect.after(ctx)
  elif isinstance(expect, Cli):
    with pytest.raises(SystemExit) as info:
      fn(ctx)
    assert info.value.code == 2
    captured = capsys.readouterr()
    err = [l for l in captured.err.splitlines() if l.strip()]
    with capsys.disabled():
      print("\n" + captured.out.strip())          # the time it took
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert expect.match in err[0], err[0]
  else:
    assert expect.predicate(fn(ctx), ctx), expect.what


def test_case_names_are_unique():
  names = [c[0] for c in CASES]
  assert len(names) == len(set(names))


@pytest.mark.parametrize("experiment", [
    "train", "downstream", "fusion", "limits", "benchmark", "benchmark_input",
    "recipe_sweep", "lr_sweep", "overfusion", "head_ablation"])
def test_help_documents_config_resume_and_overwrite(experiment, capsys):
  import importlib
  module = importlib.import_module(f"experiments.{experiment}")
  assert module.main(["--help"]) is None
  text = capsys.readouterr().out
  for needle in ("--config.FIELD=VALUE", "tfjax/config.py", "--overwrite",
                 "resumes", "--workdir", "--noprogress", "--debug",
                 "--xla_cpu_scheduler", "experiments/configs/"):
    assert needle in text, (experiment, needle)
  assert "--xla-cpu-scheduler" not in text and "--data-dir" not in text


def test_notebook_is_stored_without_outputs():
  """The tracked notebook holds no outputs or run metadata (running it in
  Jupyter and saving would write them into the repository)."""
  with open(os.path.join(ROOT, "examples", "quickstart.ipynb")) as f:
    nb = json.load(f)
  code = [c for c in nb["cells"] if c["cell_type"] == "code"]
  assert code and all(c["outputs"] == [] and c["execution_count"] is None
                      and "execution" not in c["metadata"] for c in code)
  assert "%matplotlib inline" in "".join(code[0]["source"])
  intro = "".join(nb["cells"][0]["source"])
  assert "jupyter lab examples/quickstart.ipynb" in intro and "nbclient" in intro
