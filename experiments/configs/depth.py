r"""Fusion depth under the validated recipes (experiments/depth.py).

    python -m experiments.depth --noprogress                                  # 5 seeds
    python -m experiments.depth --config=experiments/configs/depth.py:tiny    # smoke test

Gives (5 seeds, 60 runs, 79 min on the shared 2-core machine; validation kNN / linear of the
backbone, mean ± std; random-init CNN1D 0.688 ± 0.018 / 0.875 ± 0.006; docs/experiments.md,
"Fusion depth") —

    L                          1              2              3              5
    class targets, learned     0.974 / 0.978  0.971 / 0.976  0.964 / 0.969  0.756 / 0.905
    class targets, none        0.977 / 0.976  0.974 / 0.972  0.947 / 0.964  0.941 / 0.962
    self-supervised, none      0.912 / 0.939  0.918 / 0.949  0.921 / 0.947  0.901 / 0.933

The main job's two TransFusion runs with their registry recipes
(``tfjax.methods``; docs/recipes.md): ``transfusion`` (class targets: every
training label in the JSD target, learned LayerNorm + Q, K truncated block,
800 steps) and ``transfusion_ssl`` (self-supervised: only the two views of a
sample are positives, signal augmentation, parameter-free truncated block,
1600 steps).  Each is trained with ``head.num_layers`` = L for every L of
``depths`` (L − 1 fusion blocks, then the truncated block) and each head form
of ``forms.<run>`` (``head.final_projection``: ``learned`` = LayerNorm + Q, K;
``none`` = no parameters), with ``seeds`` seeds, on 80 % of the training
split; every number is measured on the held-out, class-balanced 20 %
(``validation_fraction``; the test split is never read).  The self-supervised
run has only the parameter-free form: learned Q, K die (uniform rows) in every
self-supervised setting of the recipe sweeps.

The experiment's own fields: ``depths``, ``forms`` (per run, comma-separated),
``probe_batch`` (the validation batch the mechanism is measured on: its first
``probe_batch`` examples, the training batch size).
"""

import ml_collections

from experiments.configs import default


def get_config(arg: str = ""):
  c = default.get_config()
  c.validation_fraction = 0.2
  c.compare = "transfusion,transfusion_ssl"
  c.eval.finetune_fractions = ()  # kNN and linear probes of the backbone
  c.raw_baseline = False
  with c.unlocked():
    c.depths = (1, 2, 3, 5)
    c.forms = ml_collections.ConfigDict({"transfusion": "learned,none", "transfusion_ssl": "none"})
    c.probe_batch = 128
  if arg == "tiny":  # seconds: every code path once, on a small MLP
    c.dataset = "subspaces_tiny"
    c.backbone = "mlp"
    c.backbone_kwargs = {"hidden": (32,), "out_features": 16}
    c.embed_dim = 8
    c.projector_hidden = (32,)
    c.batch_size = 24
    c.eval.knn_k = 5
    c.seeds = 1
    c.depths = (1, 2)
    c.forms.transfusion = "none"
    for name in ("transfusion", "transfusion_ssl"):
      c.runs[name].num_steps = 4
    c.warmup_steps = 2
    c.log_every = 2
    c.checkpoint_every = 4
    c.eval.linear_steps = 5
    c.probe_batch = 12  # the whole validation split (20 % of 60)
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use '' or 'tiny'")
  return c
