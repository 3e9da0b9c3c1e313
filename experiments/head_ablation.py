"""Which form of TransFusion's truncated block trains the backbone, on validation data.

    python -m experiments.head_ablation --noprogress
    python -m experiments.head_ablation --config=experiments/configs/head_ablation.py:tiny

Protocol and findings: docs/experiments.md ("Head ablation"); fields:
``experiments/configs/head_ablation.py``.  Per target of ``config.compare``, over seeds, on a
validation split (``validation_fraction``; the test split is never read): 1. the ReLU forms
``config.projections`` × ``config.layers``; 2. at the best (mean validation kNN), each
``config.comparison_activations`` (softmax over cosines, a comparison, not TransFusion);
3. for ``budget.target``, its ``budget.forms`` best ReLU forms at each of ``budget.steps``;
plus the random-init backbone (BatchNorm statistics of the data).  Runs live in
``WORKDIR/runs/<target>/<recipe>/seed<N>`` (finished ones are reused); writes results.md,
results.json and head_ablation.png (:mod:`experiments.head_ablation_report`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time

from experiments import runs
from experiments.common import cli
from experiments.head_ablation_report import METRICS, report
from experiments.report import machine, mean_std


def exp_temperature(name: str) -> float:
  """The temperature T of a comparison activation: ``exp`` -> 1, ``exp_tT`` -> T."""
  if name == "exp":
    return 1.0
  try:
    t = float(name[len("exp_t") :]) if name.startswith("exp_t") else 0.0
  except ValueError:
    t = 0.0
  if t > 0 and math.isfinite(t):
    return t
  raise ValueError(
    f"comparison activation {name!r}: use 'exp' or 'exp_tT' with a "
    "temperature T > 0 (e.g. 'exp_t0.1')"
  )


def register_activation(name: str):
  """Registers ``exp`` / ``exp_tT`` (``w = exp(c / T)`` of a cosine c: after the row
  normalisation of :func:`tfjax.attention.adjacency`, softmax attention over the cosines) in
  :data:`tfjax.attention.ACTIVATIONS`; one already there under ``name`` is kept if it computes
  the same weights, an error otherwise.  Returns the function."""
  import jax.numpy as jnp
  import numpy as np
  from tfjax.attention import ACTIVATIONS

  t = exp_temperature(name)

  def exp_activation(c):
    return jnp.exp(c / t)

  if name in ACTIVATIONS:
    probe = jnp.linspace(-1.0, 1.0, 9)
    if not np.allclose(ACTIVATIONS[name](probe), np.exp(np.asarray(probe) / t), rtol=1e-6):
      raise ValueError(f"activation {name!r} is already registered as another function")
    return ACTIVATIONS[name]
  ACTIVATIONS[name] = exp_activation
  return exp_activation


def target_names(config) -> list[str]:
  names = runs.names(config.compare, config.runs, "compare")
  for name in names:
    if dict(config.runs[name]).get("loss", config.loss) != "jsd":
      raise ValueError(f"run {name!r} does not train the TransFusion head (loss jsd)")
  return names


def form(projection: str, layers: int, activation: str, steps: int) -> dict:
  """A head form as dotted overrides of the training config."""
  return {
    "head.final_projection": projection,
    "head.num_layers": int(layers),
    "head.activation": activation,
    "num_steps": int(steps),
  }


def relu_grid(config, target) -> list[dict]:
  """The ReLU forms of step 1: projections × layers, at the recipe's steps."""
  steps = int(dict(config.runs[target]).get("num_steps", config.num_steps))
  return [form(p, n, config.activation, steps) for p in config.projections for n in config.layers]


def form_label(recipe: dict) -> str:
  """``L3 norm`` (``/exp`` appended unless ReLU)."""
  act = recipe["head.activation"]
  return f"L{recipe['head.num_layers']} {recipe['head.final_projection']}" + (
    "" if act == "relu" else f"/{act}"
  )


def best(rows, count: int = 1) -> list[dict]:
  """The ``count`` rows of highest mean kNN (earlier rows win exact ties)."""
  order = sorted(range(len(rows)), key=lambda i: (-rows[i]["knn"], i))
  return [rows[i] for i in order[:count]]


def margin_sigma(row, base) -> float:
  """(kNN − random kNN) / sqrt(std² + std_random²): the margin in std units."""
  spread = math.hypot(row.get("knn_std", 0.0), base.get("knn_std", 0.0))
  diff = row["knn"] - base["knn"]
  if spread == 0.0:
    return math.copysign(math.inf, diff) if diff else 0.0
  return diff / spread


def score(config, workdir, progress, seeds, target, recipe, part) -> dict:
  """The row of one head form: its runs over ``seeds`` (validation split)."""
  t0, key = time.time(), runs.recipe_key(recipe)
  per_seed = runs.over_seeds(
    [runs.training_config(config, target, recipe, seed=s) for s in seeds],
    [os.path.join(workdir, "runs", target, key, f"seed{s}") for s in seeds],
    progress,
    "validation",
  )
  row = {
    "target": target,
    "part": part,
    "form": form_label(recipe),
    "projection": recipe["head.final_projection"],
    "layers": recipe["head.num_layers"],
    "activation": recipe["head.activation"],
    "steps": recipe["num_steps"],
    "recipe": key,
    **mean_std(per_seed, METRICS),
    "seeds": len(per_seed),
    "evaluated_on": "validation",
    "minutes": round((time.time() - t0) / 60, 2),
  }
  print(json.dumps(row), flush=True)
  return row


def check(config) -> list[str]:
  """The targets of ``config``, every setting's config checked before any compute; registers
  the comparison activations."""
  names = target_names(config)
  if not config.validation_fraction:
    raise ValueError("the ablation chooses forms on validation data: set validation_fraction")
  if config.budget.target and config.budget.target not in names:
    raise ValueError(f"budget.target {config.budget.target!r} is not in compare")
  for act in config.comparison_activations:
    register_activation(act)
  runs.validate(
    [
      runs.training_config(config, name, {**recipe, "head.activation": act})
      for name in names
      for recipe in relu_grid(config, name)
      for act in (config.activation, *config.comparison_activations)
    ],
    1,
  )
  return names


def run(config, workdir: str, *, progress: bool = True):
  """The ablation (see the module docstring); returns the summary it writes."""
  names, bt = check(config), config.budget
  seeds = runs.seeds(config)
  budget_seeds = runs.seeds(config, "budget.seeds", bt.seeds) if bt.target else []
  t_job = time.time()
  score_ = functools.partial(score, config, workdir, progress)

  rows, best_relu = [], {}
  for name in names:  # 1. ReLU forms
    grid = [score_(seeds, name, recipe, "relu") for recipe in relu_grid(config, name)]
    rows += grid
    best_relu[name] = best(grid)[0]
  for name in names:  # 2. comparisons
    b = best_relu[name]
    rows += [
      score_(seeds, name, form(b["projection"], b["layers"], act, b["steps"]), "comparison")
      for act in config.comparison_activations
    ]
  budget_rows = []  # 3. longer training
  if bt.target and bt.forms and bt.steps:
    grid = [r for r in rows if r["target"] == bt.target and r["part"] == "relu"]
    for b in best(grid, bt.forms):
      budget_rows.append({**b, "part": "budget"})
      budget_rows += [
        score_(
          budget_seeds,
          bt.target,
          form(b["projection"], b["layers"], b["activation"], steps),
          "budget",
        )
        for steps in bt.steps
      ]
  base = (
    random_baseline(config, names, seeds, rows + budget_rows) if config.random_baseline else None
  )
  summary = {
    "dataset": config.dataset,
    "backbone": config.backbone,
    "validation_fraction": config.validation_fraction,
    "seeds": seeds,
    "targets": names,
    "rows": rows,
    "budget": budget_rows,
    "best_relu": {n: best_relu[n]["form"] for n in names},
    "random_baseline": base,
    "total_minutes": round((time.time() - t_job) / 60, 2),
    "machine": machine(),
  }
  report(config, workdir, summary)
  return summary


def random_baseline(config, names, seeds, rows) -> dict:
  """The random-init backbone's row on the same split (the fair baseline); sets every row's
  ``margin_sigma`` against it."""
  first = runs.training_config(config, names[0], relu_grid(config, names[0])[0])
  base = {
    "target": "random_init",
    "form": f"random-init {config.backbone}",
    **runs.random_init(first, seeds, ("knn", "linear"), fields={"eval.head_knn": False}),
    "seeds": len(seeds),
    "evaluated_on": "validation",
  }
  print(json.dumps(base), flush=True)
  for row in rows:
    row["margin_sigma"] = margin_sigma(row, base)
  return base


def main(argv=None):
  return cli(run, "head_ablation", argv, __doc__)


if __name__ == "__main__":
  main(sys.argv[1:])
