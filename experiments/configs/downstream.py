"""Downstream comparison (experiment 4); dataset and backbone are set per run.

    python -m experiments.downstream --quick

Heads on one backbone: TransFusion (JSD) and SupCon with all labels in the
target, SimCLR (InfoNCE) and TransFusion without labels (self-supervised);
baselines: raw inputs and the randomly initialised backbone.  Expected: see
the README's "Experiments" table.
"""

from tfjax.config import base_config

COMPARE = (
    {"loss": "jsd", "label_fraction": 1.0, "labels_in_loss": True},
    {"loss": "supcon", "label_fraction": 1.0, "labels_in_loss": True},
    {"loss": "info_nce"},
    {"loss": "jsd"},
)
RANDOM_BASELINE = True
RAW_BASELINE = True


def get_config():
  c = base_config()
  c.embed_dim = 64
  c.batch_size = 256
  c.num_steps = 1500
  c.warmup_steps = 100
  c.learning_rate = 2e-3
  c.head.num_layers = 3
  c.log_every = 50
  c.checkpoint_every = 500
  return c
