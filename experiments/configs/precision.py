r"""bfloat16 vs float32 compute on the main job's class-target TransFusion recipe.

    python -m experiments.precision --noprogress                                   # 3 seeds each
    python -m experiments.precision --config=experiments/configs/precision.py:tiny # smoke test

The runs are the main job's class-target TransFusion run (``RUNS["transfusion"]`` of configs/default.py
of experiments/configs/default.py, its recipe from the method registry) on
its ``training_fields()`` (MNIST-1D, CNN1D, 800 steps, batch 128), once with
``compute_dtype="float32"`` and once with ``"bfloat16"``; both are evaluated
on the test split (kNN and linear probe of the backbone features; no
fine-tuning).  ``timing_rounds`` × ``timing_steps`` steps of each dtype, in
alternating rounds on one fixed batch, give the step time apart from the
input pipeline and the logging (docs/precision.md).
"""

import ml_collections

from experiments.configs.default import run, training_fields


def get_config(arg: str = ""):
  c = training_fields()
  c.eval.finetune_fractions = ()
  c.eval.head_knn = False
  with c.unlocked():
    c.runs = ml_collections.ConfigDict()
    for dtype in ("float32", "bfloat16"):
      r = run("jsd", label_fraction=1.0, labels_in_loss=True)
      r.compute_dtype = dtype
      c.runs[dtype] = r
    c.compare = "float32,bfloat16"
    c.seeds = 3
    c.timing_rounds = 5
    c.timing_steps = 20
  if arg == "tiny":
    c.seeds = 1
    c.runs.float32.num_steps = c.runs.bfloat16.num_steps = 20
    c.warmup_steps = 2
    c.eval.linear_steps = 20
    c.timing_rounds, c.timing_steps = 2, 2
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use '' or 'tiny'")
  return c
