r"""Downstream comparison: the main job's methods on one backbone per dataset.

    python -m experiments.downstream --config=experiments/configs/downstream.py:quick
    python -m experiments.downstream                   # 5 seeds
    python -m experiments.downstream --config.datasets=cifar10 --config.data_dir=DIR

Gives (5 seeds, test split, 2-core CPU, 18 min): see docs/experiments.md "Downstream accuracy"
table — e.g. digits kNN: TransFusion (class targets) 0.989 ± 0.002, SupCon
0.992 ± 0.003, SimCLR 0.973 ± 0.003, self-supervised TransFusion
0.976 ± 0.006, random-init SmallCNN 0.936 ± 0.008, raw pixels 0.975.

The runs are the main job's (experiments/configs/default.py): TransFusion and
SupCon with all labels in the target, SimCLR and self-supervised TransFusion
without labels, each with the recipe chosen on MNIST-1D's validation split —
applied unchanged to the other datasets (digits is not tuned on: a check that
the recipes carry over), except that a run whose augmentation does not fit the
data (the signal augmentation on images) uses the data kind's default.  Baselines: the randomly initialised backbone with
BatchNorm statistics of the data, and the raw inputs.  Each dataset is one run
of the main job in ``WORKDIR/<dataset>``.
"""

import ml_collections

from experiments.configs import default

# Backbone per dataset (our choice): the smallest that fits the data's shape.
BACKBONES = {
  "digits": ("small_cnn", {"out_features": 128}),
  "mnist1d": ("cnn1d", {"out_features": 128}),
  "subspaces": ("mlp", {"hidden": (256,), "out_features": 128}),
  "cifar10": ("resnet18", {}),
  "cifar100": ("resnet18", {}),
  "mnist": ("small_cnn", {"out_features": 128}),
  "fashion_mnist": ("small_cnn", {"out_features": 128}),
}


def get_config(arg: str = ""):
  c = default.get_config("quick" if arg in ("quick", "tiny") else "")
  with c.unlocked():
    c.datasets = "digits,mnist1d"
    c.backbones = ml_collections.ConfigDict(
      {name: {"backbone": b, "backbone_kwargs": kw} for name, (b, kw) in BACKBONES.items()}
    )
  if arg == "tiny":  # smoke tests
    c.datasets = "digits"
    c.batch_size = 32
    c.warmup_steps = 2
    for run in c.runs.values():
      run.num_steps = 12
    c.eval.linear_steps = 0
    c.eval.finetune_fractions = ()
    c.eval.knn_k = 5
    c.write_plots = False
  elif arg not in ("", "quick"):
    raise ValueError(f"unknown config argument {arg!r}; use '', 'quick' or 'tiny'")
  return c
