"""Training metrics: clu's metric writers, with a JSON-lines writer of our own.

``metrics.jsonl`` holds one JSON object per logged step; it is always valid
JSON (a non-finite value is written as ``null`` and its name listed under
``"nonfinite"``), and a resumed run drops the lines past its checkpoint.
TensorBoard event files go to ``tensorboard/`` beside it.
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


def _jsonl_writer_class():
  from clu import metric_writers

  class JsonlWriter(metric_writers.MetricWriter):
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


def make_metric_writer(workdir: str, resume_step: int, *, tensorboard: bool = True):
  """``metrics.jsonl`` plus TensorBoard event files under ``workdir/tensorboard``."""
  from clu import metric_writers
  writers = [_jsonl_writer_class()(os.path.join(workdir, "metrics.jsonl"), resume_step)]
  if tensorboard:
    writers.append(metric_writers.SummaryWriter(os.path.join(workdir, "tensorboard")))
  return metric_writers.MultiWriter(writers)


def read_metrics(path: str):
  """The records of a ``metrics.jsonl`` file, in order."""
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]
