"""Choose each method's recipe on validation data: a coordinate search, then a transfer check.

    python -m experiments.recipe_sweep --noprogress
    python -m experiments.recipe_sweep --config=experiments/configs/recipe_sweep.py:tiny

Every sweep run holds out a class-balanced ``validation_fraction`` of the
training split and is scored by kNN accuracy on it (the test split is never
read).  Per method of ``config.methods``, four stages (:data:`STAGES`,
:func:`stage_grid`) each keep the best setting (:func:`choose`); then each
chosen recipe and its default are trained on ``transfer.dataset`` and
evaluated on its test split (:func:`transfer`).  The protocol and its results:
docs/experiments.md; the fields: ``experiments/configs/recipe_sweep.py``.

Runs live in ``WORKDIR/runs/<method>/<recipe>/seed<N>`` (transfer:
``WORKDIR/transfer/...``) and finished ones are reused on a restart.  Writes
results.md, results.json, chosen.json and recipe_sweep.png
(:mod:`experiments.recipe_sweep_report`).
"""

from __future__ import annotations

import json
import os
import sys
import time

from experiments import runs
from experiments.common import cli
from experiments.recipe_sweep_report import write
from experiments.report import machine, mean_std

STAGES = ("augmentation", "learning rate", "method", "steps")


# ----------------------------------------------------------------------------
# Recipes: flat {dotted field: value} overrides of the training config.
# ----------------------------------------------------------------------------
def method_names(config) -> list[str]:
  return runs.names(config.methods, config.runs, "methods")


def _loss(config, method) -> str:
  return dict(config.runs[method]).get("loss", config.loss)


def is_jsd(config, method) -> bool:
  return _loss(config, method) == "jsd"


def uses_temperature(config, method) -> bool:
  """The method reads ``temperature`` (the registry's options say so)."""
  from tfjax import methods

  return "temperature" in methods.get(_loss(config, method)).options


def default_recipe(config, method) -> dict:
  """The starting recipe (``config.defaults``): the fields the sweep tunes for ``method``."""
  d = config.defaults
  out = {k: d[k] for k in ("augment", "augment_strength", "learning_rate")}
  if uses_temperature(config, method):
    out["temperature"] = d.temperature
  if is_jsd(config, method):
    head = ("num_layers", "final_projection", "activation", "fuse_within_view")
    out.update({f"head.{k}": d[k] for k in head})
  out["num_steps"] = d.num_steps
  return out


def parse_form(form: str) -> dict:
  """``PROJECTION/ACTIVATION[/within]`` -> head overrides."""
  parts = form.split("/")
  if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "within"):
    raise ValueError(f"head form {form!r}: use PROJECTION/ACTIVATION[/within]")
  return {
    "head.final_projection": parts[0],
    "head.activation": parts[1],
    "head.fuse_within_view": len(parts) == 3,
  }


def stage_grid(config, method, stage: int) -> list[dict]:
  """The settings (overrides of the stage's fields) of ``stage`` (0-based)."""
  g = config.grid
  if stage == 0:
    return [
      {"augment": a, "augment_strength": float(v)} for a in g.augment for v in g.augment_strength
    ]
  if stage == 1:
    return [{"learning_rate": float(v)} for v in g.learning_rate]
  if stage == 3:
    return [{"num_steps": int(v)} for v in g.num_steps]
  if uses_temperature(config, method):
    return [{"temperature": float(v)} for v in g.temperature]
  if is_jsd(config, method) and dict(config.runs[method]).get("labels_in_loss"):
    return [
      {"head.num_layers": int(n), **parse_form(f"{p}/relu")}
      for n in g.transfusion_layers
      for p in g.transfusion_projection
    ]
  if is_jsd(config, method):
    return [{**parse_form(f), "head.num_layers": int(n)} for f in g.ssl_forms for n in g.ssl_layers]
  return []  # a method without knobs of its own: stage 3 is skipped


def setting_label(setting: dict) -> str:
  """A short label: ``lr=0.002``; head forms as ``L3 none/square/within``
  (projection, then the activation unless ReLU, then ``within``)."""
  if "head.num_layers" in setting:
    form = setting["head.final_projection"]
    if setting.get("head.activation", "relu") != "relu":
      form += "/" + setting["head.activation"]
    if setting.get("head.fuse_within_view"):
      form += "/within"
    return f"L{setting['head.num_layers']} {form}"
  if "augment" in setting:
    return f"{setting['augment']} {setting['augment_strength']:g}"
  return ", ".join(
    f"{runs.SHORT[k]}={v:g}" if isinstance(v, float) else f"{runs.SHORT[k]}={v}"
    for k, v in setting.items()
  )


class Sweep:
  """Runs the settings of the search (each distinct recipe once)."""

  def __init__(self, config, workdir, progress):
    self.config, self.workdir, self.progress = config, workdir, progress
    self.cache = {}
    self.seeds = runs.seeds(config, "sweep_seeds")

  def score(self, method, recipe) -> dict:
    key = (method, runs.recipe_key(recipe))
    if key not in self.cache:
      t0 = time.time()
      per_seed = runs.over_seeds(
        [runs.training_config(self.config, method, recipe, seed=s) for s in self.seeds],
        [os.path.join(self.workdir, "runs", method, key[1], f"seed{s}") for s in self.seeds],
        self.progress,
        "validation",
      )
      self.cache[key] = {
        **mean_std(per_seed, ("knn", "final_loss", "uniform_rows")),
        "evaluated_on": "validation",
        "seeds": len(per_seed),
        "minutes": round((time.time() - t0) / 60, 2),
      }
      print(json.dumps({"method": method, "recipe": key[1], **self.cache[key]}), flush=True)
    return self.cache[key]

  def search(self, method):
    """``(chosen recipe, rows)``: the four stages' runs of ``method``."""
    recipe, rows = default_recipe(self.config, method), []
    for stage, stage_name in enumerate(STAGES):
      grid = stage_grid(self.config, method, stage)
      if not grid:
        continue
      stage_rows = [
        {
          "method": method,
          "stage": stage + 1,
          "stage_name": stage_name,
          "setting": setting_label(setting),
          "recipe": runs.recipe_key({**recipe, **setting}),
          **self.score(method, {**recipe, **setting}),
        }
        for setting in grid
      ]
      incumbent = {k: recipe.get(k) for k in grid[0]}
      pick = choose(grid, [r["knn"] for r in stage_rows], incumbent, self.config.tie_tolerance)
      for i, row in enumerate(stage_rows):
        row["chosen"] = i == pick
      rows += stage_rows
      recipe = {**recipe, **grid[pick]}
    return recipe, rows


def transfer_recipes(config, method, chosen) -> list:
  """``[(label, recipe)]`` of the transfer check: the chosen recipe, with
  ``transfer.chosen_at_default_steps`` the chosen recipe at the default
  number of steps (when they differ: separates the gain of the other choices
  from that of longer training), and the default."""
  default = default_recipe(config, method)
  out = [("chosen", chosen)]
  if config.transfer.chosen_at_default_steps and chosen["num_steps"] != default["num_steps"]:
    out.append(
      (f"chosen, {default['num_steps']} steps", {**chosen, "num_steps": default["num_steps"]})
    )
  return out + [("default", default)]


def choose(grid, scores, incumbent, tolerance) -> int:
  """The chosen setting's index: the best, with ties (within ``tolerance``)
  going to the incumbent if it is in the grid, else to the first in order."""
  best = max(scores)
  tied = [i for i, s in enumerate(scores) if s >= best - tolerance - 1e-9]  # inclusive
  for i in tied:
    if grid[i] == incumbent:
      return i
  return tied[0]


def transfer(config, names, chosen, workdir, progress) -> list:
  """The transfer check's rows: each method's recipes of
  :func:`transfer_recipes` trained on ``transfer.dataset``'s training split
  and evaluated on its test split, over ``transfer.seeds`` seeds, then the
  random-init backbone."""
  from tfjax import methods

  tr = config.transfer
  seeds = runs.seeds(config, "transfer.seeds", tr.seeds)
  fields = {"dataset": tr.dataset, "validation_fraction": None}
  fields["eval.linear_steps"] = tr.linear_steps
  rows = []
  for name in names:
    for which, recipe in transfer_recipes(config, name, chosen[name]):
      key = runs.recipe_key(recipe)
      configs = [runs.training_config(config, name, {**recipe, **fields}, seed=s) for s in seeds]
      dirs = [os.path.join(workdir, "transfer", name, key, f"seed{s}") for s in seeds]
      per_seed = runs.over_seeds(configs, dirs, progress, "test")
      rows.append(
        {
          "method": name,
          "display": methods.display_name(configs[0]),
          "recipe": which,
          "overrides": key,
          "evaluated_on": "test",
          **mean_std(per_seed, ("knn", "linear", "final_loss", "uniform_rows")),
          "seeds": len(seeds),
        }
      )
      print(json.dumps(rows[-1]), flush=True)
  if config.random_baseline:
    rows.append(
      {
        "method": "random_init",
        "recipe": "—",
        "display": f"random-init {config.backbone} (BatchNorm statistics of the data)",
        "overrides": "",
        "evaluated_on": "test",
        **runs.random_init(config, seeds, ("knn", "linear"), fields=fields),
        "seeds": len(seeds),
      }
    )
    print(json.dumps(rows[-1]), flush=True)
  return rows


def run(config, workdir: str, *, progress: bool = True):
  """The four-stage search of every method on validation data, then the transfer check."""
  names = method_names(config)
  if not config.validation_fraction:
    raise ValueError("the sweep chooses on validation data: set validation_fraction")
  runs.validate(
    [
      runs.training_config(config, name, {**default_recipe(config, name), **s})
      for name in names
      for stage in range(len(STAGES))
      for s in stage_grid(config, name, stage)
    ],
    1,
  )  # before any compute
  if config.transfer.seeds != 0:  # 0: no transfer check
    runs.seeds(config, "transfer.seeds", config.transfer.seeds)
  t_job = time.time()
  sweep = Sweep(config, workdir, progress)
  chosen, rows = {}, []
  for name in names:
    chosen[name], method_rows = sweep.search(name)
    rows += method_rows
    print(json.dumps({"method": name, "chosen": chosen[name]}), flush=True)
  sweep_minutes = (time.time() - t_job) / 60
  baseline_val = runs.random_init(config, sweep.seeds, ("knn",)) if config.random_baseline else None
  t_transfer = time.time()
  transfer_rows = (
    transfer(config, names, chosen, workdir, progress) if config.transfer.seeds else []
  )
  chosen_overrides = {name: {**dict(config.runs[name]), **chosen[name]} for name in names}
  summary = {
    "dataset": config.dataset,
    "validation_fraction": config.validation_fraction,
    "sweep_seeds": sweep.seeds,
    "tie_tolerance": config.tie_tolerance,
    "runs": rows,
    "chosen": chosen_overrides,
    "random_baseline_validation": baseline_val,
    "transfer": transfer_rows,
    "sweep_minutes": round(sweep_minutes, 2),
    "transfer_minutes": round((time.time() - t_transfer) / 60, 2),
    "total_minutes": round((time.time() - t_job) / 60, 2),
    "machine": machine(),
  }
  write(config, summary, names, STAGES, workdir)
  return summary


def main(argv=None):
  return cli(run, "recipe_sweep", argv, __doc__)


if __name__ == "__main__":
  main(sys.argv[1:])
