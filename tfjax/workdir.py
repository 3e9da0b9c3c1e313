"""A run's work directory: who may write it, starting afresh, what it records.

:func:`tfjax.train.train_and_evaluate` keeps one run in a work directory
(``config.json``, ``run.json``, ``metrics.jsonl``, ``checkpoints/``,
``tensorboard/``, ``results.json``, plots).  A rerun in the same directory
resumes from the last checkpoint, so the directory must keep meaning one
run:

* **the config is remembered.**  Once a checkpoint exists, a rerun whose
  config differs in a field that changes the result is refused, with one
  line naming the fields (:class:`ConfigMismatchError`); start afresh with
  ``overwrite=True`` (``--overwrite`` on the command line) or use another
  directory.  What a rerun may change (a raised ``num_steps``, the free
  fields) is :mod:`tfjax.rerun`'s rule; the data is compared by fingerprint
  (:func:`tfjax.data.fingerprint.data_fingerprint`).  ``config.json``
  always holds the config of the latest start; ``run.json`` lists every
  start with the fields it changed, the data fingerprint and the training
  seconds up to the newest checkpoint, summed over the starts.
* **one writer at a time.**  A run holds an exclusive ``fcntl.flock`` on
  ``WORKDIR/.lock`` while it works; a second run in the same directory fails
  at once (:class:`WorkdirBusyError`).  The lock goes with the process (a
  killed run leaves no stale lock), and is re-entrant within one process.
  Where ``fcntl`` does not exist (Windows) there is no lock.
* **checks before compute.**  :func:`check_writable` runs before any data
  is read (the config and the data are :func:`tfjax.config.validate`'s).

In a run of several processes only process 0 touches the directory; the
others learn its verdict through :func:`agree` (a broadcast), so every
process stops together instead of waiting on a collective.

Example::

    >>> from tfjax import workdir
    >>> with workdir.RunDirectory("/tmp/run", config) as run:
    ...   run.start(train_source, test_source)   # checks the data, writes config.json
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import shutil
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from tfjax.data.fingerprint import data_fingerprint
from tfjax.rerun import describe, rerun_changes

__all__ = [
  "RUN_FILES",
  "WorkdirError",
  "WorkdirBusyError",
  "ConfigMismatchError",
  "RunDirectory",
  "agree",
  "check_writable",
  "clear",
  "clear_tree",
  "lock",
  "latest_checkpoint_step",
]

# What a run writes into its directory (``clear`` removes exactly these).
RUN_FILES = (
  "config.json",
  "run.json",
  "metrics.jsonl",
  "results.json",
  "checkpoints",
  "tensorboard",
  "loss.png",
  "affinity.png",
  "spectrum.png",
)
LOCK_FILE = ".lock"


class WorkdirError(RuntimeError):
  """The work directory cannot hold this run (see the subclasses)."""


class WorkdirBusyError(WorkdirError):
  """Another process is running in the same work directory."""


class ConfigMismatchError(WorkdirError, ValueError):
  """The work directory holds a run of another config."""


# ----------------------------------------------------------------------------
# Processes.
# ----------------------------------------------------------------------------
def _primary() -> bool:
  import jax

  return jax.process_index() == 0


def agree(fn, what: str = "preparing the work directory"):
  """Runs ``fn()`` on process 0; every process raises if it raised.

  Returns ``fn()``'s value on process 0 (None elsewhere).  With one process
  this is just ``fn()``.  With several, process 0's outcome is broadcast, so
  the other processes stop at once (with a line pointing at process 0's
  error) instead of waiting on the next collective.
  """
  import jax

  error, out = None, None
  if _primary():
    try:
      out = fn()
    except Exception as e:  # noqa: BLE001  (re-raised below, on every process)
      error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    failed = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
    if failed and error is None:
      raise WorkdirError(f"process 0 failed while {what} (its error says why)")
  if error is not None:
    raise error
  return out


# ----------------------------------------------------------------------------
# Writable, locked.
# ----------------------------------------------------------------------------
def check_writable(workdir: str) -> None:
  """Creates ``workdir`` and writes (then removes) a file in it.

  Raises :class:`WorkdirError` naming the directory and the OS error, before
  any data is read (a read-only or full file system, a parent that is a
  file, no permission).
  """
  probe = os.path.join(workdir, f".write_test.{os.getpid()}")
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(
      f"work directory {workdir!r} is not writable: "
      f"{e.strerror or e} ({type(e).__name__}); choose "
      "another --workdir"
    ) from None


# realpath -> [file object, depth, id of the holding thread, holder text]
_HELD: Dict[str, List[Any]] = {}


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
  """Holds an exclusive lock on ``workdir`` (``WORKDIR/.lock``) inside the block.

  Raises :class:`WorkdirBusyError` at once when another process, or another
  thread of this process, holds it (the message gives the holder's process
  id and start time).  Re-entrant within the thread that holds it; released
  on exit, also on an exception, and by the OS when the process dies
  (``flock``), so a killed run never blocks the next one.
  """
  try:
    import fcntl
  except ImportError:  # Windows: no lock
    yield
    return
  import threading

  key = os.path.realpath(workdir)
  me = threading.get_ident()

  def busy(holder: str) -> WorkdirBusyError:
    return WorkdirBusyError(
      f"work directory {workdir!r} is in use by another run ({holder}); "
      "wait for it to finish or use another --workdir"
    )

  held = _HELD.get(key)
  if held is not None:
    # flock is per process: only the registry tells this thread's own lock
    # from another thread's.
    if held[2] != me:
      raise busy(held[3])
    held[1] += 1
    try:
      yield
    finally:
      _HELD[key][1] -= 1
    return
  path = os.path.join(workdir, LOCK_FILE)
  f = open(path, "a+")
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
      f.close()  # a file system without locks (some network ones)
      warnings.warn(
        f"cannot lock {path} ({e.strerror}): a second run in "
        "this work directory would not be detected",
        stacklevel=3,
      )
      yield
      return
    f.seek(0)
    holder = f.read().strip() or "unknown"
    f.close()
    raise busy(holder) from None
  holder = f"pid {os.getpid()} since {datetime.datetime.now().isoformat(timespec='seconds')}"
  f.seek(0)
  f.truncate()
  f.write(holder)
  f.flush()
  _HELD[key] = [f, 1, me, holder]
  try:
    yield
  finally:
    _HELD[key][1] -= 1
    if _HELD[key][1] == 0:
      del _HELD[key]
      fcntl.flock(f, fcntl.LOCK_UN)
      f.close()


# ----------------------------------------------------------------------------
# Starting afresh.
# ----------------------------------------------------------------------------
def clear(workdir: str) -> List[str]:
  """Removes the run files (:data:`RUN_FILES`) of ``workdir``; returns them.

  Nothing else in the directory is touched (the lock file stays).
  """
  removed = []
  for name in RUN_FILES:
    path = os.path.join(workdir, name)
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
    elif os.path.lexists(path):
      os.remove(path)
    else:
      continue
    removed.append(path)
  return removed


def _is_run_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, "config.json")) and (
    os.path.isdir(os.path.join(path, "checkpoints"))
    or os.path.isfile(os.path.join(path, "metrics.jsonl"))
  )


def clear_tree(root: str, extra: Sequence[str] = ("results.md", "results.json")) -> List[str]:
  """``--overwrite``: clears every run directory under ``root`` (inclusive)
  and removes ``root``'s own ``extra`` files (an experiment's tables).

  Only what runs write goes (:data:`RUN_FILES`); other files stay.
  Returns the removed paths.
  """
  removed = []
  for path, dirs, _ in os.walk(root):
    if _is_run_dir(path):
      removed += clear(path)
      dirs[:] = [d for d in dirs if d not in RUN_FILES]
  for name in extra:
    path = os.path.join(root, name)
    if os.path.isfile(path):
      os.remove(path)
      removed.append(path)
  return removed


def latest_checkpoint_step(workdir: str) -> Optional[int]:
  """The newest checkpoint step under ``WORKDIR/checkpoints`` (None if none)."""
  steps = (
    [int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()]
    if os.path.isdir(os.path.join(workdir, "checkpoints"))
    else []
  )
  return max(steps) if steps else None


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except ValueError as e:
    raise WorkdirError(f"{path} is not valid JSON ({e}); start afresh with --overwrite") from None


def _now() -> str:
  return datetime.datetime.now().isoformat(timespec="seconds")


class RunDirectory:
  """The work directory of one run, as a context manager.

  On entry (process 0; the others learn the verdict through :func:`agree`):
  :func:`check_writable`, :func:`lock`, ``overwrite`` (:func:`clear`), and
  the config check against the run the directory holds (once it has a
  checkpoint).  :meth:`start`, called once the data is open, checks the
  data fingerprint and writes ``config.json`` and ``run.json``.  The lock
  is released on exit, also on an exception.

  Attributes:
    resumed_from: the newest checkpoint step found (None: a fresh run).
    changes: ``[(field, old, new)]`` this start changes (free fields and a
      raised ``num_steps``).
  """

  def __init__(self, workdir: str, config, *, overwrite: bool = False, say=None):
    self.workdir, self.config, self.overwrite = workdir, config, overwrite
    self.resumed_from: Optional[int] = None
    self.changes: List[Tuple[str, Any, Any]] = []
    self._record: Optional[dict] = None
    self._stack = contextlib.ExitStack()
    self._say = say or (lambda message: warnings.warn(message, stacklevel=3))

  def __enter__(self) -> "RunDirectory":
    try:
      agree(self._enter)
    except BaseException:
      self._stack.close()
      raise
    return self

  def __exit__(self, *exc):
    self._stack.close()
    return False

  def _enter(self):
    check_writable(self.workdir)
    self._stack.enter_context(lock(self.workdir))
    if self.overwrite:
      clear(self.workdir)
    self.resumed_from = latest_checkpoint_step(self.workdir)
    if self.resumed_from is None:
      return
    old = _read_json(os.path.join(self.workdir, "config.json"))
    if old is None:
      self._say(
        f"{self.workdir}: checkpoints but no config.json: the config "
        "of the run it holds cannot be checked"
      )
      return
    refused, self.changes = rerun_changes(old, self.config)
    if refused:
      raise ConfigMismatchError(
        f"work directory {self.workdir!r} holds a run (checkpoint at step "
        f"{self.resumed_from}) of another config: {describe(refused)}. "
        "Rerun with --overwrite (overwrite=True) to start afresh, or "
        "use another --workdir"
      )
    steps = [c for c in self.changes if c[0] == "num_steps"]
    if steps and self.config.schedule != "constant":
      self._say(
        f"{self.workdir}: num_steps raised from {steps[0][1]} to "
        f"{steps[0][2]}: training continues from step "
        f"{self.resumed_from} under the {self.config.schedule} "
        f"schedule of {steps[0][2]} steps (not the same as a fresh "
        f"{steps[0][2]}-step run; --overwrite for that)"
      )

  def start(self, *sources) -> None:
    """Checks the data against the run's (once it has a checkpoint) and
    writes ``config.json`` and ``run.json`` (process 0)."""
    agree(lambda: self._start(sources), "checking the data")

  def _start(self, sources):
    path = os.path.join(self.workdir, "run.json")
    record = (_read_json(path) if self.resumed_from is not None else None) or {}
    fingerprint = data_fingerprint(*sources) if sources else None
    old = record.get("data_fingerprint")
    if self.resumed_from is not None and old and fingerprint and old != fingerprint:
      raise ConfigMismatchError(
        f"work directory {self.workdir!r} holds a run (checkpoint at step "
        f"{self.resumed_from}) trained on other data (fingerprint {old} -> "
        f"{fingerprint}: another dataset, size, split or generator "
        "setting). Rerun with --overwrite (overwrite=True) to start afresh, "
        "or use another --workdir"
      )
    if (
      self.resumed_from is None
      or self.changes
      or not os.path.exists(os.path.join(self.workdir, "config.json"))
    ):
      with open(os.path.join(self.workdir, "config.json"), "w") as f:
        f.write(self.config.to_json(indent=2))
    record.setdefault("data_fingerprint", fingerprint)
    record.setdefault("starts", []).append(
      {
        "time": _now(),
        "resumed_from": self.resumed_from,
        "changed": {k: [a, b] for k, a, b in self.changes},
      }
    )
    self._record = record
    self._write_record()

  def _write_record(self) -> None:
    with open(os.path.join(self.workdir, "run.json"), "w") as f:
      json.dump(self._record, f, indent=1, default=str)

  @property
  def train_seconds(self) -> float:
    """Seconds spent training up to the newest checkpoint, over every start
    of the run (0 for a fresh run; read on process 0, 0 elsewhere)."""
    return float((self._record or {}).get("train_seconds", 0.0))

  def save_train_seconds(self, seconds: float) -> None:
    """Records the run's total training seconds in ``run.json`` (process 0;
    called with each checkpoint, so a resumed run counts on from there)."""
    if self._record is not None and _primary():
      self._record["train_seconds"] = round(float(seconds), 2)
      self._write_record()
