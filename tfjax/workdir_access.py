"""Who may write a work directory: one process, one run at a time.

* **one writer at a time.**  A run holds an exclusive ``fcntl.flock`` on
  ``WORKDIR/.lock`` (:data:`LOCK_FILE`) while it works; a second run in the
  same directory fails at once (:class:`WorkdirBusyError`).  The lock goes
  with the process (a killed run leaves no stale lock), and is re-entrant
  within one thread.  Where ``fcntl`` does not exist (Windows) there is no
  lock.
* **checks before compute.**  :func:`check_writable` runs before any data
  is read.
* **one process decides.**  In a run of several processes only process 0
  touches the directory; the others learn its verdict through
  :func:`agree` (a broadcast), so every process stops together instead of
  waiting on a collective.

:class:`tfjax.workdir.RunDirectory` does all three on entry.

Example::

    >>> from tfjax import workdir_access
    >>> with workdir_access.lock("/tmp/run"):
    ...   ...                                  # no other run writes /tmp/run here
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import os
import warnings
from typing import Any, Dict, Iterator, List

import numpy as np

from tfjax.distributed import is_primary

__all__ = ["LOCK_FILE", "WorkdirError", "WorkdirBusyError", "agree", "check_writable", "lock"]

LOCK_FILE = ".lock"


class WorkdirError(RuntimeError):
  """The work directory cannot hold this run (see the subclasses)."""


class WorkdirBusyError(WorkdirError):
  """Another process is running in the same work directory."""


# ----------------------------------------------------------------------------
# Processes.
# ----------------------------------------------------------------------------
def agree(fn, what: str = "preparing the work directory"):
  """Runs ``fn()`` on process 0; every process raises if it raised.

  Returns ``fn()``'s value on process 0 (None elsewhere).  With one process
  this is just ``fn()``.  With several, process 0's outcome is broadcast, so
  the other processes stop at once (with a line pointing at process 0's
  error) instead of waiting on the next collective.
  """
  import jax

  error, out = None, None
  if is_primary():
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
