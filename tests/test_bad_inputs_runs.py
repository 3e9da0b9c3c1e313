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
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types
import warnings
from typing import Any, Callable, Optional

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.test_train import tiny_config, toy_data
from tfjax import evaluation, train, workdir as workdirs, workdir_access
from tfjax.checkpoint import Checkpointer, CheckpointError, CheckpointWarning
from tfjax.data.registry import DatasetNotFoundError
from tfjax.metrics import MetricsWarning, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fast(**overrides):
  """The tiny config without the slow evaluations and plots."""
  return tiny_config(
    **{
      "eval.linear_steps": 0,
      "eval.finetune_fractions": (),
      "eval.head_knn": False,
      "write_plots": False,
      "num_steps": 4,
      "checkpoint_every": 2,
      **overrides,
    }
  )


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
    return self._request.getfixturevalue("finished")  # trained once, on demand

  def copy_finished(self) -> str:
    """A copy of the finished 4-step run (checkpoints 2 and 4) in ``self.dir``."""
    shutil.copytree(self._finished["dir"], self.dir)
    os.remove(os.path.join(self.dir, workdir_access.LOCK_FILE))
    return self.dir

  @property
  def finished_state(self):
    return self._finished["state"]

  def no_data(self):
    """Every data loader fails: what follows must not read data."""

    def fail(*args, **kwargs):
      raise AssertionError("data was loaded")

    from tfjax.data import pipeline, sources

    for module, name in (
      (train, "open_splits"),
      (sources, "open_source"),
      (pipeline, "open_source"),
      (sources, "prepare_dataset"),
    ):
      self.monkeypatch.setattr(module, name, fail)

  def no_compute(self):
    """Building the state fails: what follows must stop before compute."""

    def fail(*args, **kwargs):
      raise AssertionError("the state was built")

    self.monkeypatch.setattr(train, "create_train_state", fail)


def run(ctx, config, **kwargs):
  return train.train_and_evaluate(
    config, ctx.dir, data=kwargs.pop("data", toy_data()), progress=False, **kwargs
  )


# ----------------------------------------------------------------------------
# Helpers that look at the disk.


def checkpoint_steps(workdir):
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def checkpoints_finite(workdir) -> bool:
  """Every checkpoint on disk, read raw by orbax, holds finite floats only."""
  for step in checkpoint_steps(workdir):
    tree = ocp.StandardCheckpointer().restore(
      os.path.join(workdir, "checkpoints", str(step), "default")
    )
    for leaf in jax.tree.leaves(tree):
      leaf = np.asarray(leaf)
      if np.issubdtype(leaf.dtype, np.inexact) and not np.isfinite(leaf).all():
        return False
  return True


def corrupt(workdir, step):
  """Truncates the largest file of checkpoint ``step`` (a killed copy)."""
  files = [
    p
    for p in glob.glob(os.path.join(workdir, "checkpoints", str(step), "**"), recursive=True)
    if os.path.isfile(p)
  ]
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
  proc = subprocess.Popen(
    [sys.executable, "-c", _HOLD, os.path.join(workdir, workdir_access.LOCK_FILE)],
    stdout=subprocess.PIPE,
    text=True,
  )
  assert proc.stdout.readline().strip() == "locked"
  return proc


def lock_is_free(workdir) -> bool:
  """Another process can take ``workdir``'s lock now."""
  code = (
    "import fcntl, sys; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)"
  )
  return (
    subprocess.run(
      [sys.executable, "-c", code, os.path.join(workdir, workdir_access.LOCK_FILE)]
    ).returncode
    == 0
  )


def config_json(workdir):
  with open(os.path.join(workdir, "config.json")) as f:
    return json.load(f)


# ----------------------------------------------------------------------------
# 1. The loop stops at the first non-finite value; never a NaN checkpoint.


def _diverge(optimizer):
  def fn(ctx):
    # Logged every 5 steps, checkpoints every 3: with AdamW the state is
    # already non-finite at the (unlogged) checkpoint step 3.
    run(
      ctx,
      fast(learning_rate=1e8, optimizer=optimizer, num_steps=20, log_every=5, checkpoint_every=3),
    )

  return fn


def _after_adamw(ctx):
  assert checkpoint_steps(ctx.dir) == []
  assert lock_is_free(ctx.dir)


def _after_sgd(ctx):
  assert checkpoint_steps(ctx.dir) == [3] and checkpoints_finite(ctx.dir)
  records = read_metrics(os.path.join(ctx.dir, "metrics.jsonl"))
  assert records[-1]["step"] == 5 and "loss" in records[-1]["nonfinite"]


# ----------------------------------------------------------------------------
# 2. Work directories: the config is remembered, one writer at a time.


def _rerun(ctx, **overrides):
  ctx.copy_finished()
  return run(ctx, fast(**overrides))


def _after_mismatch(ctx):
  assert config_json(ctx.dir)["learning_rate"] == 4e-3  # the recipe's, not overwritten
  assert checkpoint_steps(ctx.dir) == [2, 4]
  assert lock_is_free(ctx.dir)


def _raised_num_steps(ctx):
  res = _rerun(ctx, num_steps=6)
  with open(os.path.join(ctx.dir, "run.json")) as f:
    starts = json.load(f)["starts"]
  steps = [r["step"] for r in read_metrics(os.path.join(ctx.dir, "metrics.jsonl"))]
  return (
    res["step"] == 6
    and steps == [2, 4, 6]
    and starts[-1]["changed"] == {"num_steps": [4, 6]}
    and starts[-1]["resumed_from"] == 4
    and config_json(ctx.dir)["num_steps"] == 6
  )


def _free_fields(ctx):
  before = open(os.path.join(ctx.copy_finished(), "metrics.jsonl")).read()
  res = run(ctx, fast(log_every=1, **{"eval.knn_k": 5, "input.num_threads": 0}))
  after = open(os.path.join(ctx.dir, "metrics.jsonl")).read()
  # Nothing trained again; the evaluation ran with the new k.
  chex.assert_trees_all_equal(res["state"].params, ctx.finished_state.params)
  # The finished run's logged loss, not None (nothing trained in this call).
  assert res["final_loss"] == ctx._finished["final_loss"]
  return before == after and config_json(ctx.dir)["eval"]["knn_k"] == 5 and res["step"] == 4


def _other_data(ctx):
  ctx.copy_finished()
  return run(ctx, fast(), data=toy_data(seed=1))


def _overwrite(ctx):
  ctx.copy_finished()
  res = run(ctx, fast(learning_rate=1e-2), overwrite=True)
  with open(os.path.join(ctx.dir, "run.json")) as f:
    starts = json.load(f)["starts"]
  return (
    res["step"] == 4
    and config_json(ctx.dir)["learning_rate"] == 1e-2
    and len(starts) == 1
    and starts[0]["resumed_from"] is None
  )


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


def _second_thread(ctx):
  """Two threads of one process train in one work directory: the second
  stops at once (the first is held just after taking the lock)."""
  import threading

  entered, release = threading.Event(), threading.Event()
  build = train.create_train_state

  def held_open(*args, **kwargs):
    entered.set()
    release.wait(120)
    return build(*args, **kwargs)

  ctx.monkeypatch.setattr(train, "create_train_state", held_open)
  ctx.first = {}

  def first():
    try:
      ctx.first["result"] = run(ctx, fast())
    except BaseException as e:  # noqa: BLE001  (reported by _after_thread)
      ctx.first["error"] = e

  thread = threading.Thread(target=first)
  thread.start()
  try:
    assert entered.wait(300), "the first run never started"
    t0 = time.time()
    try:
      run(ctx, fast())
    finally:
      ctx.refused_after = time.time() - t0
  finally:
    release.set()
    thread.join()


def _after_thread(ctx):
  assert "error" not in ctx.first, ctx.first.get("error")
  assert ctx.first["result"]["step"] == 4
  assert ctx.refused_after < 5, ctx.refused_after  # at once
  steps = [r["step"] for r in read_metrics(os.path.join(ctx.dir, "metrics.jsonl"))]
  assert steps == sorted(set(steps)) and steps[-1] == 4, steps
  assert not workdir_access._HELD and lock_is_free(ctx.dir)


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
  with pytest.warns(
    CheckpointWarning, match="checkpoint 4 .* cannot be restored .*falling back to checkpoint 2"
  ):
    res = run(ctx, fast())
  # Resumed from step 2: bit-identical to the uninterrupted run.
  chex.assert_trees_all_equal(res["state"].params, ctx.finished_state.params)
  return (
    os.path.isdir(os.path.join(ctx.dir, "checkpoints", "4.unreadable"))
    and checkpoint_steps(ctx.dir) == [2, 4]
    and checkpoints_finite(ctx.dir)
  )


def _corrupt_all(ctx):
  ctx.copy_finished()
  corrupt(ctx.dir, 2)
  corrupt(ctx.dir, 4)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", CheckpointWarning)
    run(ctx, fast())


def _stale_tmp(ctx):
  directory = os.path.join(ctx.dir, "checkpoints")
  stale = [
    os.path.join(directory, "6.orbax-checkpoint-tmp-1795000000"),
    os.path.join(directory, "2", "default.orbax-checkpoint-tmp-1795000001"),
  ]
  for path in stale:
    os.makedirs(os.path.join(path, "d"))
  Checkpointer(directory).close()
  return not any(os.path.exists(p) for p in stale) and os.path.isdir(os.path.join(directory, "2"))


def _save_nan(ctx):
  Checkpointer(ctx.dir).save(1, {"w": np.array([1.0, np.nan], np.float32)})


def test_ctrl_c_during_a_save_waits_for_the_checkpoint(tmp_path):
  """SIGINT while orbax writes is raised once the checkpoint is whole (an
  interrupt inside orbax's threads could leave the process waiting on them)."""
  ckpt = Checkpointer(str(tmp_path / "checkpoints"))
  save = ckpt._manager.save
  handler = signal.getsignal(signal.SIGINT)  # SIG_IGN under nohup

  def interrupted_save(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)  # a KeyboardInterrupt would be raised here, mid-save
    return save(*args, **kwargs)

  ckpt._manager.save = interrupted_save
  tree = {"w": np.arange(4, dtype=np.float32)}
  with pytest.raises(KeyboardInterrupt):
    ckpt.save(3, tree)
  assert signal.getsignal(signal.SIGINT) == handler
  ckpt.close()
  again = Checkpointer(str(tmp_path / "checkpoints"))
  assert again.latest_step() == 3
  np.testing.assert_array_equal(again.restore_latest(tree)["w"], tree["w"])
  again.close()


def test_ctrl_c_in_a_gc_callback_still_stops_the_command(capsys):
  """A SIGINT handled inside a garbage-collector callback (JAX frees compiled
  programs in one) raises KeyboardInterrupt there, which Python drops as
  unraisable: the command ran on (CI's Ctrl-C probe timed out).  The
  command line raises it again in the main code, and prints nothing."""
  import gc

  from experiments.common import _CtrlCNeverSwallowed

  handler = signal.signal(signal.SIGINT, signal.default_int_handler)  # ignored under nohup
  landed = []

  def callback(phase, info):
    if not landed:
      landed.append(phase)
      raise KeyboardInterrupt  # what the handler raises when SIGINT lands here

  ctrl_c = _CtrlCNeverSwallowed()
  ctrl_c.start()
  reached_the_end = False
  try:
    with pytest.raises(KeyboardInterrupt):
      gc.callbacks.append(callback)
      try:
        gc.collect()
        deadline = time.time() + 5
        while time.time() < deadline:  # the main code runs on
          pass
        reached_the_end = True
      finally:
        gc.callbacks.remove(callback)
  finally:
    ctrl_c.stop()
    signal.signal(signal.SIGINT, handler)
  assert landed and not reached_the_end
  assert capsys.readouterr().err == ""


def test_late_errors_of_a_failed_write_are_dropped_only_while_held(capsys, caplog):
  """tensorstore's late callbacks into orbax's closed event loop reach
  ``sys.unraisablehook`` or ``sys.excepthook``, and asyncio logs the failed
  write tasks nobody awaited when they are collected; while a save or
  restore is under way (or after a failed one) those, and only those, print
  nothing."""
  from tfjax.checkpoint import _LateErrorsDropped

  hooks = (sys.unraisablehook, sys.excepthook)
  asyncio_log = logging.getLogger("asyncio")
  full = ValueError("RESOURCE_EXHAUSTED: Error writing: No space left on device")
  dropped = _LateErrorsDropped()
  dropped.start()
  try:
    closed = RuntimeError("Event loop is closed")
    sys.excepthook(RuntimeError, closed, None)
    sys.unraisablehook(
      types.SimpleNamespace(
        exc_type=RuntimeError, exc_value=closed, exc_traceback=None, err_msg=None, object=None
      )
    )
    asyncio_log.error("Task exception was never retrieved", exc_info=(ValueError, full, None))
    assert capsys.readouterr().err == "" and not caplog.records
    sys.excepthook(ValueError, ValueError("other"), None)
    assert "ValueError: other" in capsys.readouterr().err
    # the caller's own no-space error, uncaught, is still printed
    sys.excepthook(OSError, OSError(28, "No space left on device"), None)
    assert "No space left on device" in capsys.readouterr().err
    asyncio_log.error("Task exception was never retrieved", exc_info=(KeyError, KeyError(1), None))
    assert len(caplog.records) == 1
  finally:
    dropped.stop()
  assert (sys.unraisablehook, sys.excepthook) == hooks
  # (a checkpointer whose write failed, in an earlier test, keeps its own for good)
  assert dropped._filter not in asyncio_log.filters


def _restore_nan(ctx):
  """A non-finite checkpoint (written by hand, as an older version could)
  is skipped like an unreadable one."""
  manager = ocp.CheckpointManager(
    ctx.dir, options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
  )
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
      given = toy_data() if isinstance(data, str) else data
      train.train_and_evaluate(config, workdir, progress=False, data=given)
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
  train.train_and_evaluate(
    tiny_config(
      dataset="cifar10",
      data_dir=str(empty),
      backbone="small_cnn",
      backbone_kwargs={"out_features": 8},
    ),
    ctx.dir,
    progress=False,
  )


def _with(index: int, change):
  """``toy_data()`` with array ``index`` (0 x_train, 1 y_train, 2 x_test,
  3 y_test) replaced by ``change(array)``."""
  arrays = list(toy_data())
  arrays[index] = change(arrays[index].copy())
  return tuple(arrays)


def _put_label(value, row=4):
  def change(y):
    y[row] = value
    return y

  return change


def _put(value, row=5):
  def change(x):
    x[row, 2] = value
    return x

  return change


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

  out = cli(
    fake_run,
    "train",
    ["--config=experiments/configs/default.py:quick", f"--workdir={ctx.dir}", "--overwrite"],
    config_name="default",
  )
  return (
    out == "ran"
    and seen["left"] == []
    and not seen["lock_free"]
    and sorted(os.listdir(ctx.dir)) == [".lock", "notes.txt", "supcon"]
    and lock_is_free(ctx.dir)
  )


class _Clock:
  """A clock that advances one second each time it is read."""

  def __init__(self):
    self.now = 1000.0

  def time(self):
    self.now += 1.0
    return self.now


def _cumulative_train_seconds(ctx):
  """train_seconds sums the training of every start of a run, and a rerun
  that only evaluates reports that total."""
  ctx.monkeypatch.setattr(train, "time", _Clock())
  recorded = lambda: json.load(open(os.path.join(ctx.dir, "run.json")))["train_seconds"]  # noqa: E731
  run(ctx, fast(), stop_after=2)  # steps 1-2, checkpoint at 2
  first = recorded()
  done = run(ctx, fast())  # steps 3-4 on top
  total = recorded()
  again = run(ctx, fast())  # nothing left: evaluates only
  starts = json.load(open(os.path.join(ctx.dir, "run.json")))["starts"]
  return (
    0 < first < total
    and total <= done["train_seconds"] < total + 5
    and again["train_seconds"] == round(total, 1)
    and len(starts) == 3
  )


# ----------------------------------------------------------------------------
# 6. A damaged metrics.jsonl: the rerun works, the line is named, nothing lost.


def _append_garbage(good: bytes):
  return good + b'}{"step": garbage\n', good.count(b"\n") + 1


def _truncate_last(good: bytes):
  return good[:-15], good.count(b"\n")  # half of the last record


def _list_on_line_2(good: bytes):
  lines = good.split(b"\n")
  return b"\n".join([lines[0], b"[1, 2]", *lines[1:]]), 2


def _damaged_metrics(damage):
  def fn(ctx):
    path = os.path.join(ctx.copy_finished(), "metrics.jsonl")
    with open(path, "rb") as f:
      good = f.read()
    damaged, line = damage(good)
    with open(path, "wb") as f:
      f.write(damaged)
    with pytest.warns(MetricsWarning) as seen:
      res = run(ctx, fast())
    messages = [str(w.message) for w in seen if w.category is MetricsWarning]
    with open(path, "rb") as f:
      after = f.read()
    with open(path + ".damaged", "rb") as f:
      aside = f.read()
    bad = damaged.split(b"\n")[line - 1]
    # One warning, one line, naming the file and the line; the damaged line
    # moved aside byte for byte; every record line that was there is kept.
    assert len(messages) == 1 and "\n" not in messages[0], messages
    assert re.match(
      rf"{re.escape(path)}: 1 line\(s\) are not metric "
      rf"records \(line {line}: .*\); moved to "
      rf"{re.escape(path)}\.damaged$",
      messages[0],
    ), messages[0]
    assert aside == bad + b"\n"
    kept = [l for l in damaged.split(b"\n") if l.strip() and l != bad]
    assert after == b"".join(l + b"\n" for l in kept)
    records = read_metrics(path)  # clean now: no warning
    return res, records

  return fn


def _finished_again(out, ctx):
  res, records = out
  return (
    res["step"] == 4
    and res["final_loss"] == ctx._finished["final_loss"]
    and records[-1]["step"] == 4
  )


def _read_damaged(ctx):
  path = str(ctx.tmp / "metrics.jsonl")
  with open(path, "w") as f:
    f.write('{"step": 1, "loss": 2.0}\n\n[3]\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
  with pytest.warns(
    MetricsWarning,
    match=re.escape(
      f"{path}: 2 line(s) are not metric records (line 3: a JSON list, not "
      "an object; line 5: not JSON (Unterminated string starting at, column "
      "13)); skipped"
    ),
  ):
    records = read_metrics(path)
  with open(path) as f:
    unchanged = f.read().endswith('"lo')
  return unchanged and records == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]


# ----------------------------------------------------------------------------
# 7. Two processes generate one offline dataset into one fresh data_dir.

_PREPARE = """
import os, sys, time
from tfjax.data import sources
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.005)
print(len(sources.open_source("mnist1d", "train", data_dir=sys.argv[1])), flush=True)
"""


def _prepare_twice_at_once(ctx):
  data_dir, go = str(ctx.tmp / "tfds"), str(ctx.tmp / "go")
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", _PREPARE, data_dir, go],
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for _ in range(2)
  ]
  try:
    for p in procs:  # both imported, then both start
      assert p.stdout.readline().strip() == "ready", p.stderr.read()
    open(go, "w").close()
    outs = [p.communicate(timeout=600) for p in procs]
  finally:
    for p in procs:
      p.kill()
  return [(p.returncode, out.split(), err[-500:]) for p, (out, err) in zip(procs, outs)]


def _main_job_table(ctx):
  """The main job's table with training faked: each run's row carries its own
  steps (800 supervised, 1600 self-supervised) and the minutes its seeds'
  runs report (train_seconds), and the header claims no one number of steps."""
  from experiments import train as main_job
  from experiments.configs.default import get_config

  seconds = {800: 30.0, 1600: 90.0}  # per seed, as a resumed run reports it

  def fake_train(config, workdir, **kwargs):
    os.makedirs(workdir, exist_ok=True)
    return {
      "knn": 0.5,
      "final_loss": 1.0,
      "train_seconds": seconds[config.num_steps],
      "step": config.num_steps,
      "state": None,
    }

  ctx.monkeypatch.setattr(train, "train_and_evaluate", fake_train)
  ctx.monkeypatch.setattr(evaluation, "evaluate_untrained", lambda c, data=None: {"knn": 0.25})
  config = get_config("quick")
  config.seeds, config.raw_baseline, config.batch_size = 2, False, 16
  rows = main_job.run(config, ctx.dir, progress=False, data=toy_data())
  cells = {r["method"]: (r.get("steps"), r.get("minutes")) for r in rows}
  with open(os.path.join(ctx.dir, "results.md")) as f:
    title, table = f.readline(), f.read()
  header = [line for line in table.splitlines() if line.startswith("|")][0]
  want = _display_steps(config)  # {method: its own num_steps}
  return (
    set(want.values()) == {800, 1600}
    and "steps" not in title
    and all(cells[m] == (n, round(2 * seconds[n] / 60, 2)) for m, n in want.items())
    and "| steps |" in header
    and "train_seconds" in table
  )


def _display_steps(config):
  from experiments.runs import run_configs
  from tfjax import methods

  return {methods.display_name(c): c.num_steps for _, c in run_configs(config)}


CASES = [
  # 1. Divergence.
  (
    "learning_rate=1e8 (AdamW): state non-finite at an unlogged checkpoint step",
    _diverge("adamw"),
    Raises(
      FloatingPointError,
      "not finite at step 3 (learning_rate=1e+08); no checkpoint was written",
      _after_adamw,
    ),
  ),
  (
    "learning_rate=1e8 (SGD): loss non-finite at logged step 5",
    _diverge("sgd"),
    Raises(FloatingPointError, "training diverged: loss, grad_norm, param_norm", _after_sgd),
  ),
  (
    "learning_rate=1e8 (SGD): message names the last finite checkpoint",
    _diverge("sgd"),
    Raises(
      FloatingPointError, "at step 5 (learning_rate=1e+08); the last checkpoint (step 3) is finite"
    ),
  ),
  # 2. Work directories.
  (
    "rerun with another learning_rate",
    lambda ctx: _rerun(ctx, learning_rate=1e-2),
    Raises(
      workdirs.ConfigMismatchError,
      "of another config: learning_rate 0.004 -> 0.01. Rerun with --overwrite",
      _after_mismatch,
    ),
  ),
  (
    "rerun with fewer num_steps",
    lambda ctx: _rerun(ctx, num_steps=2, warmup_steps=1),
    Raises(workdirs.ConfigMismatchError, "num_steps 4 -> 2; warmup_steps 2 -> 1"),
  ),
  (
    "rerun with another seed and head depth",
    lambda ctx: _rerun(ctx, seed=1, **{"head.num_layers": 2}),
    Raises(workdirs.ConfigMismatchError, "head.num_layers 3 -> 2; seed 0 -> 1"),
  ),
  (
    "rerun raising num_steps continues training",
    _raised_num_steps,
    Check(lambda out, ctx: out, "continued to step 6, recorded"),
  ),
  (
    "rerun of a finished run keeps its final_loss",
    lambda ctx: _rerun(ctx)["final_loss"] == ctx._finished["final_loss"],
    Check(lambda out, ctx: out, "final_loss read back from metrics.jsonl"),
  ),
  (
    "rerun changing free fields re-evaluates only",
    _free_fields,
    Check(lambda out, ctx: out, "no training, new eval, config.json updated"),
  ),
  (
    "rerun on other data",
    _other_data,
    Raises(workdirs.ConfigMismatchError, "trained on other data"),
  ),
  (
    "overwrite=True starts afresh",
    _overwrite,
    Check(lambda out, ctx: out, "a fresh run with the new config"),
  ),
  (
    "second run while another holds the work directory",
    _busy,
    Raises(workdir_access.WorkdirBusyError, "is in use by another run (pid held by the test)"),
  ),
  (
    "second thread of the same process in a busy work directory",
    _second_thread,
    Raises(
      workdir_access.WorkdirBusyError,
      f"is in use by another run (pid {os.getpid()} since ",
      _after_thread,
    ),
  ),
  (
    "lock of a killed run does not block",
    _killed_holder,
    Check(lambda out, ctx: out, "trained, lock released"),
  ),
  # 3. Checkpoints.
  (
    "truncated latest checkpoint: falls back, resumes bit-exactly",
    _corrupt_latest,
    Check(lambda out, ctx: out, "fell back to step 2"),
  ),
  ("every checkpoint unreadable", _corrupt_all, Raises(CheckpointError, "no checkpoint in")),
  (
    "stale orbax temporary directories",
    _stale_tmp,
    Check(lambda out, ctx: out, "removed, step directory kept"),
  ),
  (
    "saving a non-finite tree",
    _save_nan,
    Raises(FloatingPointError, "not writing checkpoint 1: ['w'] not finite"),
  ),
  (
    "restoring a non-finite checkpoint",
    _restore_nan,
    Check(lambda out, ctx: out, "fell back to the finite one"),
  ),
  # 4. Before any compute.
  (
    "num_steps=0",
    _before_compute(fast(num_steps=0)),
    Raises(ValueError, "num_steps must be an integer >= 1, got 0"),
  ),
  (
    "head.num_layers=0",
    _before_compute(fast(**{"head.num_layers": 0})),
    Raises(ValueError, "head.num_layers must be >= 1, got 0"),
  ),
  (
    "learning_rate=-1",
    _before_compute(fast(learning_rate=-1.0)),
    Raises(ValueError, "learning_rate must be finite and >= 0, got -1.0"),
  ),
  (
    "learning_rate=nan",
    _before_compute(fast(learning_rate=float("nan"))),
    Raises(ValueError, "learning_rate must be finite and >= 0, got nan"),
  ),
  (
    "momentum=1.5",
    _before_compute(fast(momentum=1.5)),
    Raises(ValueError, "momentum must be finite and in [0, 1), got 1.5"),
  ),
  (
    "log_every=0",
    _before_compute(fast(log_every=0)),
    Raises(ValueError, "log_every must be an integer >= 1, got 0"),
  ),
  (
    "input.in_memory_mb=-1",
    _before_compute(fast(**{"input.in_memory_mb": -1})),
    Raises(ValueError, "input.in_memory_mb must be an integer >= 0, got -1"),
  ),
  (
    "unknown schedule",
    _before_compute(fast(schedule="cosine")),
    Raises(ValueError, "unknown schedule 'cosine'"),
  ),
  (
    "batch larger than the registry split (no data read)",
    _before_compute(fast(batch_size=64), data=None),
    Raises(ValueError, "batch_size 64 exceeds the 60 training examples of 'subspaces_tiny'"),
  ),
  (
    "batch larger than the validation-reduced registry split",
    _before_compute(fast(batch_size=48, validation_fraction=0.5), data=None),
    Raises(
      ValueError,
      "batch_size 48 exceeds the 30 training examples of "
      "'subspaces_tiny' after holding out validation_fraction=0.5",
    ),
  ),
  (
    "batch larger than the arrays given (no state built)",
    _before_compute(fast(batch_size=64)),
    Raises(ValueError, "batch_size 64 exceeds the 48 training examples"),
  ),
  (
    "unwritable work directory (no data read)",
    _before_compute(fast(), data=None, workdir=_file_parent),
    Raises(workdir_access.WorkdirError, "is not writable: Not a directory"),
  ),
  (
    "real dataset not downloaded (no data read)",
    _missing_download,
    Raises(DatasetNotFoundError, "dataset 'cifar10' is not prepared under data_dir"),
  ),
  # 4b. Bad values that used to train silently or fail late (#22).
  (
    "batch_size=1: one source, loss and gradient 0",
    _before_compute(fast(batch_size=1)),
    Raises(ValueError, "batch_size must be >= 2, got 1"),
  ),
  (
    "label_fraction=1e-9 labels fewer examples than classes",
    _before_compute(fast(label_fraction=1e-9)),
    Raises(
      ValueError,
      "label_fraction=1e-09 labels 4.8e-08 of the 48 training "
      "examples, fewer than the 3 classes; the smallest label_fraction "
      "that works is 0.0625",
    ),
  ),
  (
    "label_fraction=1e-9 against the registry split (no data read)",
    _before_compute(fast(label_fraction=1e-9), data=None),
    Raises(ValueError, "fewer than the 3 classes; the smallest label_fraction that works is 0.05"),
  ),
  (
    "head.compute_dtype float16 (no loss scaling)",
    _before_compute(fast(**{"head.compute_dtype": "float16"})),
    Raises(ValueError, "head.compute_dtype must name"),
  ),
  (
    "backbone cnn1d with the MLP's backbone_kwargs",
    _before_compute(fast(backbone="cnn1d")),
    Raises(
      ValueError,
      "backbone_kwargs.batch_norm, backbone_kwargs.hidden are "
      "not fields of backbone 'cnn1d'; it takes channels, kernel_size, "
      "out_features",
    ),
  ),
  (
    "x_train holds a NaN",
    _before_compute(fast(), data=_with(0, _put(np.nan))),
    Raises(ValueError, "x_train holds NaN/inf (first at index 5)"),
  ),
  (
    "x_train holds an inf",
    _before_compute(fast(), data=_with(0, _put(np.inf, 7))),
    Raises(ValueError, "x_train holds NaN/inf (first at index 7)"),
  ),
  (
    "x_train holds 1e40",
    _before_compute(fast(), data=_with(0, lambda x: _put(1e40)(x.astype(np.float64)))),
    Raises(ValueError, "x_train holds values beyond ±1e+30"),
  ),
  (
    "x_test holds a NaN",
    _before_compute(fast(), data=_with(2, _put(np.nan, 0))),
    Raises(ValueError, "x_test holds NaN/inf (first at index 0)"),
  ),
  (
    "x_test with another feature count",
    _before_compute(fast(), data=_with(2, lambda x: x[:, :5])),
    Raises(ValueError, "x_test has shape [5] per example, x_train [8]"),
  ),
  (
    "x_test empty",
    _before_compute(fast(), data=_with(2, lambda x: x[:0])),
    Raises(ValueError, "x_test is empty (0 examples)"),
  ),
  (
    "y_train of another length",
    _before_compute(fast(), data=_with(1, lambda y: y[:-1])),
    Raises(ValueError, "y_train must be [N] with N = len(x_train) = 48"),
  ),
  (
    "y_train negative",
    _before_compute(fast(), data=_with(1, _put_label(-1))),
    Raises(ValueError, "y_train holds a negative class id -1 (at index 4)"),
  ),
  (
    "y_train of floats",
    _before_compute(fast(), data=_with(1, lambda y: y.astype(np.float32))),
    Raises(ValueError, "y_train must hold integer class ids, got dtype float32"),
  ),
  (
    "train_seconds sums the starts of a run",
    _cumulative_train_seconds,
    Check(lambda out, ctx: out, "cumulative, reported on resume"),
  ),
  # 5. Command lines.
  (
    "cli: misspelt field",
    _cli("--config.learning_rte=0.1"),
    Cli("unknown config field 'learning_rte'; did you mean learning_rate?"),
  ),
  (
    "cli: misspelt nested field",
    _cli("--config.head.num_layrs=2"),
    Cli("unknown config field 'head.num_layrs'; did you mean head.num_layers?"),
  ),
  (
    "cli: misspelt experiment field",
    _cli("--config.clusters.sigm=2", experiment="fusion"),
    Cli("unknown config field 'clusters.sigm'; did you mean clusters.sigma?"),
  ),
  (
    "cli: unknown config argument",
    _cli("--config=experiments/configs/default.py:quik"),
    Cli("ValueError: unknown config argument 'quik'"),
  ),
  (
    "cli: override every run replaces",
    _cli("--config.loss=dcl"),
    Cli("--config.loss changes no run: every run sets its own loss"),
  ),
  (
    "cli: num_steps=0 of a run",
    _cli("--config.compare=supcon", "--config.runs.supcon.num_steps=0"),
    Cli("num_steps must be an integer >= 1, got 0"),
  ),
  (
    "cli: head.num_layers=0",
    _cli("--config.compare=supcon", "--config.head.num_layers=0"),
    Cli("head.num_layers must be >= 1, got 0"),
  ),
  (
    "cli: negative learning rate of a run",
    _cli("--config.compare=supcon", "--config.runs.supcon.learning_rate=-1"),
    Cli("learning_rate must be finite and >= 0, got -1.0"),
  ),
  (
    "cli: unwritable work directory",
    _cli(workdir=_file_parent),
    Cli("is not writable: Not a directory"),
  ),
  (
    "cli: second command in a busy work directory",
    _cli_busy,
    Cli("is in use by another run (pid held by the test)"),
  ),
  (
    "cli: a stray positional argument",
    _cli("--config=experiments/configs/default.py:quick", "overwrite"),
    Cli("unexpected argument 'overwrite' (flags start with --); did you mean --overwrite?"),
  ),
  (
    "cli: a run named twice in compare",
    _cli(
      "--config=experiments/configs/default.py:quick", "--config.compare=transfusion,transfusion"
    ),
    Cli("compare names run 'transfusion' twice"),
  ),
  (
    "cli: seeds=0",
    _cli("--config=experiments/configs/default.py:quick", "--config.seeds=0"),
    Cli("seeds must be an integer >= 1 (how many seeds), got 0"),
  ),
  (
    "cli: seeds=-1",
    _cli("--config=experiments/configs/default.py:quick", "--config.seeds=-1"),
    Cli("seeds must be an integer >= 1 (how many seeds), got -1"),
  ),
  (
    "main job's table: each run's own steps, minutes from its train_seconds",
    _main_job_table,
    Check(lambda out, ctx: out, "steps and minutes per row, no one number of steps in the header"),
  ),
  (
    "cli: --overwrite clears earlier runs, keeps other files",
    _cli_overwrite,
    Check(lambda out, ctx: out, "run files gone, lock held"),
  ),
  # 7. Concurrent dataset preparation.
  (
    "two processes generate MNIST-1D into one fresh data_dir",
    _prepare_twice_at_once,
    Check(
      lambda out, ctx: all(rc == 0 and words[-1:] == ["4000"] for rc, words, _ in out),
      "both read the 4000 training records",
    ),
  ),
  # 6. A damaged metrics.jsonl.
  (
    "finished run, garbage appended to metrics.jsonl: rerun works",
    _damaged_metrics(_append_garbage),
    Check(_finished_again, "same final_loss; garbage moved aside"),
  ),
  (
    "finished run, a JSON list on line 2 of metrics.jsonl: rerun works",
    _damaged_metrics(_list_on_line_2),
    Check(_finished_again, "same final_loss; the list moved aside"),
  ),
  (
    "finished run, last metrics.jsonl line truncated: rerun works",
    _damaged_metrics(_truncate_last),
    Check(
      lambda out, ctx: (
        out[0]["step"] == 4 and out[0]["final_loss"] is None and out[1][-1]["step"] < 4
      ),
      "evaluated again; the lost record gives no final_loss, not a crash",
    ),
  ),
  (
    "read_metrics of a damaged file: skips and names the lines",
    _read_damaged,
    Check(lambda out, ctx: out, "records kept, file unchanged"),
  ),
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
      print("\n" + captured.out.strip())  # the time it took
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert expect.match in err[0], err[0]
  else:
    assert expect.predicate(fn(ctx), ctx), expect.what


def test_case_names_are_unique():
  names = [c[0] for c in CASES]
  assert len(names) == len(set(names))


@pytest.mark.parametrize(
  "experiment",
  [
    "train",
    "downstream",
    "fusion",
    "limits",
    "benchmark",
    "benchmark_input",
    "recipe_sweep",
    "lr_sweep",
    "overfusion",
    "head_ablation",
  ],
)
def test_help_documents_config_resume_and_overwrite(experiment, capsys):
  import importlib

  module = importlib.import_module(f"experiments.{experiment}")
  assert module.main(["--help"]) is None
  text = capsys.readouterr().out
  for needle in (
    "--config.FIELD=VALUE",
    "tfjax/config.py",
    "--overwrite",
    "resumes",
    "--workdir",
    "--noprogress",
    "--debug",
    "--xla_cpu_scheduler",
    "experiments/configs/",
  ):
    assert needle in text, (experiment, needle)
  assert "--xla-cpu-scheduler" not in text and "--data-dir" not in text


def test_notebook_is_stored_without_outputs():
  """The tracked notebook holds no outputs or run metadata (running it in
  Jupyter and saving would write them into the repository)."""
  with open(os.path.join(ROOT, "examples", "quickstart.ipynb")) as f:
    nb = json.load(f)
  code = [c for c in nb["cells"] if c["cell_type"] == "code"]
  assert code and all(
    c["outputs"] == [] and c["execution_count"] is None and "execution" not in c["metadata"]
    for c in code
  )
  assert "%matplotlib inline" in "".join(code[0]["source"])
  intro = "".join(nb["cells"][0]["source"])
  assert "jupyter lab examples/quickstart.ipynb" in intro and "nbclient" in intro


# ----------------------------------------------------------------------------
# 8. A full disk, a corrupt checkpoint, Ctrl-C: the command ends in one line
# (a real `python -m experiments.train`, 1 run of the tiny main job).

_TINY_JOB = [
  "--config=experiments/configs/default.py:quick",
  "--config.compare=supcon",
  "--config.warmup_steps=2",
  "--config.batch_size=32",
  "--config.log_every=2",
  "--config.checkpoint_every=2",
  "--config.eval.linear_steps=0",
  "--config.eval.finetune_fractions=()",
  "--config.eval.head_knn=False",
  "--config.write_plots=False",
  "--config.random_baseline=False",
  "--config.raw_baseline=False",
  "--config.compilation_cache=False",
  "--noprogress",
]
# TensorFlow's C++ start-up lines (TF_CPP_MIN_LOG_LEVEL does not hold them).
_TF_STARTUP = ("WARNING: All log messages before absl::InitializeLog()", "port.cc:")


def _job(workdir, num_steps):
  return subprocess.Popen(
    [
      sys.executable,
      "-m",
      "experiments.train",
      f"--workdir={workdir}",
      *_TINY_JOB,
      f"--config.runs.supcon.num_steps={num_steps}",
    ],
    cwd=ROOT,
    env=dict(os.environ, XLA_FLAGS=""),  # one CPU device: the test is about what it prints
    # Ctrl-C's default action in the job even when this suite runs with SIGINT
    # ignored (nohup, a background job), which the job would inherit.
    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _said(out: str):
  """What a command printed besides its start-up lines (each run's recipe,
  the dataset) and TensorFlow's."""
  return [
    l
    for l in out.splitlines()
    if l.strip()
    and not l.startswith(("dataset ", "preparing dataset "))
    and not re.match(r"run '\w+': .* recipe", l)
    and not any(s in l for s in _TF_STARTUP)
  ]


def _ctrl_c(tmp):
  workdir = str(tmp / "job")
  proc = _job(workdir, 4000)
  metrics = os.path.join(workdir, "supcon", "seed0", "metrics.jsonl")
  try:
    t0 = time.time()
    while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
      assert proc.poll() is None and time.time() - t0 < 400, proc.poll()
      time.sleep(0.1)
    proc.send_signal(signal.SIGINT)  # after the first logged step
    out, _ = proc.communicate(timeout=120)
  finally:
    proc.kill()
  said = _said(out)
  assert proc.returncode == 130, out
  assert len(said) == 1 and re.fullmatch(
    r"interrupted; rerun the same command to (resume from step \d+'s "
    r"checkpoint of supcon/seed0|start again \(no checkpoint yet\))",
    said[0],
  ), said


def _full_disk(tmp):
  mount = tmp / "full"
  mount.mkdir()
  if (
    os.geteuid() != 0
    or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)]).returncode
  ):
    pytest.skip("needs root to mount a 2 MiB tmpfs")
  try:
    proc = _job(str(mount / "job"), 40)  # a checkpoint is 1.1 MB
    out, _ = proc.communicate(timeout=600)
  finally:
    subprocess.run(["umount", str(mount)])
  said = _said(out)
  assert proc.returncode == 2, out
  assert len(said) == 1 and re.fullmatch(
    rf"error: no space left on device writing {re.escape(str(mount))}/job/"
    r"supcon/seed0/checkpoints/\d+; free some, then rerun the same command "
    r"to resume from step \d+'s checkpoint of supcon/seed0",
    said[0],
  ), said


def _corrupt_checkpoint(tmp):
  workdir = str(tmp / "job")
  out, _ = _job(workdir, 4).communicate(timeout=600)
  corrupt(os.path.join(workdir, "supcon", "seed0"), 4)
  proc = _job(workdir, 4)
  out, _ = proc.communicate(timeout=600)
  said = _said(out)
  warned = [l for l in said if l.startswith("warning: checkpoint 4 ")]
  assert proc.returncode == 0, out
  assert len(warned) == 1 and "falling back to checkpoint 2" in warned[0], said
  assert not [l for l in said if "Traceback" in l or "Event loop" in l], said
  # Besides the warning: the run's results line and the table (as always).
  assert said[1].startswith('{"run": "supcon"'), said


CLI_CASES = [
  ("Ctrl-C after the first logged step", _ctrl_c),
  ("a full disk (2 MiB tmpfs)", _full_disk),
  ("a corrupt latest checkpoint", _corrupt_checkpoint),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, fn", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_command_ends_in_one_line(name, fn, tmp_path):
  del name
  fn(tmp_path)
