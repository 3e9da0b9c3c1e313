"""Default main job: TransFusion vs SimCLR vs raw inputs on offline MNIST-1D.

    python -m experiments.train

Expected (2-core CPU, see README): filled in from the measured run.
"""

from tfjax.config import base_config

COMPARE = ("jsd", "info_nce")
RAW_BASELINE = True


def get_config():
  c = base_config()
  c.dataset = "mnist1d"
  c.backbone = "cnn1d"
  c.backbone_kwargs = {"out_features": 128}
  c.embed_dim = 64
  c.batch_size = 256
  c.num_steps = 1000
  c.learning_rate = 2e-3
  c.augment_strength = 1.0
  c.head.num_layers = 3
  return c
