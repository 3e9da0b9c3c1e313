r"""CLOA's learning-rate sweep (experiments/lr_sweep.py): base losses ± OAR over an lr grid.

    python -m experiments.lr_sweep --config=experiments/configs/lr_sweep.py:quick --noprogress

Gives (2-core CPU, 11 min wall; digits, small_cnn, 200 SGD steps of batch
128 per run, lr ∈ {1e-3, 0.0316, 1}): best fine-tuning accuracy over the
sweep at 10 / 50 / 100 % labels, ours vs the CLOA draft's Table 3
(CIFAR-10, ResNet-18):

==============  =================  =================  =================  =================
loss            ours               ours + OAR         paper              paper + OAR
==============  =================  =================  =================  =================
InfoNCE         .908/.972/.958     .906/.958/.967     .315/.407/.438     .686/.694/.701
DCL             .908/.969/.958     .914/.956/.964     .351/.429/.488     .652/.663/.679
Barlow Twins    .850/.950/.958     .861/.950/.958     .415/.502/.539     .676/.697/.700
VICReg          .889/.953/.956     .883/.956/.961     .420/.467/.524     .663/.673/.691
==============  =================  =================  =================  =================

The random-init small_cnn (BatchNorm statistics of the data) gives
.903/.956/.958, kNN .936: on digits no trained run beats it clearly.  At
lr = 1 InfoNCE collapses (projector-embedding variance 0.086, backbone
features 0.040, finetune@0.1 0.572; paper: ≈ .05 and .10) and OAR does not
prevent it (variance 0.071, finetune@0.1 0.542; paper: ≈ .89 and .665).
VICReg, with and without OAR, diverges at lr ≥ 0.0316 (non-finite loss,
reported as such).

    python -m experiments.lr_sweep --config=experiments/configs/lr_sweep.py:tiny    # smoke test
    python -m experiments.lr_sweep                                       # digits, 1e-7 … 1
    python -m experiments.lr_sweep --config=experiments/configs/lr_sweep.py:cifar10 \
        --config.data_dir=/path/to/tfds

``get_config(arg)``: ``arg`` is a size (``tiny``, ``quick``; none = full),
a dataset, or both as ``SIZE,DATASET`` (``quick,mnist1d``).  The dataset picks
the backbone (our choice, far smaller than the paper's ResNet-18 except for
CIFAR): digits → small_cnn, mnist1d → cnn1d, cifar10/cifar100 → resnet18,
subspaces(_tiny) → mlp; choose the dataset through ``arg`` (setting
``--config.dataset`` alone keeps the backbone).  ``tiny`` defaults to the
offline ``subspaces_tiny`` vectors (seconds).  SGD with momentum 0.9 and a
cosine schedule (the paper sweeps the learning rate of SGD; warm-up, decay
and sizes are our choice).

The experiment's own fields: ``losses`` (comma-separated registry names of
:mod:`tfjax.methods`), ``lrs`` (comma-separated learning rates), ``oar``
(``label_fraction`` and ``weight`` of the OAR runs; plain runs see no
labels) and ``max_train_examples`` / ``max_test_examples`` (0 = the whole
split; otherwise the first records, passed as ``data=``).  The old command
line's ``--steps``, ``--batch``, ``--eval-steps``, ``--devices``,
``--seed`` and ``--data-dir`` are the training fields ``num_steps``,
``batch_size``, ``eval.finetune_steps``, ``num_devices``, ``seed`` and ``data_dir``; the script sets each run's
``loss``, ``learning_rate``, ``oar_weight``, ``label_fraction`` and, for
short runs, caps ``warmup_steps`` at a tenth and ``log_every`` at a quarter
of ``num_steps``.  The linear probe is off (``eval.linear_steps = 0``; the
old script trained it with ``--eval-steps`` but never reported it); set it
> 0 to add a ``linear`` column.
"""

import ml_collections

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

FULL_LRS = ",".join(f"1e{e}" for e in range(-7, 0)) + ",1"   # decades 1e-7 … 1

SIZES = {
    "tiny": dict(num_steps=20, batch_size=30, eval_steps=30, lrs="0.01,1",
                 losses="info_nce", dataset="subspaces_tiny"),
    "quick": dict(num_steps=200, batch_size=128, eval_steps=200,
                  lrs="1e-3,0.0316228,1"),
    "": dict(num_steps=1500, batch_size=256, eval_steps=1000, lrs=FULL_LRS),
}


def parse_arg(arg: str):
  """``(size, dataset or None)`` of a config argument ``[SIZE][,DATASET]``."""
  size, dataset = "", None
  for part in filter(None, (p.strip() for p in arg.split(","))):
    if part in SIZES:
      size = part
    elif part in BACKBONE:
      dataset = part
    else:
      raise ValueError(f"unknown config argument {part!r}; use a size "
                       f"(tiny, quick) and/or a dataset ({', '.join(BACKBONE)})")
  return size, dataset


def get_config(arg: str = ""):
  size, dataset = parse_arg(arg)
  sizes = dict(SIZES[size])
  dataset = dataset or sizes.pop("dataset", "digits")
  sizes.pop("dataset", None)
  c = base_config()
  c.dataset = dataset
  c.backbone, kwargs = BACKBONE[dataset]
  c.backbone_kwargs = kwargs
  c.embed_dim = 64
  c.projector_hidden = (256,)
  c.loss = "info_nce"             # set per run from `losses`
  c.temperature = 0.1
  c.optimizer = "sgd"
  c.momentum = 0.9
  c.weight_decay = 1e-4
  c.schedule = "warmup_cosine"
  c.num_devices = 1
  c.checkpoint_every = 1_000_000  # only the final checkpoint
  c.eval.finetune_fractions = (0.1, 0.5, 1.0)
  c.num_steps = sizes["num_steps"]
  c.batch_size = sizes["batch_size"]
  c.warmup_steps = min(20, c.num_steps // 10)
  c.log_every = max(1, min(25, c.num_steps // 4))
  c.eval.finetune_steps = sizes["eval_steps"]
  c.eval.linear_steps = 0         # not part of the protocol (> 0 adds a column)
  with c.unlocked():
    c.losses = sizes.get("losses", "info_nce,dcl,barlow_twins,vicreg")
    c.lrs = sizes["lrs"]
    c.oar = ml_collections.ConfigDict({"label_fraction": 0.1, "weight": 1.0})
    c.max_train_examples = 512 if size == "tiny" and dataset != "subspaces_tiny" else 0
    c.max_test_examples = 200 if size == "tiny" and dataset != "subspaces_tiny" else 0
  return c
