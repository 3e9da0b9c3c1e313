"""Resumable checkpoints with orbax: save a pytree every N steps, restore the latest.

A run that is killed and started again with the same command restores the
last checkpoint and, because the batches and keys are pure functions of the
step (``tfjax.data.pipeline.batch_indices`` / ``step_key``), ends with the same
parameters as an uninterrupted run.

Never a silent wrong restore:

* :meth:`Checkpointer.save` refuses a tree with a non-finite float
  (``FloatingPointError`` naming the leaves), so a diverged run never
  leaves a NaN checkpoint behind;
* :meth:`Checkpointer.restore_latest` tries the checkpoints newest first: an
  unreadable (truncated, corrupt) or non-finite one is moved aside to
  ``checkpoints/<step>.unreadable`` with a one-line
  :class:`CheckpointWarning`, and the previous one is restored
  (``max_to_keep=2`` keeps one); when none is readable,
  :class:`CheckpointError` says so;
* opening a :class:`Checkpointer` removes the temporary directories
  (``*.orbax-checkpoint-tmp*``) a killed write leaves behind;
* a full disk raises ``OSError(ENOSPC)`` naming the step directory, and
  orbax's own error logs of a failed save or restore are held back, so the
  caller's one line is all that is printed.

The primary process (``jax.process_index() == 0``) alone removes or moves
directories.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import logging
import os
import shutil
import signal
import sys
import threading
import warnings
from typing import Any, List, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["Checkpointer", "CheckpointError", "CheckpointWarning", "nonfinite_leaves", "one_line"]

TMP_PATTERN = "*.orbax-checkpoint-tmp*"


class CheckpointError(RuntimeError):
  """No checkpoint of the directory can be restored."""


class CheckpointWarning(UserWarning):
  """A checkpoint was skipped (unreadable or not finite)."""


def nonfinite_leaves(tree: Any) -> List[str]:
  """Paths (``jax.tree_util.keystr``) of the float leaves of ``tree`` that
  hold a NaN or an infinity (host arrays: the tree is fetched first)."""
  bad = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]:
    leaf = np.asarray(leaf)
    if np.issubdtype(leaf.dtype, np.inexact) and not np.isfinite(leaf).all():
      bad.append(jax.tree_util.keystr(path))
  return bad


@contextlib.contextmanager
def _quiet():
  """orbax's worker threads log each failed write or read as an ERROR with
  its traceback (absl), and so does asyncio for callbacks of a failed
  restore; the failure itself reaches the caller, which reports it in one
  line.  Only messages of ERROR level and below are held back, only here."""
  loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
  levels = [logger.level for logger in loggers]
  for logger in loggers:
    logger.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    for logger, level in zip(loggers, levels):
      logger.setLevel(level)


@contextlib.contextmanager
def _sigint_deferred():
  """Ctrl-C (SIGINT) held until the block ends, then raised as KeyboardInterrupt.

  A KeyboardInterrupt raised inside orbax while its threads write or read can
  leave the process waiting on them for ever; deferred, a checkpoint is
  whole or absent.  Only the main thread receives signals, so elsewhere this
  does nothing.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  received = []
  previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
  if previous is None:  # a handler not set from Python
    previous = signal.default_int_handler
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
  if received:
    raise KeyboardInterrupt


def _closed_loop_error(value) -> bool:
  """tensorstore's callback into orbax's closed event loop."""
  return isinstance(value, RuntimeError) and str(value) == "Event loop is closed"


class _LateAsyncioErrors(logging.Filter):
  """asyncio's records of a failed write's leftovers: closed-loop callbacks,
  and the other writes to the same full disk."""

  def filter(self, record):
    value = record.exc_info[1] if record.exc_info else None
    return not (_closed_loop_error(value) or (isinstance(value, Exception) and _no_space(value)))


class _LateErrorsDropped:
  """What orbax's leftovers of a failed save or restore report, held back
  from :meth:`start` to :meth:`stop`.

  After a failed write or restore, operations that orbax started complete in
  tensorstore's threads and call back into the asyncio loop orbax has closed;
  tensorstore reports each failed callback as unraisable or through
  ``PyErr_Print`` (a bare traceback on stderr), sometimes before the failure
  itself reaches us.  The write tasks that failed beside the one orbax
  raises are logged by asyncio ("Task exception was never retrieved") when
  they are collected, as late as the interpreter's exit.  Held back here:
  ``sys.unraisablehook`` and ``sys.excepthook`` without "Event loop is
  closed" errors, and asyncio's log records of those and of no-space errors.
  They say nothing the one-line report does not.
  """

  def __init__(self):
    self._saved = None  # the hooks to put back
    self._ours = None
    self._filter = _LateAsyncioErrors()

  def start(self) -> None:
    if self._saved is not None:
      return
    unraisable, excepthook = self._saved = (sys.unraisablehook, sys.excepthook)

    def unraisablehook(info):
      if not _closed_loop_error(info.exc_value):
        unraisable(info)

    def quiet_excepthook(kind, value, tb):
      if not _closed_loop_error(value):
        excepthook(kind, value, tb)

    self._ours = (unraisablehook, quiet_excepthook)
    sys.unraisablehook, sys.excepthook = self._ours
    logging.getLogger("asyncio").addFilter(self._filter)

  def stop(self) -> None:
    if self._saved is None:
      return
    if (sys.unraisablehook, sys.excepthook) == self._ours:
      sys.unraisablehook, sys.excepthook = self._saved
    logging.getLogger("asyncio").removeFilter(self._filter)
    self._saved = self._ours = None


def _no_space(error: BaseException) -> bool:
  # tensorstore reports a full disk as ValueError("RESOURCE_EXHAUSTED: ...
  # No space left on device [os_error_code='28']").
  return (
    isinstance(error, OSError) and error.errno == errno.ENOSPC
  ) or "No space left on device" in str(error)


def one_line(error: BaseException) -> str:
  """``"Type: message"`` of ``error`` on one line, at most 200 characters of message."""
  text = " ".join(str(error).split())
  text = text if len(text) <= 200 else text[:197] + "..."
  return f"{type(error).__name__}: {text}"


class Checkpointer:
  """Keeps the last ``max_to_keep`` checkpoints of a pytree under ``directory``.

  Saving is synchronous (our choice: a test or a pre-emption must find the
  checkpoint complete once ``save`` returns).

  Example::

      >>> ckpt = Checkpointer("/tmp/run/checkpoints")
      >>> ckpt.save(100, state)
      >>> state = ckpt.restore_latest(template=state)  # None if nothing saved
  """

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    self.max_to_keep = max_to_keep
    self.removed_tmp = self._remove_tmp() if jax.process_index() == 0 else []
    self._manager = self._open()
    # Dropped during each save and restore; after a failed restore, until
    # close(); after a failed write, for good.
    self._late_errors = _LateErrorsDropped()
    self._failed = self._failed_write = False

  def _open(self):
    return ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=self.max_to_keep, create=True, enable_async_checkpointing=False
      ),
    )

  def _remove_tmp(self) -> List[str]:
    """Removes what killed writes left: ``*.orbax-checkpoint-tmp*`` directories
    (at the top and inside step directories)."""
    stale = sorted(
      glob.glob(os.path.join(self.directory, TMP_PATTERN))
      + glob.glob(os.path.join(self.directory, "*", TMP_PATTERN))
    )
    for path in stale:
      shutil.rmtree(path, ignore_errors=True)
    return stale

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> List[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, tree: Any) -> None:
    """Writes ``tree`` as checkpoint ``step``; raises FloatingPointError
    (writing nothing) if a float leaf is not finite, and
    ``OSError(ENOSPC)`` naming the step directory when the disk is full
    (what was written of it is removed when the directory is next opened)."""
    # Host numpy copies: a pmap output is a host-local array that orbax
    # refuses to write in a multi-process run (only process 0 writes numpy).
    tree = jax.device_get(tree)
    bad = nonfinite_leaves(tree)
    if bad:
      raise FloatingPointError(f"not writing checkpoint {int(step)}: {_names(bad)} not finite")
    self._late_errors.start()
    try:
      with _sigint_deferred(), _quiet():
        self._manager.save(int(step), args=ocp.args.StandardSave(tree), force=True)
        self._manager.wait_until_finished()
    except BaseException as e:  # a full disk: OSError, one line; Ctrl-C as it is
      # orbax's writer threads fail their late callbacks on the closed
      # event loop, for the rest of the process: no tracebacks for those.
      self._failed = self._failed_write = True
      if isinstance(e, Exception) and _no_space(e):
        raise OSError(
          errno.ENOSPC, "No space left on device", os.path.join(self.directory, str(int(step)))
        ) from None
      raise
    finally:
      if not self._failed:
        self._late_errors.stop()

  def restore_latest(self, template: Any) -> Optional[Any]:
    """The newest readable checkpoint, restored into ``template``'s structure.

    None when there is no checkpoint.  A checkpoint that fails to restore
    or holds a non-finite float is skipped with a one-line
    :class:`CheckpointWarning` (and moved aside to ``<step>.unreadable``);
    :class:`CheckpointError` when none is left.
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      return None
    host_template = jax.device_get(template)
    skipped = []
    self._late_errors.start()
    try:
      return self._restore_newest_readable(steps, host_template, skipped)
    finally:
      if not self._failed:
        self._late_errors.stop()

  def _restore_newest_readable(self, steps, host_template, skipped):
    for step in steps:
      try:
        with _sigint_deferred(), _quiet():
          restored = self._manager.restore(step, args=ocp.args.StandardRestore(host_template))
        bad = nonfinite_leaves(restored)
        if bad:
          raise FloatingPointError(f"{_names(bad)} not finite")
      except Exception as e:  # noqa: BLE001  (any failure: try the previous one)
        self._failed = True
        reason = one_line(e)
        skipped.append(f"step {step}: {reason}")
        older = [s for s in steps if s < step]
        warnings.warn(
          f"checkpoint {step} in {self.directory} cannot be restored "
          f"({reason}); "
          + (f"falling back to checkpoint {older[0]}" if older else "no older checkpoint"),
          CheckpointWarning,
          stacklevel=2,
        )
        continue
      if skipped:
        self._set_aside(steps[: len(skipped)])
      return jax.tree.map(jax.numpy.asarray, restored)
    raise CheckpointError(
      f"no checkpoint in {self.directory} can be restored ("
      + "; ".join(skipped)
      + "); start afresh with --overwrite "
      "(overwrite=True)"
    )

  def _set_aside(self, steps: List[int]) -> None:
    """Moves unreadable step directories out of orbax's sight (primary
    process), so that the next save of that step and the clean-up of old
    checkpoints see only readable ones."""
    if jax.process_index() == 0:
      for step in steps:
        src = os.path.join(self.directory, str(step))
        dst, k = f"{src}.unreadable", 1
        while os.path.exists(dst):
          dst, k = f"{src}.unreadable{k}", k + 1
        if os.path.isdir(src):
          os.rename(src, dst)
    self._manager.close()
    self._manager = self._open()

  def close(self) -> None:
    self._manager.close()
    if not self._failed_write:
      self._late_errors.stop()
      self._failed = False


def _names(paths: List[str], n: int = 3) -> str:
  more = f" and {len(paths) - n} more" if len(paths) > n else ""
  return ", ".join(paths[:n]) + more
