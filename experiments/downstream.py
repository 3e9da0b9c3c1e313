"""Experiment 4: downstream accuracy of TransFusion against SimCLR and SupCon.

    python -m experiments.downstream --quick          # digits + MNIST-1D, CPU minutes
    python -m experiments.downstream                  # full size
    python -m experiments.downstream --datasets cifar10 --data_dir ~/tensorflow_datasets

For each dataset, the heads of ``experiments/configs/downstream.py`` are
trained on the same backbone and evaluated on its (inductive) features with
weighted kNN, a linear probe and MLP fine-tuning; raw inputs and a randomly
initialised backbone are the baselines.  Each dataset is one run of the main
job (``experiments/train.py``) in ``WORKDIR/<dataset>``; this script merges
their tables into ``WORKDIR/results.md`` and ``downstream.png``.
"""

from __future__ import annotations

import argparse
import os
import sys

from experiments import train as main_job
from experiments.common import pyplot, workdir_for, write_results

CONFIG = os.path.join(os.path.dirname(__file__), "configs", "downstream.py")
# Backbone per dataset (our choice): the smallest that fits the data's shape.
BACKBONES = {"digits": ("small_cnn", {"out_features": 128}),
             "mnist1d": ("cnn1d", {"out_features": 128}),
             "subspaces": ("mlp", {"hidden": (256,), "out_features": 128}),
             "cifar10": ("resnet18", {}), "cifar100": ("resnet18", {}),
             "mnist": ("small_cnn", {"out_features": 128}),
             "fashion_mnist": ("small_cnn", {"out_features": 128})}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--datasets", default="digits,mnist1d")
  p.add_argument("--quick", action="store_true", help="few steps, CPU minutes")
  p.add_argument("--workdir", default=None)
  p.add_argument("--data_dir", default=None)
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
  args = p.parse_args(argv)
  workdir = workdir_for("downstream", args.workdir)
  all_rows = []
  for name in args.datasets.split(","):
    if name not in BACKBONES:
      raise ValueError(f"unknown dataset {name!r}; known: {sorted(BACKBONES)}")
    backbone, kwargs = BACKBONES[name]
    sets = [f"dataset={name}", f"backbone={backbone}", f"backbone_kwargs={kwargs!r}"]
    if args.data_dir:
      sets.append(f"data_dir={args.data_dir}")
    if args.quick:
      sets += ["num_steps=150", "batch_size=128", "warmup_steps=15",
               "eval.finetune_fractions=(0.1, 1.0)", "eval.finetune_steps=300",
               "eval.linear_steps=300"]
    rows = main_job.main(["--config", CONFIG, "--workdir", os.path.join(workdir, name),
                          "--no-progress"] + [a for s in sets + args.set for a in ("--set", s)])
    all_rows += [{"dataset": name, **r} for r in rows]

  metrics = [m for m in ("knn", "linear", "finetune@0.1", "finetune@0.5", "finetune@1")
             if any(m in r for r in all_rows)]
  table = write_results(workdir, "Downstream accuracy (test set)", all_rows,
                        ["dataset", "method"] + metrics + ["minutes"])
  plt = pyplot()
  datasets = list(dict.fromkeys(r["dataset"] for r in all_rows))
  fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 3.6),
                           squeeze=False)
  for ax, ds in zip(axes[0], datasets):
    rows = [r for r in all_rows if r["dataset"] == ds]
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
      ax.bar([j + i * width for j in range(len(metrics))],
             [r.get(m, 0.0) for m in metrics], width, label=r["method"])
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))])
    ax.set_xticklabels(metrics, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(ds)
  axes[0][-1].legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "downstream.png"), dpi=110)
  plt.close(fig)
  print(table)
  return all_rows


if __name__ == "__main__":
  main(sys.argv[1:])
