r"""CLOA's learning-rate sweep under the authors' protocol (experiments/lr_sweep.py).

    python -m experiments.lr_sweep --config=experiments/configs/lr_sweep.py:quick --noprogress

Gives (2-core CPU, 10 min 17 s wall, 16 min CPU; digits, SmallCNN, InfoNCE ± OAR,
3 seeds, lr 0.01 … 1000, 200 steps of batch 128; test split at the learning
rate chosen on validation, fine-tuning accuracy at 10 / 50 / 100 % labels):

=====================  ========  ===================  ===================  ===================
run                    lr        10 %                 50 %                 100 %
=====================  ========  ===================  ===================  ===================
InfoNCE                0.1       0.880 ± 0.005        0.935 ± 0.003        0.939 ± 0.006
OAR-InfoNCE            0.1       0.933 ± 0.007        0.964 ± 0.006        0.968 ± 0.003
random init            —         0.900                0.947                0.944
=====================  ========  ===================  ===================  ===================

Verdicts: InfoNCE's collapse at high lr *not reproduced* (lowest mean end
variance 0.317 at lr 1000, where 1 of 3 seeds collapsed; during training the
variance falls to 0.001 and recovers); OAR's rescue *untestable here*; OAR
improves accuracy at 10 % labels *reproduced* (+0.054, > 2 std).

    python -m experiments.lr_sweep --config=experiments/configs/lr_sweep.py:tiny    # smoke test
    python -m experiments.lr_sweep             # full: 4 losses, lr 1e-7 … 1 (+ extension), GPU
    python -m experiments.lr_sweep --config=experiments/configs/lr_sweep.py:cifar10 \
        --config.data_dir=/path/to/tfds

The protocol follows the authors' code (CLOA: OAR_main.py / OAR_model_SimCLR.py
in HuanranLi/ContrastiveLearning_V2, and manhbeo/CLOP): InfoNCE / DCL
temperature 1 (``temperature``); SGD with momentum 0.9 and weight decay 5e-4,
a cosine schedule without warm-up; every step pairs the unlabelled batch (the
base loss) with a *separate* labelled batch drawn from the 10 % labelled subset (OAR, averaged over its samples, λ = 1).  Our choices
(the papers do not state them, or they do not fit 2 CPU cores): the datasets
(digits and MNIST-1D instead of CIFAR-10) and their backbones (small CNN,
1-D CNN), the number of steps, the projector (256 → 64), the fine-tuning
head's steps, the 20 % validation split the learning rate is chosen on, and
the collapse threshold (embedding variance < ``collapse_variance``).

``get_config(arg)``: ``arg`` is a size (``tiny``; ``quick``: InfoNCE on
digits; ``cpu``: InfoNCE on digits and MNIST-1D; none = full: four losses,
both datasets, 1,500 steps of batch 256, for a GPU), a
dataset list, or both as ``SIZE,DATASET[,DATASET]`` (``quick,mnist1d``).  The
dataset picks the backbone (``BACKBONE``).

The experiment's own fields:

* ``datasets`` — comma-separated registry names, swept one after another;
* ``losses`` — comma-separated methods of :mod:`tfjax.methods`;
* ``lrs`` — the learning-rate grid (comma-separated);
* ``extend_to`` — the grid is extended upward (×10 a step) up to this
  learning rate until InfoNCE / DCL collapse at some learning rate (0: no
  extension);
* ``seeds`` — runs per setting (seeds ``seed`` … ``seed + seeds − 1``);
* ``sweep_validation_fraction`` — the sweep trains on the rest of the training
  split and is evaluated on this held-out part; the learning rate of the
  Table-3 comparison is chosen there; the chosen runs are then retrained on
  the whole training split and evaluated on the test split;
* ``oar`` — ``label_fraction``, ``weight``, ``separate_batch`` (the
  authors' separate labelled batch; False: OAR on the main batch's labelled
  rows) and ``labelled_batch_size`` (the authors use the main batch's size;
  ours is 64 because 10 % of the digits' sweep split is only 115 examples);
* ``collapse_variance`` — a run has collapsed when the variance of its
  normalised projector outputs is below this (0 = all on one point; CLOA
  reports ≈ .05 for its collapsed InfoNCE and ≈ .89 with OAR);
* ``max_train_examples`` / ``max_test_examples`` — 0 = the whole split.
* ``compilation_cache`` — keep XLA's compiled programs in ``WORKDIR/jax_cache``
  (the seeds of one setting compile the same ones).

``num_steps``, ``batch_size``, ``learning_rate``-free training fields and
``eval.*`` are the usual training fields (``tfjax.config.base_config``).
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

# The CLOA draft's Table 3 (experiments/lr_sweep.py shows it beside ours): best top-1 over
# the sweep at 10 / 50 / 100 % labels, without and with OAR (ResNet-18, CIFAR-10, 100 + 100
# epochs, FFN head).  Keyed by registry name.
PAPER = {
  "info_nce": ((0.315, 0.407, 0.438), (0.686, 0.694, 0.701)),
  "dcl": ((0.351, 0.429, 0.488), (0.652, 0.663, 0.679)),
  "barlow_twins": ((0.415, 0.502, 0.539), (0.676, 0.697, 0.700)),
  "vicreg": ((0.420, 0.467, 0.524), (0.663, 0.673, 0.691)),
}

# The sweep's own fields (set below), which a run's training config does not hold.
EXPERIMENT_FIELDS = (
  "datasets losses lrs extend_to seeds sweep_validation_fraction oar collapse_variance "
  "max_train_examples max_test_examples"
).split()

FULL_LRS = ",".join(f"1e{e}" for e in range(-7, 0)) + ",1"  # CLOA's decades 1e-7 … 1

SIZES = {
  "tiny": dict(
    num_steps=20,
    batch_size=24,
    eval_steps=30,
    lrs="0.01,1",
    losses="info_nce",
    datasets="subspaces_tiny",
    seeds=1,
    extend_to=0.0,
  ),
  "quick": dict(
    num_steps=200,
    batch_size=128,
    eval_steps=100,
    lrs="0.01,0.1,1,10,1000",
    losses="info_nce",
    datasets="digits",
    seeds=3,
    extend_to=1000.0,
  ),
  # The CPU run of docs/experiments.md: quick on both datasets.
  "cpu": dict(
    num_steps=200,
    batch_size=128,
    eval_steps=100,
    lrs="0.001,0.01,0.1,1,10,100",
    losses="info_nce",
    datasets="digits,mnist1d",
    seeds=3,
    extend_to=1000.0,
  ),
  "": dict(
    num_steps=1500,
    batch_size=256,
    eval_steps=1000,
    lrs=FULL_LRS,
    losses="info_nce,dcl,barlow_twins,vicreg",
    datasets="digits,mnist1d",
    seeds=3,
    extend_to=1000.0,
  ),
}


def parse_arg(arg: str):
  """``(size, datasets or None)`` of a config argument ``[SIZE][,DATASET…]``."""
  size, datasets = "", []
  for part in filter(None, (p.strip() for p in arg.split(","))):
    if part in SIZES:
      size = part
    elif part in BACKBONE:
      datasets.append(part)
    else:
      raise ValueError(
        f"unknown config argument {part!r}; use a size "
        f"(tiny, quick, cpu) and/or datasets ({', '.join(BACKBONE)})"
      )
  return size, (",".join(datasets) or None)


def get_config(arg: str = ""):
  size, datasets = parse_arg(arg)
  sizes = dict(SIZES[size])
  datasets = datasets or sizes["datasets"]
  c = base_config()
  # The fields a method's recipe fills when unset (tfjax.recipes), fixed
  # to the values this experiment runs with.
  c.augment = ""
  c.augment_strength = 1.0
  c.learning_rate = 1e-3
  c.head.num_layers = 5
  c.head.final_projection = "learned"
  c.head.activation = "relu"
  c.dataset = datasets.split(",")[0]  # set per run from `datasets`
  c.backbone, c.backbone_kwargs = BACKBONE[c.dataset]
  c.embed_dim = 64
  c.projector_hidden = (256,)
  c.loss = "info_nce"  # set per run from `losses`
  c.temperature = 1.0  # the authors' default (CLOA's OAR_main.py)
  c.optimizer = "sgd"
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.schedule = "warmup_cosine"
  c.warmup_steps = 0  # the authors' cosine schedule has no warm-up
  c.num_devices = 1
  c.checkpoint_every = 1_000_000  # only the final checkpoint
  c.eval.finetune_fractions = (0.1, 0.5, 1.0)
  c.num_steps = sizes["num_steps"]
  c.batch_size = sizes["batch_size"]
  c.log_every = 2 if size != "" else 10  # the mechanism's first steps matter
  c.eval.finetune_steps = sizes["eval_steps"]
  c.eval.linear_steps = 0  # not part of the protocol (> 0 adds a column)
  c.write_plots = False
  with c.unlocked():
    c.datasets = datasets
    c.losses = sizes["losses"]
    c.lrs = sizes["lrs"]
    c.extend_to = sizes["extend_to"]
    c.seeds = sizes["seeds"]
    c.sweep_validation_fraction = 0.2
    # The authors' labelled batch has the main batch's size; 10 % of the
    # digits' 80 % sweep split is only 115 examples, so ours is 64.
    c.oar = ml_collections.ConfigDict(
      {"label_fraction": 0.1, "weight": 1.0, "separate_batch": True, "labelled_batch_size": 64}
    )
    if size == "tiny":  # 48 training vectors: half of them labelled
      c.oar.label_fraction, c.oar.labelled_batch_size = 0.5, 12
    c.collapse_variance = 0.1
    tiny_real = size == "tiny" and datasets != "subspaces_tiny"
    c.max_train_examples = 512 if tiny_real else 0
    c.max_test_examples = 200 if tiny_real else 0
    # XLA's programs kept in WORKDIR/jax_cache: the seeds of one (loss, lr)
    # compile the same ones (experiments.common.compilation_cache).
    c.compilation_cache = True
  return c
