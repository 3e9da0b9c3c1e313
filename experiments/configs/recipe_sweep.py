r"""Recipe sweep (experiments/recipe_sweep.py): each method's recipe chosen on validation data.

    python -m experiments.recipe_sweep --noprogress

With the vector augmentation alone (``"--config.grid.augment=('vector',)"``;
shared 2-core CPU, 48 min wall; 2 seeds per setting; docs/recipes.md has
every run) it gives validation kNN (MNIST-1D, held-out 20 % of the training
split) of the chosen recipes vs the starting recipe —

===============  ==================================================  ======  =======
method           chosen overrides                                    chosen  default
===============  ==================================================  ======  =======
transfusion      augment 0.1, lr 2e-3, 1-layer head, learned, 800    0.970   0.593
supcon           augment 0.1, lr 4e-3, temperature 0.1, 800 steps    0.979   0.613
simclr           augment 0.3, lr 4e-3, temperature 0.1, 1600 steps   0.701   0.542
transfusion_ssl  augment 0.1, lr 1e-3, 3 layers, no projection, 1600 0.687   0.500
===============  ==================================================  ======  =======

(random-init CNN1D with BatchNorm statistics of the data: 0.695).  Transfer
check on mnist1d_shifted's test split, 3 seeds, kNN / linear, chosen vs
default: TransFusion 0.774 / 0.786 vs 0.405 / 0.648, SupCon 0.818 / 0.799
vs 0.407 / 0.649, SimCLR 0.443 / 0.624 vs 0.386 / 0.638, self-supervised
TransFusion 0.418 / 0.627 vs 0.328 / 0.625; random-init 0.486 / 0.652.

With the signal augmentation for the self-supervised methods (28 min on the
shared machine)::

    python -m experiments.recipe_sweep --noprogress --config.methods=simclr,transfusion_ssl \
        "--config.grid.augment=('signal',)" "--config.grid.augment_strength=(0.3,0.5,1.0)" \
        "--config.grid.ssl_forms=('none/relu','none/square')"

it gives validation kNN 0.878 (SimCLR: signal 0.5, lr 4e-3, T 0.2, 1600 steps)
and 0.839 (self-supervised TransFusion: signal 0.5, lr 1e-3, one cos² block
without projection, 1600 steps); on mnist1d_shifted kNN / linear 0.596 / 0.706
and 0.576 / 0.698 against the random-init 0.486 / 0.652.

    python -m experiments.recipe_sweep --config=experiments/configs/recipe_sweep.py:tiny  # smoke test

The training fields are the sweep's starting recipe, spelt out here and not
taken from ``experiments/configs/default.py`` (so that the starting point
stays put when the main job's recipes change): MNIST-1D, CNN1D backbone,
embedding 64, batch 128, AdamW, 400 steps, with
``validation_fraction = 0.2``: every sweep run trains on 80 % of the training
split and is scored by kNN accuracy of its backbone features on the held-out,
class-balanced 20 % (seed 0).  The test split is never read by the sweep.

The experiment's own fields:

* ``methods``: the runs to tune, names of ``runs`` (each run's overrides of
  the training fields: loss and labels).
* ``sweep_seeds``: seeds per setting (the selection uses their mean).
* ``tie_tolerance``: a setting within this of the stage's best counts as a
  tie; ties keep the incumbent (the value carried in from the stages before,
  at first the starting recipe's) when it is in the grid, else the first
  setting in grid order.
* ``grid``: the values of each stage (1: ``augment`` × ``augment_strength``
  — ``vector`` masks, shifts by up to L/4, scales and adds noise at SNR 1/s;
  ``signal`` crops and resizes circularly, scales, adds a linear trend and
  noise at SNR 10/s (tfjax.data.augment) —,
  2: ``learning_rate``, 3: ``temperature`` for the methods that read one,
  ``transfusion_layers`` × ``transfusion_projection`` for TransFusion,
  ``ssl_forms`` × ``ssl_layers`` for self-supervised TransFusion — a form is
  ``PROJECTION/ACTIVATION[/within]``, ``within`` = fusion within each view —,
  4: ``num_steps``).
* ``defaults``: the starting recipe of the tuned fields (each stage's first
  incumbent, and the "default" row of the transfer check).
* ``transfer``: the transfer check: ``dataset`` (trained on its own training
  split, evaluated on its test split), ``seeds`` (0: no transfer check), ``linear_steps`` and
  ``chosen_at_default_steps``.  Each method's chosen recipe and its starting
  recipe are trained there; with ``chosen_at_default_steps`` also the chosen
  recipe at the default number of steps where the two differ (separating the
  gain of the other choices from that of longer training).
* ``random_baseline``: also evaluate the random-init backbone with BatchNorm
  statistics of the data (on the validation split and on the transfer data).
* ``compilation_cache``: keep XLA's compiled programs in ``WORKDIR/jax_cache``
  (the seeds of one setting compile the same ones).
"""

import ml_collections

from tfjax.config import base_config

# The methods: only what makes each one itself (loss and labels); the sweep
# sets every tuned field.
METHOD_RUNS = {
  "transfusion": {"loss": "jsd", "label_fraction": 1.0, "labels_in_loss": True},
  "supcon": {"loss": "supcon", "label_fraction": 1.0, "labels_in_loss": True},
  "simclr": {"loss": "info_nce", "label_fraction": None, "labels_in_loss": False},
  "transfusion_ssl": {"loss": "jsd", "label_fraction": None, "labels_in_loss": False},
  "dcl": {"loss": "dcl", "label_fraction": None, "labels_in_loss": False},
  "barlow_twins": {"loss": "barlow_twins", "label_fraction": None, "labels_in_loss": False},
  "vicreg": {"loss": "vicreg", "label_fraction": None, "labels_in_loss": False},
  "deep_fusion": {"loss": "deep_fusion", "label_fraction": None, "labels_in_loss": False},
}

TINY_GRID = dict(  # 2-value grids where a stage has a choice to test
  augment=("vector",),
  augment_strength=(0.5, 1.0),
  learning_rate=(2e-3,),
  temperature=(0.1, 0.5),
  transfusion_layers=(1,),
  transfusion_projection=("learned", "none"),
  ssl_forms=("learned/relu", "none/square"),
  ssl_layers=(1,),
  num_steps=(10,),
)

FULL_GRID = dict(
  augment=("vector", "signal"),
  augment_strength=(0.1, 0.3, 0.5, 1.0),
  learning_rate=(1e-3, 2e-3, 4e-3),
  temperature=(0.1, 0.2, 0.5),
  transfusion_layers=(1, 2, 3),
  transfusion_projection=("learned", "none"),
  ssl_forms=("learned/relu", "none/relu", "none/square", "none/square/within"),
  ssl_layers=(1, 3),
  num_steps=(400, 800, 1600),
)


def get_config(arg: str = ""):
  if arg not in ("", "tiny"):
    raise ValueError(f"unknown config argument {arg!r}; use '' or 'tiny'")
  # The sweep's starting recipe, spelt out so that it does not move with the
  # main job's recipes (experiments/configs/default.py).
  c = base_config()
  # The fields a method's recipe fills when unset (tfjax.recipes), fixed
  # to the values this experiment runs with.
  c.augment = ""
  c.temperature = 0.1
  c.head.final_projection = "learned"
  c.head.activation = "relu"
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
  c.validation_fraction = 0.2
  c.eval.linear_steps = 0  # selection metric: validation kNN only
  c.eval.finetune_fractions = ()
  c.eval.head_knn = False
  c.write_plots = False
  c.checkpoint_every = 1_000_000  # only the final checkpoint
  c.steps_per_call = 1  # convolutions: keep 1 on CPU
  with c.unlocked():
    c.runs = ml_collections.ConfigDict(METHOD_RUNS)
    c.methods = "transfusion,supcon,simclr,transfusion_ssl"
    c.sweep_seeds = 2
    c.tie_tolerance = 0.005
    c.grid = ml_collections.ConfigDict(FULL_GRID)
    c.defaults = ml_collections.ConfigDict(
      dict(
        augment="vector",
        augment_strength=1.0,
        learning_rate=2e-3,
        temperature=0.1,
        num_layers=3,
        final_projection="learned",
        activation="relu",
        fuse_within_view=False,
        num_steps=400,
      )
    )
    c.transfer = ml_collections.ConfigDict(
      dict(dataset="mnist1d_shifted", seeds=3, linear_steps=300, chosen_at_default_steps=False)
    )
    c.random_baseline = True
    # XLA's programs kept in WORKDIR/jax_cache: a setting's seeds compile
    # the same ones (experiments.common.compilation_cache).
    c.compilation_cache = True
  if arg == "tiny":
    c.dataset = "subspaces_tiny"
    c.backbone = "mlp"
    c.backbone_kwargs = {"hidden": (32,), "out_features": 16}
    c.embed_dim = 8
    c.projector_hidden = (32,)
    c.batch_size = 24
    c.num_steps = 10
    c.warmup_steps = 2
    c.log_every = 5
    c.eval.knn_k = 5
    c.grid = ml_collections.ConfigDict(TINY_GRID)
    c.sweep_seeds = 1
    c.defaults.num_steps = 10
    c.transfer = ml_collections.ConfigDict(
      dict(dataset="subspaces_tiny", seeds=2, linear_steps=20, chosen_at_default_steps=True)
    )
  return c
