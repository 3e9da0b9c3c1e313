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
results.md, results.json, chosen.json and recipe_sweep.png.
"""

from __future__ import annotations

import json
import os
import sys
import time

from experiments import runs
from experiments.common import cli
from experiments.report import (
  formatted,
  machine,
  markdown_table,
  mean_std,
  pyplot,
  save,
  write_report,
)

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
  out = {
    "augment": d.augment,
    "augment_strength": d.augment_strength,
    "learning_rate": d.learning_rate,
  }
  if uses_temperature(config, method):
    out["temperature"] = d.temperature
  if is_jsd(config, method):
    out.update(
      {
        "head.num_layers": d.num_layers,
        "head.final_projection": d.final_projection,
        "head.activation": d.activation,
        "head.fuse_within_view": d.fuse_within_view,
      }
    )
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
      {
        "head.num_layers": int(n),
        "head.final_projection": p,
        "head.activation": "relu",
        "head.fuse_within_view": False,
      }
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
      pick = choose(
        grid,
        [r["knn"] for r in stage_rows],
        {k: recipe.get(k) for k in grid[0]},
        self.config.tie_tolerance,
      )
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
  fields = {
    "dataset": tr.dataset,
    "validation_fraction": None,
    "eval.linear_steps": tr.linear_steps,
  }
  rows = []
  for name in names:
    for which, recipe in transfer_recipes(config, name, chosen[name]):
      configs = [runs.training_config(config, name, {**recipe, **fields}, seed=s) for s in seeds]
      per_seed = runs.over_seeds(
        configs,
        [
          os.path.join(workdir, "transfer", name, runs.recipe_key(recipe), f"seed{s}")
          for s in seeds
        ],
        progress,
        "test",
      )
      rows.append(
        {
          "method": name,
          "display": methods.display_name(configs[0]),
          "recipe": which,
          "overrides": runs.recipe_key(recipe),
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
  transfer_rows = transfer(config, names, chosen, workdir, progress)
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
  write(config, summary, names, workdir)
  return summary


def write(config, summary, names, workdir) -> None:
  """chosen.json, results.md, results.json and recipe_sweep.png of ``summary``."""
  with open(os.path.join(workdir, "chosen.json"), "w") as f:
    json.dump(summary["chosen"], f, indent=2)
  md = results_markdown(config, summary)
  write_report(workdir, md, summary)
  plot(summary, names, os.path.join(workdir, "recipe_sweep.png"))
  print("\n" + md)
  print(f"wrote {workdir}/results.md, results.json, chosen.json, recipe_sweep.png")


def results_markdown(config, s) -> str:
  seeds = s["sweep_seeds"]
  sweep_table = markdown_table(
    [
      {**formatted(r, ("knn", "final_loss", "uniform_rows")), "chosen": "◀" if r["chosen"] else ""}
      for r in s["runs"]
    ],
    ["method", "stage", "setting", "knn", "final_loss", "uniform_rows", "chosen", "recipe"],
  )
  chosen = "\n".join(f"* `{m}`: `{json.dumps(o)}`" for m, o in s["chosen"].items())
  tr = config.transfer
  transfer_table = markdown_table(
    [formatted(r, ("knn", "linear")) for r in s["transfer"]],
    ["method", "recipe", "knn", "linear", "overrides", "seeds"],
  )
  base = s["random_baseline_validation"]
  base_line = (
    ""
    if not base
    else f"The random-init backbone (BatchNorm statistics of the data) gives "
    f"validation kNN {base['knn']:.3f}.\n\n"
  )
  steps = "each recipe's own number of steps"
  if tr.chosen_at_default_steps:
    steps += (
      "; where the chosen number differs from the default's, the chosen "
      "recipe also at the default number (the gain of the other choices "
      "at equal cost)"
    )
  return (
    f"# Recipe sweep: {config.dataset}, backbone {config.backbone}, chosen on "
    f"validation data\n\n"
    f"Every run trains on {1 - config.validation_fraction:.0%} of the training "
    f"split and is scored by kNN (k = {config.eval.knn_k}) accuracy of its "
    f"backbone features on the held-out, class-balanced "
    f"{config.validation_fraction:.0%} (seed 0); the test split is not read. "
    f"{len(seeds)} seed(s) per setting (mean"
    f"{' ± std' if len(seeds) > 1 else ''}); ties within {s['tie_tolerance']} "
    "keep the incumbent, else the first setting in grid order. uniform_rows: "
    "the fraction of dead (uniform) adjacency rows at the last logged step "
    "(JSD runs).\n\n"
    f"## Every run\n\n{sweep_table}\n{base_line}"
    f"## Chosen recipes (overrides of the main job's config)\n\n{chosen}\n\n"
    f"## Transfer check: {tr.dataset}, test split\n\n"
    f"Trained on {tr.dataset}'s training split, evaluated on its test split, "
    f"{tr.seeds} seeds (mean ± std); {steps}; linear probe of "
    f"{tr.linear_steps} steps.\n\n{transfer_table}\n"
    f"Time: sweep {s['sweep_minutes']:.1f} min, transfer check "
    f"{s['transfer_minutes']:.1f} min, total {s['total_minutes']:.1f} min on "
    f"{s['machine']}.\n"
  )


def plot(s, names, path):
  """Validation kNN of every setting, one panel per method, grouped by stage."""
  plt = pyplot()
  colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
  fig, axes = plt.subplots(
    1, len(names), figsize=(4.2 * len(names), 4.2), sharey=True, squeeze=False
  )
  axes, base = axes[0], s["random_baseline_validation"]
  for ax, name in zip(axes, names):
    x, ticks, labels = 0, [], []
    for stage, color in zip(range(1, len(STAGES) + 1), colors):
      srows = [r for r in s["runs"] if r["method"] == name and r["stage"] == stage]
      xs = list(range(x, x + len(srows)))
      if srows:
        ax.errorbar(
          xs,
          [r["knn"] for r in srows],
          yerr=[r.get("knn_std", 0) for r in srows],
          fmt="o-",
          color=color,
          ms=4,
          capsize=2,
          label=f"stage {stage}: {STAGES[stage - 1]}",
        )
        ax.plot(
          [xi for xi, r in zip(xs, srows) if r["chosen"]],
          [r["knn"] for r in srows if r["chosen"]],
          marker="*",
          ms=13,
          color=color,
          markeredgecolor="black",
          linestyle="none",
        )
        ticks, labels, x = ticks + xs, labels + [r["setting"] for r in srows], x + len(srows) + 1
    if base:
      ax.axhline(base["knn"], color="gray", ls="--", lw=1, label="random-init backbone")
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels, rotation=75, fontsize=6.5, ha="right")
    ax.set_title(name, fontsize=10)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("validation kNN accuracy (backbone features)")
  handles, labels = axes[0].get_legend_handles_labels()
  handles.append(
    plt.Line2D(
      [], [], marker="*", ms=11, color="white", markerfacecolor="gray", markeredgecolor="black"
    )
  )
  fig.legend(
    handles,
    labels + ["chosen setting"],
    fontsize=8,
    loc="upper center",
    bbox_to_anchor=(0.5, 0.0),
    ncol=len(labels) + 1,
  )
  fig.suptitle(
    "Recipe sweep: validation kNN accuracy per stage (each stage keeps "
    "the stars of the stages before)",
    fontsize=10,
  )
  save(fig, path)


def main(argv=None):
  return cli(run, "recipe_sweep", argv, __doc__)


if __name__ == "__main__":
  main(sys.argv[1:])
