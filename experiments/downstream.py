"""Downstream accuracy of TransFusion against SimCLR and SupCon, per dataset.

    python -m experiments.downstream --config=experiments/configs/downstream.py:quick
    python -m experiments.downstream                    # full size
    python -m experiments.downstream --config.datasets=cifar10 --config.data_dir=DIR

For each dataset of ``config.datasets`` the runs of ``config.compare`` are
trained on that dataset's backbone (``config.backbones``) by the main job
(:func:`experiments.runs.compare`) in ``WORKDIR/<dataset>`` and evaluated on
the backbone's (inductive) features with weighted kNN, a linear probe and MLP
fine-tuning, beside the fair random backbone and the raw inputs.  This script
merges their tables into ``WORKDIR/results.md`` and ``downstream.png``.  A
rerun resumes every run from its checkpoints (a changed config is refused,
naming the fields); ``--overwrite`` starts afresh.
"""

from __future__ import annotations

import os
import sys

from experiments.common import cli
from experiments.report import plot_accuracy, write_results
from experiments.runs import compare


def dataset_config(config, name: str):
  """The main-job config of one dataset: its backbone and ``dataset``."""
  if name not in config.backbones:
    raise ValueError(f"no backbone for dataset {name!r}; known: {sorted(config.backbones)}")
  c = config.copy_and_resolve_references()
  c.dataset = name
  c.backbone = config.backbones[name].backbone
  c.backbone_kwargs = dict(config.backbones[name].backbone_kwargs)
  return c


def run(config, workdir: str, *, progress: bool = True):
  names = [n.strip() for n in config.datasets.split(",") if n.strip()]
  configs = [dataset_config(config, n) for n in names]  # all checked first
  rows = []
  for name, c in zip(names, configs):
    rows += [
      {"dataset": name, **r} for r in compare(c, os.path.join(workdir, name), progress=progress)
    ]
  report(config, workdir, rows)
  return rows


def report(config, workdir: str, rows) -> None:
  """``results.md`` (the merged table), ``results.json``, ``downstream.png``
  (one panel per dataset)."""
  metrics = [
    m
    for m in ("knn", "linear", "finetune@0.1", "finetune@0.5", "finetune@1", "knn_head")
    if any(m in r for r in rows)
  ]
  table = write_results(
    workdir,
    "Downstream accuracy (test set)",
    rows,
    ["dataset", "method"] + metrics + ["steps", "seeds", "minutes"],
    f"Mean ± std over {config.seeds} seed(s); steps: each "
    "run's own; minutes: its seeds' training time (train_seconds).",
  )
  datasets = dict.fromkeys(r["dataset"] for r in rows)
  plot_accuracy(
    {d: [r for r in rows if r["dataset"] == d] for d in datasets},
    metrics,
    os.path.join(workdir, "downstream.png"),
  )
  print(table)


def main(argv=None):
  return cli(run, "downstream", argv, __doc__)


if __name__ == "__main__":
  main(sys.argv[1:])
