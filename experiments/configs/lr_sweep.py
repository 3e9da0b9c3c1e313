"""Config of the CLOA learning-rate sweep (experiments/lr_sweep.py).

``get_config(dataset)`` returns the locked base config of one sweep run; the
script then sets ``loss``, ``learning_rate``, ``oar_weight`` and
``label_fraction`` per run.  Backbone per dataset (our choice, far smaller
than the paper's ResNet-18 except for CIFAR): digits → small_cnn,
mnist1d → cnn1d, cifar10/cifar100 → resnet18, subspaces(_tiny) → mlp.  SGD with momentum 0.9 and a
cosine schedule (the paper sweeps the learning rate of SGD; warm-up, decay
and sizes are our choice).
"""

from tfjax.config import base_config

BACKBONE = {
    "digits": ("small_cnn", {"channels": (32, 64, 128), "out_features": 128}),
    "mnist1d": ("cnn1d", {"out_features": 128}),
    "cifar10": ("resnet18", {}),
    "cifar100": ("resnet18", {}),
    # Synthetic vectors (fast; for smoke tests).
    "subspaces": ("mlp", {"hidden": (256,), "out_features": 128}),
    "subspaces_tiny": ("mlp", {"hidden": (32,), "out_features": 16}),
}


def get_config(dataset: str = "digits"):
  if dataset not in BACKBONE:
    raise ValueError(f"no lr-sweep backbone for dataset {dataset!r}; "
                     f"known: {sorted(BACKBONE)}")
  c = base_config()
  c.dataset = dataset
  c.backbone, kwargs = BACKBONE[dataset]
  c.backbone_kwargs = kwargs
  c.embed_dim = 64
  c.projector_hidden = (256,)
  c.loss = "info_nce"
  c.temperature = 0.1
  c.optimizer = "sgd"
  c.momentum = 0.9
  c.weight_decay = 1e-4
  c.schedule = "warmup_cosine"
  c.warmup_steps = 20
  c.batch_size = 128
  c.num_steps = 300
  c.num_devices = 1
  c.log_every = 25
  c.checkpoint_every = 100000  # only the final checkpoint
  c.eval.finetune_fractions = (0.1, 0.5, 1.0)
  c.eval.finetune_steps = 300
  c.eval.linear_steps = 300
  return c
