"""Progress bars and messages of a run (tqdm on the primary process)."""

from __future__ import annotations

import sys

from tfjax import distributed


class Progress:
  """tqdm on the primary process; a no-op elsewhere or when disabled."""

  def __init__(self, enabled: bool):
    self.enabled = enabled

  def warn(self, message: str):
    """Always shown (on the primary process), with or without progress bars."""
    if self.enabled:
      self.say(message)
    elif distributed.is_primary():
      print(message, file=sys.stderr, flush=True)

  def bar(self, **kwargs):
    if not self.enabled:
      return None
    from tqdm.auto import tqdm

    return tqdm(dynamic_ncols=True, **kwargs)

  def say(self, message: str):
    if self.enabled:
      from tqdm.auto import tqdm

      tqdm.write(message)
