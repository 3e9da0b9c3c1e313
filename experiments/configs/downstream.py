r"""Downstream comparison: heads on one backbone per dataset, with baselines.

    python -m experiments.downstream --config=experiments/configs/downstream.py:quick
    python -m experiments.downstream                   # full size (GPU)
    python -m experiments.downstream --config.datasets=cifar10 --config.data_dir=DIR

Gives (quick, 2-core CPU, ~9 min): see the README's "Downstream" table.

Heads: TransFusion (JSD) and SupCon with all labels in the target, SimCLR
(InfoNCE) and TransFusion without labels (self-supervised); baselines: the
randomly initialised backbone with BatchNorm statistics of the data, and the
raw inputs.  Each dataset is one run of the main job in ``WORKDIR/<dataset>``.
"""

import ml_collections

from tfjax.config import base_config

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
  c = base_config()
  c.embed_dim = 64
  c.batch_size = 256
  c.num_steps = 1500
  c.warmup_steps = 100
  c.learning_rate = 2e-3
  c.head.num_layers = 3
  c.log_every = 50
  c.checkpoint_every = 500
  with c.unlocked():
    c.datasets = "digits,mnist1d"
    c.backbones = ml_collections.ConfigDict(
        {name: {"backbone": b, "backbone_kwargs": kw}
         for name, (b, kw) in BACKBONES.items()})
    c.runs = ml_collections.ConfigDict({
        "transfusion": {"loss": "jsd", "label_fraction": 1.0,
                        "labels_in_loss": True},
        "supcon": {"loss": "supcon", "label_fraction": 1.0,
                   "labels_in_loss": True},
        "simclr": {"loss": "info_nce"},
        "transfusion_ssl": {"loss": "jsd"},
    })
    c.compare = "transfusion,supcon,simclr,transfusion_ssl"
    c.seeds = 1      # runs per method: seeds seed, seed+1, ...
    c.random_baseline = True
    c.raw_baseline = True
  if arg in ("quick", "tiny"):
    c.num_steps = 150
    c.batch_size = 128
    c.warmup_steps = 15
    c.eval.finetune_fractions = (0.1, 1.0)
    c.eval.finetune_steps = 300
    c.eval.linear_steps = 300
  if arg == "tiny":  # smoke tests
    c.datasets = "digits"
    c.num_steps = 12
    c.warmup_steps = 2
    c.batch_size = 32
    c.eval.linear_steps = 0
    c.eval.finetune_fractions = ()
    c.eval.knn_k = 5
    c.write_plots = False
  elif arg not in ("", "quick"):
    raise ValueError(f"unknown config argument {arg!r}; use '', 'quick' or 'tiny'")
  return c
