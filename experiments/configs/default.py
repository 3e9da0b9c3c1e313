"""Default main job: TransFusion vs SupCon vs SimCLR on offline MNIST-1D.

    python -m experiments.train

Same CNN1D backbone and projector for every head; TransFusion (JSD) and
SupCon see all training labels (the target's positives are same-class
samples), SimCLR none; a randomly initialised backbone and the raw inputs
are the baselines.  Expected on a 2-core CPU: see the README's "Main job".
"""

from tfjax.config import base_config

COMPARE = (
    {"loss": "jsd", "label_fraction": 1.0, "labels_in_loss": True},
    {"loss": "supcon", "label_fraction": 1.0, "labels_in_loss": True},
    {"loss": "info_nce"},
)
RANDOM_BASELINE = True
RAW_BASELINE = True


def get_config():
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
  return c
