r"""Head ablation (experiments/head_ablation.py): which form of TransFusion's truncated block trains the backbone.

    python -m experiments.head_ablation --noprogress

Gives (shared 2-core CPU, 63.5 min wall: 59.2 min with 2 budget seeds, then
4.3 min resumed for the third; 3 seeds, mean ± std; docs/recipes.md, "Head
ablation"): validation kNN (linear probe) of the backbone features, MNIST-1D,
held-out 20 % of the training split; random-init CNN1D with BatchNorm
statistics of the data 0.695 ± 0.018 (0.876 ± 0.003) —

=====================  ===========================  ===========================
head form              class targets, 800 steps     self-supervised, 1600 steps
=====================  ===========================  ===========================
L1 learned (LN + Q,K)  0.975 ± 0.004 (0.975)        0.611 ± 0.068 (0.868) dead
L3 learned             0.960 ± 0.010 (0.968)        0.598 ± 0.048 (0.874) dead
L1 tied (LN + W)       0.975 ± 0.004 (0.973)        0.688 ± 0.006 (0.865)
L3 tied                0.939 ± 0.017 (0.964)        0.648 ± 0.021 (0.862)
L1 norm (LN only)      0.977 ± 0.003 (0.973)        0.673 ± 0.011 (0.862)
L3 norm                0.950 ± 0.004 (0.970)        0.676 ± 0.003 (0.861)
L1 none                0.978 ± 0.003 (0.978)        0.661 ± 0.009 (0.862)
L3 none                0.940 ± 0.018 (0.957)        0.672 ± 0.018 (0.869)
softmax exp, T = 1     0.950 ± 0.008 (0.964)        0.632 ± 0.021 (0.865)
softmax exp, T = 0.1   0.978 ± 0.004 (0.976)        0.615 ± 0.013 (0.858)
=====================  ===========================  ===========================

("dead": every adjacency row uniform at the end; the softmax rows, a
comparison and not TransFusion, at each target's best ReLU form, L1 none and
L1 tied).  Self-supervised, 4000 steps: L1 tied 0.747 ± 0.022 (0.889 ±
0.009), L3 norm 0.732 ± 0.012 (0.876 ± 0.010): +1.8 and +1.7 std above the
random backbone (std = sqrt(std² + std_random²)), short of 3.

    python -m experiments.head_ablation --config=experiments/configs/head_ablation.py:quick --noprogress
    python -m experiments.head_ablation --config=experiments/configs/head_ablation.py:tiny   # smoke test

The training fields are the main job's (``experiments/configs/default.py``:
MNIST-1D, CNN1D backbone with 128 features, BatchNorm-MLP projector to 64,
batch 128, AdamW with 40 warm-up steps and cosine decay), spelt out here so
that this experiment does not move when the main job's recipes change, with
``validation_fraction = 0.2``: every run trains on 80 % of the training split
and is scored on the held-out, class-balanced 20 % (seed 0).  The test split
is never read.

The experiment's own fields:

* ``runs``: the two training targets, each the main job's recipe:
  ``transfusion`` (JSD, every training label in the target, augmentation
  0.1, lr 2e-3, 800 steps) and ``transfusion_ssl`` (JSD without labels: only
  the two views of a sample are positives; augmentation 0.1, lr 1e-3, 1600
  steps).  ``compare`` picks and orders them.
* ``projections`` × ``layers``: the head forms, ``head.final_projection``
  (``learned``: LayerNorm + separate Q, K; ``tied``: LayerNorm + one
  projection; ``norm``: LayerNorm only; ``none``: no parameters) × the
  number of head layers (``num_layers − 1`` fusion blocks, then the
  truncated block), all with ``activation`` (ReLU: TransFusion).
* ``comparison_activations``: activations run at each target's best ReLU
  form (highest mean validation kNN) as a comparison that is NOT
  TransFusion: ``exp`` (A_ij ∝ exp(cos_ij): softmax attention over cosines)
  and ``exp_tT`` (A_ij ∝ exp(cos_ij / T), a softmax with temperature T).
  The experiment registers them in :data:`tfjax.attention.ACTIVATIONS`.
* ``seeds``: seeds per setting (seed, seed + 1, ...), mean ± std (ddof 1).
* ``budget``: longer training for ``budget.target``: its ``budget.forms``
  best ReLU forms are also trained for each of ``budget.steps`` steps, with
  ``budget.seeds`` seeds (beside the grid's runs at the recipe's steps).
* ``random_baseline``: the randomly initialised backbone with BatchNorm
  statistics re-estimated on the training part (the fair baseline), over
  ``seeds`` seeds, on the same validation split.  Every row gives its
  margin over it in units of sqrt(std² + std_random²) (kNN).
* ``compilation_cache``: keep XLA's compiled programs in
  ``WORKDIR/jax_cache`` (the seeds of one form compile the same programs).
"""

import ml_collections

from experiments.configs import default

# The two training targets with the recipes this ablation runs (the first
# sweep's, docs/recipes.md: the vector augmentation at 0.1 for both), head
# fields left to the ablation.
TARGETS = {
  "transfusion": {
    "loss": "jsd",
    "label_fraction": 1.0,
    "labels_in_loss": True,
    "augment_strength": 0.1,
    "learning_rate": 2e-3,
    "num_steps": 800,
  },
  "transfusion_ssl": {
    "loss": "jsd",
    "label_fraction": None,
    "labels_in_loss": False,
    "augment_strength": 0.1,
    "learning_rate": 1e-3,
    "num_steps": 1600,
  },
}


def get_config(arg: str = ""):
  if arg not in ("", "quick", "tiny"):
    raise ValueError(f"unknown config argument {arg!r}; use '', 'quick' or 'tiny'")
  c = default.training_fields()  # the main job's fields, then ours
  # The fields a method's recipe fills when unset (tfjax.recipes), fixed to
  # the values this experiment runs with (the runs set their own below).
  c.augment = ""
  c.augment_strength = 0.1
  c.learning_rate = 2e-3
  c.temperature = 0.1
  c.num_steps = 800
  c.head.num_layers = 1
  c.head.final_projection = "learned"
  c.head.activation = "relu"
  c.validation_fraction = 0.2
  c.eval.finetune_fractions = ()
  c.eval.head_knn = True
  c.write_plots = False
  c.checkpoint_every = 1_000_000  # only the final checkpoint
  c.steps_per_call = 1  # convolutions: keep 1 on CPU
  with c.unlocked():
    c.runs = ml_collections.ConfigDict(TARGETS)
    c.runs.unlock()
    c.compare = "transfusion,transfusion_ssl"
    c.projections = ("learned", "tied", "norm", "none")
    c.layers = (1, 3)
    c.activation = "relu"
    c.comparison_activations = ("exp", "exp_t0.1")
    c.seeds = 3
    c.budget = ml_collections.ConfigDict(
      dict(target="transfusion_ssl", forms=2, steps=(4000,), seeds=3)
    )
    c.random_baseline = True
    c.compilation_cache = True
  if arg == "quick":  # one seed, one depth, shorter runs: a few minutes
    c.seeds = 1
    c.layers = (1,)
    c.runs.transfusion.num_steps = 400
    c.runs.transfusion_ssl.num_steps = 400
    c.comparison_activations = ("exp",)
    c.budget = ml_collections.ConfigDict(
      dict(target="transfusion_ssl", forms=1, steps=(1000,), seeds=1)
    )
  elif arg == "tiny":  # seconds: every code path once
    c.dataset = "subspaces_tiny"
    c.backbone = "mlp"
    c.backbone_kwargs = {"hidden": (32,), "out_features": 16}
    c.embed_dim = 8
    c.projector_hidden = (32,)
    c.batch_size = 24
    c.warmup_steps = 2
    c.log_every = 5
    c.eval.knn_k = 5
    c.eval.linear_steps = 20
    c.runs.transfusion.num_steps = 10
    c.runs.transfusion_ssl.num_steps = 10
    c.projections = ("norm",)
    c.layers = (2,)
    c.comparison_activations = ("exp",)
    c.seeds = 2
    c.budget = ml_collections.ConfigDict(
      dict(target="transfusion_ssl", forms=1, steps=(20,), seeds=2)
    )
    c.compilation_cache = False
  return c
