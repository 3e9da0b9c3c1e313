"""Training metrics: clu's metric writers, with a JSON-lines writer of our own.

``metrics.jsonl`` holds one JSON object per logged step; it is always valid
JSON (a non-finite value is written as ``null`` and its name listed under
``"nonfinite"``), and a resumed run drops the lines past its checkpoint.
A line that is not a record (appended garbage, a truncated write, a JSON
value other than an object with an integer ``"step"``) never stops a run:
readers skip it with one :class:`MetricsWarning` naming the file and line,
and a resumed run moves it, byte for byte, to ``metrics.jsonl.damaged``.
TensorBoard event files go to ``tensorboard/`` beside it: through
``clu.metric_writers`` where TensorFlow is installed (clu's writers import
it), else through TensorBoard's own event-file writer (scalars as
``simple_value``), so training needs no TensorFlow.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from typing import Any, Dict, List, Mapping, Tuple


class MetricsWarning(UserWarning):
  """Lines of a ``metrics.jsonl`` that are not records were skipped."""


def _record(raw: bytes):
  """(record, None) for a record line, (None, why) for a damaged one."""
  try:
    value = json.loads(raw.decode("utf-8"))
  except UnicodeDecodeError:
    return None, "not UTF-8 text"
  except ValueError as e:
    return None, f"not JSON ({e.msg}, column {e.colno})"
  if not isinstance(value, dict):
    return None, f"a JSON {type(value).__name__}, not an object"
  step = value.get("step")
  if not isinstance(step, int) or isinstance(step, bool):
    return None, "no integer \"step\""
  return value, None


def _parse(path: str) -> Tuple[List[Tuple[bytes, Dict[str, Any]]], List[Tuple[int, bytes, str]]]:
  """The record lines of ``path`` as (line, record) and the damaged ones as
  (1-based line number, line, why); blank lines are neither."""
  with open(path, "rb") as f:
    lines = f.read().split(b"\n")
  records, damaged = [], []
  for number, raw in enumerate(lines, 1):
    if not raw.strip():
      continue
    record, why = _record(raw)
    if record is None:
      damaged.append((number, raw, why))
    else:
      records.append((raw, record))
  return records, damaged


def _warn_damaged(path: str, damaged, consequence: str) -> None:
  if not damaged:
    return
  shown = "; ".join(f"line {n}: {why}" for n, _, why in damaged[:3])
  more = f"; and {len(damaged) - 3} more" if len(damaged) > 3 else ""
  warnings.warn(
    f"{path}: {len(damaged)} line(s) are not metric records ({shown}{more}); {consequence}",
    MetricsWarning,
    stacklevel=3,
  )


def _finite_record(step: int, scalars: Mapping[str, Any]) -> Dict[str, Any]:
  record, bad = {"step": int(step)}, []
  for k, v in scalars.items():
    v = float(v)
    if math.isfinite(v):
      record[k] = v
    else:
      record[k] = None
      bad.append(k)
  if bad:
    record["nonfinite"] = bad
  return record


def _clu_writers():
  """``clu.metric_writers``, or None where it cannot be imported (no TensorFlow)."""
  try:
    from clu import metric_writers
  except ImportError:
    return None
  return metric_writers


def _jsonl_writer_class():
  metric_writers = _clu_writers()
  base = object if metric_writers is None else metric_writers.MetricWriter

  class JsonlWriter(base):
    """Scalars as one JSON object per step; on resume, lines past ``resume_step`` go.

    Always valid JSON: a non-finite value is written as ``null`` and its name
    listed under ``"nonfinite"``.
    """

    def __init__(self, path: str, resume_step: int = 0):
      self.path = path
      kept, damaged = [], []
      if os.path.exists(path):
        records, damaged = _parse(path)
        kept = [raw + b"\n" for raw, r in records if r["step"] <= resume_step]
      if damaged:  # kept aside before the file is rewritten without them
        aside = path + ".damaged"
        with open(aside, "ab") as f:
          f.writelines(raw + b"\n" for _, raw, _ in damaged)
        _warn_damaged(path, damaged, f"moved to {aside}")
      with open(path, "wb") as f:
        f.writelines(kept)

    def write_scalars(self, step, scalars):
      with open(self.path, "a") as f:
        f.write(json.dumps(_finite_record(step, scalars), allow_nan=False) + "\n")

    def write_summaries(self, step, values, metadata=None):
      pass

    def write_images(self, step, images):
      pass

    def write_videos(self, step, videos):
      pass

    def write_audios(self, step, audios, *, sample_rate):
      pass

    def write_texts(self, step, texts):
      pass

    def write_histograms(self, step, arrays, num_buckets=None):
      pass

    def write_pointcloud(self, step, point_clouds, *, point_colors=None, configs=None):
      pass

    def write_hparams(self, hparams):
      pass

    def flush(self):
      pass

    def close(self):
      pass

  return JsonlWriter


class EventFileScalarWriter:
  """Scalars as TensorBoard event files, with TensorBoard's own writer (no TensorFlow)."""

  def __init__(self, logdir: str):
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    os.makedirs(logdir, exist_ok=True)
    self._writer = EventFileWriter(logdir)

  def write_scalars(self, step, scalars):
    import time
    from tensorboard.compat.proto import event_pb2, summary_pb2

    values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
    self._writer.add_event(
      event_pb2.Event(
        wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)
      )
    )

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


class _Writers:
  """Several writers as one (``clu.metric_writers.MultiWriter``'s role)."""

  def __init__(self, writers):
    self._writers = writers

  def write_scalars(self, step, scalars):
    for w in self._writers:
      w.write_scalars(step, scalars)

  def flush(self):
    for w in self._writers:
      w.flush()

  def close(self):
    for w in self._writers:
      w.close()


def make_metric_writer(workdir: str, resume_step: int, *, tensorboard: bool = True):
  """``metrics.jsonl`` plus TensorBoard event files under ``workdir/tensorboard``."""
  metric_writers = _clu_writers()
  writers = [_jsonl_writer_class()(os.path.join(workdir, "metrics.jsonl"), resume_step)]
  logdir = os.path.join(workdir, "tensorboard")
  if metric_writers is None:
    if tensorboard:
      writers.append(EventFileScalarWriter(logdir))
    return _Writers(writers)
  if tensorboard:
    writers.append(metric_writers.SummaryWriter(logdir))
  return metric_writers.MultiWriter(writers)


def read_metrics(path: str) -> List[Dict[str, Any]]:
  """The records of a ``metrics.jsonl`` file, in order.

  A line that is not a record (not UTF-8, not JSON, not an object with an
  integer ``"step"``) is skipped with one :class:`MetricsWarning` naming
  ``path`` and the line numbers (1-based, blank lines counted); the file is
  not changed.
  """
  records, damaged = _parse(path)
  _warn_damaged(path, damaged, "skipped")
  return [r for _, r in records]
