r"""CLOA's 3-D over-fusion example (experiments/overfusion.py): three lines in R³.

    python -m experiments.overfusion --config=experiments/configs/overfusion.py:quick --noprogress

Gives (2-core CPU shared with other jobs, 239 s wall; 400 Adam steps of batch
256, seed 0, 600 test points): no base loss collapses onto one line — every
run keeps rank95 = 3.

=================  ==========  ========  =====  ==========  ==========
run                variance    rank95    kNN    class_var   anchor_acc
=================  ==========  ========  =====  ==========  ==========
InfoNCE            0.993       3         0.938  0.589
OAR-InfoNCE        0.938       3         0.925  0.616       0.675
DCL                0.994       3         0.937  0.589
OAR-DCL            0.939       3         0.920  0.619       0.678
VICReg             0.967       3         0.932  0.508
OAR-VICReg         0.526       3         0.890  0.313       0.582
Barlow Twins       0.945       3         0.920  0.493
OAR-Barlow Twins   0.622       3         0.930  0.107       0.930
=================  ==========  ========  =====  ==========  ==========

(kNN: the weighted kNN of ``tfjax.probes`` — ``eval.knn_k`` neighbours at
``eval.knn_temperature``, chance 0.333.  The README's over-fusion figure is
this run's overfusion_embeddings.png.)

    python -m experiments.overfusion --config=experiments/configs/overfusion.py:tiny   # smoke test
    python -m experiments.overfusion                                                  # full: 3 seeds

Every run trains ``backbone="mlp"`` (3 → hidden → hidden → 3, ReLU and
BatchNorm between the Dense layers) straight to 3-D embeddings
(``embed_dim=0``: no projector) with Adam (``adamw``, weight decay 0,
constant learning rate, no warm-up) on the views of
``augment="sign_flip_noise"`` (random ±1, then isotropic noise of norm
``augment_strength``).  The script runs each name of ``losses`` (registry
names, :mod:`tfjax.methods`) without and with OAR (``oar.weight`` on a
class-balanced ``oar.label_fraction`` labelled subset, seeded by ``seed``).

Fields: ``hidden`` (width of both hidden layers), ``noise`` (data noise norm
σ), ``augment_strength`` (augmentation noise norm), ``seeds``, ``losses``
(comma-separated registry names), ``oar.label_fraction``, ``n_train`` /
``n_test``, and ``search`` (the collapse search, below).

``--config.optimizer=sgd`` trains with SGD (momentum ``momentum``, 0.9).  ``dataset`` only names the
data's shape and kind (3-D vectors, 3 classes): the script generates the
points per seed and passes them as ``data=``.
"""

import ml_collections

from tfjax.config import base_config

SIZES = {
  "tiny": dict(num_steps=100, seeds=1, n_train=512, n_test=150, batch_size=128),
  # The search for a collapsing setting (``search``, below): short runs.
  "search": dict(num_steps=400, seeds=1, n_train=1500, n_test=600, batch_size=256),
  "search_tiny": dict(num_steps=50, seeds=1, n_train=512, n_test=150, batch_size=128),
  "quick": dict(num_steps=400, seeds=1, n_train=1500, n_test=600, batch_size=256),
  "": dict(num_steps=3000, seeds=3, n_train=6000, n_test=1500, batch_size=256),
}


def get_config(arg: str = ""):
  if arg not in SIZES:
    raise ValueError(
      f"unknown config argument {arg!r}; use 'tiny', 'quick', "
      "'search', 'search_tiny' or '' (full size)"
    )
  c = base_config()
  # The fields a method's recipe fills when unset (tfjax.recipes), fixed
  # to the values this experiment runs with.
  c.head.num_layers = 5
  c.head.final_projection = "learned"
  c.head.activation = "relu"
  c.dataset = "subspaces_rank1"  # 3-D vectors, 3 classes: the spec of our data
  c.backbone = "mlp"
  c.backbone_kwargs = {"hidden": (64, 64), "out_features": 3, "batch_norm": True}
  c.embed_dim = 0  # no projector: embeddings = the MLP's output
  c.loss = "info_nce"  # set per run from `losses`
  c.temperature = 0.1
  c.augment = "sign_flip_noise"
  c.augment_strength = 0.05
  c.optimizer = "adamw"  # = Adam with weight_decay 0
  c.weight_decay = 0.0
  c.learning_rate = 1e-3
  c.schedule = "constant"
  c.warmup_steps = 0
  c.num_devices = 1
  c.steps_per_call = 50
  c.log_every = 10
  c.checkpoint_every = 1_000_000  # only the final checkpoint
  c.write_plots = False
  c.eval.linear_steps = 0  # the script computes its own diagnostics
  c.eval.finetune_fractions = ()
  with c.unlocked():
    c.losses = "info_nce,dcl,vicreg,barlow_twins"
    c.hidden = 64  # sets backbone_kwargs.hidden = (hidden, hidden)
    c.noise = 0.1  # data noise norm σ
    c.seeds = 1
    c.n_train = 1500
    c.n_test = 600
    c.oar = ml_collections.ConfigDict({"label_fraction": 0.1, "weight": 1.0})
    # The collapse search: every combination of these (comma-separated)
    # values trains the base losses of ``search.losses``; settings where one
    # collapses onto a line (rank95 = 1) are rerun with OAR: the first of
    # each (noise, hidden) pair, at most ``max_oar_settings``.  Off unless
    # the config argument is "search" (or ``search.enabled``).
    c.search = ml_collections.ConfigDict(
      {
        "enabled": arg.startswith("search"),
        "losses": "info_nce",
        "noise": "0.05,0.5",
        "hidden": "8,64",
        "temperature": "0.1,1",
        "optimizer": "adamw,sgd",
        "learning_rate": "0.001,0.1,10",
        "max_oar_settings": 4,
      }
    )
    if arg == "search_tiny":
      c.search.losses, c.search.noise, c.search.hidden = "info_nce", "0.05", "8"
      c.search.temperature, c.search.optimizer = "0.1", "sgd"
      c.search.learning_rate = "0.1,10"
  for key, value in SIZES[arg].items():
    c[key] = value
  return c
