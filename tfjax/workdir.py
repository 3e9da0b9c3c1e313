"""A run's work directory: starting afresh, resuming, what it records.

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
* **one writer at a time, checks before compute.**  On entry a
  :class:`RunDirectory` checks that the directory is writable, takes its
  lock and, in a run of several processes, lets process 0 alone touch it
  (:mod:`tfjax.workdir_access`); the config and the data are
  :func:`tfjax.config.validate`'s.

Example::

    >>> from tfjax import workdir
    >>> with workdir.RunDirectory("/tmp/run", config) as run:
    ...   run.start(train_source, test_source)   # checks the data, writes config.json
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import warnings
from typing import Any, List, Optional, Sequence, Tuple

from tfjax.data.fingerprint import data_fingerprint
from tfjax.distributed import is_primary
from tfjax.rerun import describe, rerun_changes
from tfjax.workdir_access import WorkdirError, agree, check_writable, lock

__all__ = [
  "RUN_FILES",
  "ConfigMismatchError",
  "RunDirectory",
  "clear",
  "clear_tree",
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


class ConfigMismatchError(WorkdirError, ValueError):
  """The work directory holds a run of another config."""


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

  On entry (process 0; the others learn the verdict through
  :func:`tfjax.workdir_access.agree`):
  :func:`tfjax.workdir_access.check_writable`,
  :func:`tfjax.workdir_access.lock`, ``overwrite`` (:func:`clear`), and
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
    if self._record is not None and is_primary():
      self._record["train_seconds"] = round(float(seconds), 2)
      self._write_record()
