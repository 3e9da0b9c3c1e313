r"""Main job: TransFusion vs SupCon vs SimCLR on offline MNIST-1D, with baselines.

    python -m experiments.train                       # this file: 400 steps a head
    python -m experiments.train --config=experiments/configs/default.py:quick

Gives (2-core CPU, ~2 min; the README's "Main job" table): test kNN of the
backbone features TransFusion 0.62, SupCon 0.62, SimCLR 0.54, random-init
CNN1D with BatchNorm statistics of the data 0.69, raw inputs 0.52.

Every head trains the same CNN1D backbone and projector; TransFusion (JSD)
and SupCon see all training labels (same-class samples are positives),
SimCLR none.  ``runs`` holds each run's overrides of the fields below;
``compare`` picks and orders them (``--config.compare=supcon,simclr``).
"""

import ml_collections

from tfjax.config import base_config


def get_config(arg: str = ""):
  c = base_config()
  c.dataset = "mnist1d"
  c.backbone = "cnn1d"
  c.backbone_kwargs = {"out_features": 128}
  c.embed_dim = 64
  c.batch_size = 128
  c.num_steps = 400
  c.warmup_steps = 40
  c.learning_rate = 2e-3
  c.augment_strength = 1.0
  c.head.num_layers = 3
  c.log_every = 25
  c.checkpoint_every = 200
  with c.unlocked():
    c.runs = ml_collections.ConfigDict({
        "transfusion": {"loss": "jsd", "label_fraction": 1.0,
                        "labels_in_loss": True},
        "supcon": {"loss": "supcon", "label_fraction": 1.0,
                   "labels_in_loss": True},
        "simclr": {"loss": "info_nce"},
    })
    c.runs.unlock()  # add runs with --config.runs.NAME... in a config file
    c.compare = "transfusion,supcon,simclr"
    c.seeds = 1      # runs per method: seeds seed, seed+1, ...
    c.random_baseline = True
    c.raw_baseline = True
  if arg == "quick":
    c.num_steps = 150
    c.warmup_steps = 15
    c.eval.linear_steps = 200
    c.eval.finetune_steps = 200
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use '' or 'quick'")
  return c
