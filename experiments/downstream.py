"""Downstream accuracy of TransFusion against SimCLR and SupCon, per dataset.

    python -m experiments.downstream --config=experiments/configs/downstream.py:quick
    python -m experiments.downstream                    # full size
    python -m experiments.downstream --config.datasets=cifar10 --config.data_dir=DIR

For each dataset of ``config.datasets`` the runs of ``config.compare`` are
trained on that dataset's backbone (``config.backbones``) by the main job
(:func:`experiments.train.run`) in ``WORKDIR/<dataset>`` and evaluated on
the backbone's (inductive) features with weighted kNN, a linear probe and MLP
fine-tuning, beside the fair random backbone and the raw inputs.  This script
merges their tables into ``WORKDIR/results.md`` and ``downstream.png``.  A
rerun resumes every run from its checkpoints (a changed config is refused,
naming the fields); ``--overwrite`` starts afresh.
"""

from __future__ import annotations

import json
import os
import sys

from experiments import train as main_job
from experiments.common import accuracy_bars, cli, pyplot, write_results


def dataset_config(config, name: str):
  """The main-job config of one dataset: its backbone and ``dataset``."""
  if name not in config.backbones:
    raise ValueError(f"no backbone for dataset {name!r}; known: "
                     f"{sorted(config.backbones)}")
  c = config.copy_and_resolve_references()
  c.dataset = name
  c.backbone = config.backbones[name].backbone
  c.backbone_kwargs = dict(config.backbones[name].backbone_kwargs)
  return c


def run(config, workdir: str, *, progress: bool = True):
  names = [n.strip() for n in config.datasets.split(",") if n.strip()]
  configs = [dataset_config(config, n) for n in names]  # all checked first
  all_rows = []
  for name, c in zip(names, configs):
    rows = main_job.run(c, os.path.join(workdir, name), progress=progress)
    all_rows += [{"dataset": name, **r} for r in rows]

  metrics = [m for m in ("knn", "linear", "finetune@0.1", "finetune@0.5", "finetune@1",
                         "knn_head") if any(m in r for r in all_rows)]
  table = write_results(workdir, "Downstream accuracy (test set)",
                        [main_job.formatted(r) for r in all_rows],
                        ["dataset", "method"] + metrics + ["seeds", "minutes"],
                        f"Mean ± std over {config.seeds} seed(s).")
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(all_rows, f, indent=2)
  plot(all_rows, metrics, os.path.join(workdir, "downstream.png"))
  print(table)
  return all_rows


def plot(all_rows, metrics, path):
  """One panel per dataset: grouped bars per metric; one legend outside."""
  plt = pyplot()
  datasets = list(dict.fromkeys(r["dataset"] for r in all_rows))
  fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 3.6),
                           squeeze=False)
  for ax, ds in zip(axes[0], datasets):
    accuracy_bars(ax, [r for r in all_rows if r["dataset"] == ds], metrics,
                  f"{ds} (knn_head: the head's output; others: backbone)")
  axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  fig.tight_layout()
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)


def main(argv=None):
  return cli(run, "downstream", argv, __doc__)


if __name__ == "__main__":
  main(sys.argv[1:])
