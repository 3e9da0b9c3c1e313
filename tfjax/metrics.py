"""Training metrics: clu's metric writers, with a JSON-lines writer of our own.

``metrics.jsonl`` holds one JSON object per logged step; it is always valid
JSON (a non-finite value is written as ``null`` and its name listed under
``"nonfinite"``), and a resumed run drops the lines past its checkpoint.
TensorBoard event files go to ``tensorboard/`` beside it: through
``clu.metric_writers`` where TensorFlow is installed (clu's writers import
it), else through TensorBoard's own event-file writer (scalars as
``simple_value``), so training needs no TensorFlow.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Mapping


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
      kept = []
      if os.path.exists(path):
        with open(path) as f:
          kept = [l for l in f if l.strip()
                  and json.loads(l).get("step", 0) <= resume_step]
      with open(path, "w") as f:
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

    def write_pointcloud(self, step, point_clouds, *, point_colors=None,
                         configs=None):
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
    values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v))
              for k, v in scalars.items()]
    self._writer.add_event(event_pb2.Event(
        wall_time=time.time(), step=int(step),
        summary=summary_pb2.Summary(value=values)))

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


def read_metrics(path: str):
  """The records of a ``metrics.jsonl`` file, in order."""
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]
