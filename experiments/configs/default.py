r"""Main job: TransFusion vs SupCon, self-supervised TransFusion vs SimCLR, on MNIST-1D.

    python -m experiments.train                      # this file: 5 seeds, ~5 min
    python -m experiments.train --config=experiments/configs/default.py:quick   # 1 seed, 1.5 min

Gives (2-core CPU, test split, mean ± std over 5 seeds; kNN / linear probe of
the backbone features):

    TransFusion (JSD), class targets     0.985 ± 0.002 / 0.981 ± 0.005
    SupCon, class targets                0.988 ± 0.002 / 0.986 ± 0.001
    SimCLR (InfoNCE), self-supervised    0.881 ± 0.010 / 0.922 ± 0.003
    TransFusion (JSD), self-supervised   0.917 ± 0.008 / 0.945 ± 0.004
    random-init CNN1D (fair baseline)    0.700 ± 0.015 / 0.870 ± 0.011

and with ``--config.compare=deep_fusion`` (the paper's v2 head, its recipe chosen
on validation data like the others; 9 min) 0.828 ± 0.012 / 0.924 ± 0.007
(docs/experiments.md, "Deep Fusion (v2) against TransFusion (v1) and SimCLR").

Every method trains the same CNN1D backbone and projector on offline MNIST-1D
(4000 train / 1000 test signals) with its recipe from the method registry
(augmentation and strength, learning rate, temperature or head form, steps;
``tfjax.methods``), chosen per method on a held-out 20 % of the training
split, never on the test split (experiments/recipe_sweep.py,
docs/recipes.md).  "transfusion" and "supcon" see all training labels
(same-class samples are positives), "simclr" and "transfusion_ssl" none.
``runs`` holds each run's overrides of the fields below (a recipe field a
run leaves unset takes the top-level value if set, else the recipe:
``--config.learning_rate=1e-3`` sets every run's,
``--config.runs.supcon.learning_rate=1e-3`` one run's); ``compare`` picks and
orders them (``--config.compare=supcon,simclr``); ``seeds`` runs each with
seeds seed, seed + 1, ...; the baselines are the randomly initialised backbone
with BatchNorm statistics estimated on the data (the fair random baseline) and
the raw inputs.  ``compilation_cache`` keeps XLA's compiled programs in
``WORKDIR/jax_cache`` while the job runs, so seeds 1–4 of a recipe load
what seed 0 compiled.
"""

import ml_collections

from tfjax import methods
from tfjax.config import base_config


# Each run names its method and its use of labels; the method's recipe in
# the registry (tfjax.methods, chosen on validation data: docs/recipes.md)
# fills every training field the run leaves unset (tfjax.recipes.resolve).
# Self-supervised, the recipes use the signal augmentation (a circular
# resized crop, scale, trend, light noise) and TransFusion a truncated block
# without Q/K (learned Q/K die, with uniform rows, in every self-supervised
# setting of the sweeps).
def run(loss: str, label_fraction=None, labels_in_loss: bool = False):
  """A run: its method and its use of labels.  The recipe fields are there
  but unset (None), so that ``--config.runs.NAME.FIELD`` can set them; unset,
  they take the top-level value if set, else the method's recipe."""
  r = ml_collections.ConfigDict(
    {
      "loss": loss,
      "labels_in_loss": labels_in_loss,
      "label_fraction": ml_collections.FieldReference(label_fraction, field_type=float),
      "head": {},
    }
  )
  for field, kind in methods.FIELDS.items():
    *path, leaf = field.split(".")
    node = r[path[0]] if path else r
    node[leaf] = ml_collections.FieldReference(None, field_type=kind)
  return r


# The main job's runs: each one's method and use of labels (a fresh ConfigDict
# per config, so that one config's changes stay its own).
RUNS = {
  "transfusion": dict(loss="jsd", label_fraction=1.0, labels_in_loss=True),
  "supcon": dict(loss="supcon", label_fraction=1.0, labels_in_loss=True),
  "simclr": dict(loss="info_nce"),
  "transfusion_ssl": dict(loss="jsd"),
  # The paper's v2 head (softmax attention blocks, NT-Xent; docs/deep_fusion.md),
  # self-supervised: --config.compare=deep_fusion.
  "deep_fusion": dict(loss="deep_fusion"),
}


def training_fields():
  """The main job's shared training fields; the recipe fields
  (tfjax.methods.FIELDS) stay unset, for each run's method to fill.  Other
  experiments on MNIST-1D start from them too."""
  c = base_config()
  c.dataset = "mnist1d"
  c.backbone = "cnn1d"
  c.backbone_kwargs = {"out_features": 128}
  c.embed_dim = 64
  c.batch_size = 128
  c.warmup_steps = 40
  c.log_every = 50
  c.checkpoint_every = 400
  c.eval.linear_steps = 300
  c.eval.finetune_fractions = (0.1, 1.0)
  c.eval.finetune_steps = 300
  return c


def get_config(arg: str = ""):
  c = training_fields()
  with c.unlocked():
    c.runs = ml_collections.ConfigDict({name: run(**spec) for name, spec in RUNS.items()})
    c.runs.unlock()  # add runs in a config file of your own
    c.compare = "transfusion,supcon,simclr,transfusion_ssl"
    c.seeds = 5  # runs per method: seeds seed, seed+1, ...
    c.random_baseline = True
    c.raw_baseline = True
    # XLA's programs kept in WORKDIR/jax_cache: the seeds of a recipe
    # compile the same ones (experiments.common.compilation_cache).
    c.compilation_cache = True
  if arg == "quick":
    c.seeds = 1
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use '' or 'quick'")
  return c
