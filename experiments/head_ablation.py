"""Which form of TransFusion's truncated block trains the backbone, on validation data.

    python -m experiments.head_ablation --noprogress
    python -m experiments.head_ablation --config=experiments/configs/head_ablation.py:tiny

The config (``experiments/configs/head_ablation.py``) holds the main job's
training fields with ``validation_fraction`` set (a held-out, class-balanced
part of the training split; the test split is never read) and the
ablation's own fields.  For each training target of ``config.compare``
(class targets and self-supervised) it trains, over ``config.seeds`` seeds:

1. every ReLU head form ``head.final_projection`` ∈ ``config.projections``
   × ``head.num_layers`` ∈ ``config.layers``, which separates the truncated
   block's LayerNorm (``norm``) from its Q/K projections (``tied``,
   ``learned``) and from no parameters at all (``none``);
2. at the target's best ReLU form (highest mean validation kNN), each of
   ``config.comparison_activations`` (``exp``: softmax attention over
   cosines; ``exp_tT``: with temperature T) — a comparison, not TransFusion,
   whose adjacency uses ReLU;
3. for ``config.budget.target`` only, its ``budget.forms`` best ReLU forms
   again for each of ``budget.steps`` training steps;

and evaluates the randomly initialised backbone with BatchNorm statistics of
the data (the fair baseline) on the same split.  Every run is scored by kNN
and a linear probe on the backbone features of the validation signals (and
kNN on the head's fused features, ``eval.head_knn``), and reports the
fraction of uniform ("dead") adjacency rows at its last logged step.

Runs live in ``WORKDIR/runs/<target>/<recipe>/seed<N>``; a finished run's
results.json is reused when the experiment is started again.  Writes
results.md, results.json and head_ablation.png.
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
from experiments.report import (cell, machine, markdown_table, mean_std, pyplot, save,
                                write_report)

METRICS = ("knn", "linear", "knn_head", "uniform_rows", "final_loss")
TARGET_TITLES = {"transfusion": "class targets", "transfusion_ssl": "self-supervised"}


# ----------------------------------------------------------------------------
# Comparison activations (not TransFusion): softmax attention over cosines.
# ----------------------------------------------------------------------------
def exp_temperature(name: str) -> float:
  """The temperature T of a comparison activation: ``exp`` -> 1, ``exp_tT`` -> T."""
  if name == "exp":
    return 1.0
  if name.startswith("exp_t"):
    try:
      t = float(name[len("exp_t"):])
    except ValueError:
      t = 0.0
    if t > 0 and math.isfinite(t):
      return t
  raise ValueError(f"comparison activation {name!r}: use 'exp' or 'exp_tT' "
                   "with a temperature T > 0 (e.g. 'exp_t0.1')")


def register_activation(name: str):
  """Registers ``exp`` / ``exp_tT`` in :data:`tfjax.attention.ACTIVATIONS`.

  ``w = exp(c / T)`` of a cosine c ∈ [-1, 1]: after the row normalisation of
  :func:`tfjax.attention.adjacency` the adjacency is softmax attention over
  the cosines (temperature T), zero diagonal.  An activation already
  registered under ``name`` is kept if it computes the same weights, and is
  an error otherwise.  Returns the function.
  """
  import jax.numpy as jnp
  import numpy as np
  from tfjax.attention import ACTIVATIONS
  t = exp_temperature(name)

  def exp_activation(c):
    return jnp.exp(c / t)

  if name in ACTIVATIONS:
    probe = jnp.linspace(-1.0, 1.0, 9)
    if not np.allclose(ACTIVATIONS[name](probe), np.exp(np.asarray(probe) / t),
                       rtol=1e-6):
      raise ValueError(f"activation {name!r} is already registered as another "
                       "function")
    return ACTIVATIONS[name]
  ACTIVATIONS[name] = exp_activation
  return exp_activation


# ----------------------------------------------------------------------------
# Settings.
# ----------------------------------------------------------------------------
def target_names(config) -> list[str]:
  names = runs.names(config.compare, config.runs, "compare")
  for name in names:
    if dict(config.runs[name]).get("loss", config.loss) != "jsd":
      raise ValueError(f"run {name!r} does not train the TransFusion head (loss jsd)")
  return names


def recipe_steps(config, target) -> int:
  return int(dict(config.runs[target]).get("num_steps", config.num_steps))


def form(projection: str, layers: int, activation: str, steps: int) -> dict:
  """A head form as dotted overrides of the training config."""
  return {"head.final_projection": projection, "head.num_layers": int(layers),
          "head.activation": activation, "num_steps": int(steps)}


def relu_grid(config, target) -> list[dict]:
  """The ReLU forms of step 1: projections × layers, at the recipe's steps."""
  steps = recipe_steps(config, target)
  return [form(p, n, config.activation, steps)
          for p in config.projections for n in config.layers]


def form_label(recipe: dict) -> str:
  """``L3 norm`` (``/exp`` appended unless ReLU)."""
  label = f"L{recipe['head.num_layers']} {recipe['head.final_projection']}"
  if recipe["head.activation"] != "relu":
    label += f"/{recipe['head.activation']}"
  return label


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


# ----------------------------------------------------------------------------
# The experiment.
# ----------------------------------------------------------------------------
def score(config, workdir, progress, seeds, target, recipe, part) -> dict:
  """The row of one head form: its runs over ``seeds`` (validation split)."""
  t0, key = time.time(), runs.recipe_key(recipe)
  per_seed = runs.over_seeds(
      [runs.training_config(config, target, recipe, seed=s) for s in seeds],
      [os.path.join(workdir, "runs", target, key, f"seed{s}") for s in seeds],
      progress, "validation")
  row = {"target": target, "part": part, "form": form_label(recipe),
         "projection": recipe["head.final_projection"],
         "layers": recipe["head.num_layers"], "activation": recipe["head.activation"],
         "steps": recipe["num_steps"], "recipe": key, **mean_std(per_seed, METRICS),
         "seeds": len(per_seed), "evaluated_on": "validation",
         "minutes": round((time.time() - t0) / 60, 2)}
  print(json.dumps(row), flush=True)
  return row


def check(config) -> list[str]:
  """The targets of ``config``; every setting's config is checked (before
  any compute) and the comparison activations are registered."""
  names = target_names(config)
  if not config.validation_fraction:
    raise ValueError("the ablation chooses forms on validation data: set "
                     "validation_fraction")
  if config.budget.target and config.budget.target not in names:
    raise ValueError(f"budget.target {config.budget.target!r} is not in compare")
  for act in config.comparison_activations:
    register_activation(act)
  runs.validate([runs.training_config(config, name, {**recipe, "head.activation": act})
                 for name in names for recipe in relu_grid(config, name)
                 for act in (config.activation, *config.comparison_activations)], 1)
  return names


def run(config, workdir: str, *, progress: bool = True):
  """The ablation (see the module docstring)."""
  names, bt = check(config), config.budget
  seeds = runs.seeds(config)
  budget_seeds = runs.seeds(config, "budget.seeds", bt.seeds) if bt.target else []
  t_job = time.time()
  score_ = functools.partial(score, config, workdir, progress)

  rows, best_relu = [], {}
  for name in names:                                    # 1. ReLU forms
    grid = [score_(seeds, name, recipe, "relu") for recipe in relu_grid(config, name)]
    rows += grid
    best_relu[name] = best(grid)[0]
  for name in names:                                    # 2. comparisons
    b = best_relu[name]
    rows += [score_(seeds, name, form(b["projection"], b["layers"], act, b["steps"]),
                    "comparison")
             for act in config.comparison_activations]
  budget_rows = []                                      # 3. longer training
  if bt.target and bt.forms and bt.steps:
    grid = [r for r in rows if r["target"] == bt.target and r["part"] == "relu"]
    for b in best(grid, bt.forms):
      budget_rows.append({**b, "part": "budget"})
      budget_rows += [score_(budget_seeds, bt.target, form(b["projection"], b["layers"],
                                                           b["activation"], steps), "budget")
                      for steps in bt.steps]
  base = None
  if config.random_baseline:                            # the fair baseline
    first = runs.training_config(config, names[0], relu_grid(config, names[0])[0])
    base = {"target": "random_init", "form": f"random-init {config.backbone}",
            **runs.random_init(first, seeds, ("knn", "linear"),
                               fields={"eval.head_knn": False}),
            "seeds": len(seeds), "evaluated_on": "validation"}
    print(json.dumps(base), flush=True)
    for row in rows + budget_rows:
      row["margin_sigma"] = margin_sigma(row, base)

  summary = {
      "dataset": config.dataset, "backbone": config.backbone,
      "validation_fraction": config.validation_fraction, "seeds": seeds,
      "targets": names, "rows": rows, "budget": budget_rows,
      "best_relu": {n: best_relu[n]["form"] for n in names},
      "random_baseline": base, "total_minutes": round((time.time() - t_job) / 60, 2),
      "machine": machine()}
  md = results_markdown(config, summary)
  write_report(workdir, md, summary)
  plot(summary, os.path.join(workdir, "head_ablation.png"))
  print("\n" + md)
  print(f"wrote {workdir}/results.md, results.json, head_ablation.png")
  return summary


# ----------------------------------------------------------------------------
# Report.
# ----------------------------------------------------------------------------
def _table(rows, with_steps=False):
  cols = ["form", "activation"] + (["steps"] if with_steps else []) + [
      "knn", "linear", "knn_head", "uniform_rows", "final_loss", "margin", "seeds"]
  out = []
  for r in rows:
    out.append({**r, **{k: cell(r, k) for k in METRICS},
                "activation": (r["activation"] if r["activation"] == "relu"
                               else f"{r['activation']} (softmax, comparison)"),
                "margin": (f"{r['margin_sigma']:+.1f}σ" if "margin_sigma" in r else "")})
  return markdown_table(out, cols)


def results_markdown(config, s) -> str:
  base = s["random_baseline"]
  parts = [
      f"# Head ablation: {s['dataset']}, backbone {s['backbone']}, validation split\n\n"
      f"Every run trains on {1 - s['validation_fraction']:.0%} of the training "
      f"split and is scored on the held-out, class-balanced "
      f"{s['validation_fraction']:.0%} (seed 0); the test split is not read. "
      f"Mean ± std (ddof 1) over seeds {s['seeds']}. knn / linear: kNN (k = "
      f"{config.eval.knn_k}) and linear probe ({config.eval.linear_steps} steps) on "
      f"the backbone features; knn_head: kNN on the head's fused features "
      f"(the projector's embeddings for a 1-layer head); uniform_rows: fraction "
      f"of dead (uniform) adjacency rows at the last logged step; margin: (kNN − "
      f"random kNN) / sqrt(std² + std_random²). Forms: L<layers> <final "
      f"projection>; learned = LayerNorm + Q, K; tied = LayerNorm + one "
      f"projection; norm = LayerNorm only; none = no parameters. Activations "
      f"other than relu are softmax attention over cosines (exp: temperature 1, "
      f"exp_tT: temperature T), a comparison, not TransFusion.\n\n"]
  if base:
    parts.append(f"Random-init {s['backbone']} (BatchNorm statistics of the "
                 f"data), same split: kNN {cell(base, 'knn')}, linear "
                 f"{cell(base, 'linear')}.\n\n")
  for name in s["targets"]:
    rows = [r for r in s["rows"] if r["target"] == name]
    parts.append(f"## {name} ({TARGET_TITLES.get(name, name)}), "
                 f"{rows[0]['steps']} steps\n\n{_table(rows)}\n"
                 f"Best ReLU form (validation kNN): {s['best_relu'][name]}.\n\n")
  if s["budget"]:
    target = s["budget"][0]["target"]
    parts.append(f"## Budget: {target}, best ReLU forms, longer training\n\n"
                 f"{_table(s['budget'], with_steps=True)}\n")
  parts.append(f"Time: {s['total_minutes']:.1f} min on {s['machine']}.\n")
  return "".join(parts)


def plot(s, path):
  """Validation kNN and linear accuracy: one panel per target and metric
  (bars: head forms; groups: final projection; error bars: std over seeds),
  plus the budget panel; the random-init backbone as a dashed line."""
  import numpy as np
  plt = pyplot()
  names = s["targets"]
  panels = [(n, "rows") for n in names] + ([("budget", "budget")] if s["budget"] else [])
  metrics = ("knn", "linear")
  fig, axes = plt.subplots(len(metrics), len(panels),
                           figsize=(4.6 * len(panels), 3.4 * len(metrics)),
                           squeeze=False)
  base = s["random_baseline"]
  handles = {}
  colors = {}
  palette = plt.get_cmap("tab10").colors
  for j, (name, source) in enumerate(panels):
    if source == "rows":
      rows = [r for r in s["rows"] if r["target"] == name]
      groups = list(dict.fromkeys(r["projection"] for r in rows if r["part"] == "relu"))
      groups += ["comparison"] if any(r["part"] == "comparison" for r in rows) else []
      group_of = lambda r: "comparison" if r["part"] == "comparison" else r["projection"]
      bar_of = lambda r: (f"ReLU, L{r['layers']}" if r["part"] == "relu"
                          else f"softmax {r['activation']} (comparison)")
      comp = [r for r in rows if r["part"] == "comparison"]
      comp_label = (f"softmax at\nL{comp[0]['layers']} {comp[0]['projection']}"
                    if comp else "")
      title = f"{name} ({TARGET_TITLES.get(name, name)}), {rows[0]['steps']} steps"
    else:
      rows = s["budget"]
      groups = list(dict.fromkeys(f"L{r['layers']} {r['projection']}" for r in rows))
      group_of = lambda r: f"L{r['layers']} {r['projection']}"
      bar_of = lambda r: f"{r['steps']} steps"
      comp_label = ""
      title = f"{rows[0]['target']}: longer training"
    bars = list(dict.fromkeys(bar_of(r) for r in rows))
    in_group = {g: [b for b in bars if any(group_of(r) == g and bar_of(r) == b
                                           for r in rows)] for g in groups}
    width = 0.8 / max(len(v) for v in in_group.values())
    for i, metric in enumerate(metrics):
      ax = axes[i][j]
      values = []
      for bar in bars:
        xs, ys, es = [], [], []
        for g_index, group in enumerate(groups):
          match = [r for r in rows if group_of(r) == group and bar_of(r) == bar]
          if match and metric in match[0]:
            k, m = in_group[group].index(bar), len(in_group[group])
            xs.append(g_index + (k - (m - 1) / 2) * width)
            ys.append(match[0][metric])
            es.append(match[0].get(f"{metric}_std", 0.0))
        if not xs:
          continue
        color = colors.setdefault(bar, palette[len(colors) % len(palette)])
        h = ax.bar(xs, ys, width, yerr=es, capsize=2, color=color,
                   hatch="//" if "exp" in bar else None, edgecolor="black",
                   linewidth=0.4)
        handles.setdefault(bar, h)
        values += [y - e for y, e in zip(ys, es)] + [y + e for y, e in zip(ys, es)]
      if base and metric in base:
        ax.axhline(base[metric], color="gray", ls="--", lw=1)
        ax.axhspan(base[metric] - base.get(f"{metric}_std", 0.0),
                   base[metric] + base.get(f"{metric}_std", 0.0), color="gray",
                   alpha=0.15, lw=0)
        handles.setdefault("random-init backbone (± std)",
                           plt.Line2D([], [], color="gray", ls="--"))
        values += [base[metric]]
      if values:
        lo, hi = float(np.min(values)), float(np.max(values))
        pad = max(0.02, 0.1 * (hi - lo))
        ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad))
      ax.set_xticks(range(len(groups)))
      ax.set_xticklabels([comp_label if g == "comparison" else g
                          for g in groups], fontsize=8)
      ax.set_ylabel(f"validation {metric} (y axis cut)", fontsize=8)
      ax.set_title(f"{title}: {metric}", fontsize=8.5)
      ax.grid(axis="y", alpha=0.3)
  fig.legend(list(handles.values()), list(handles.keys()), fontsize=8,
             loc="upper center", bbox_to_anchor=(0.5, 0.0),
             ncol=min(6, len(handles)))
  fig.suptitle(f"Head ablation on {s['dataset']} (validation split): backbone "
               "accuracy per form of the truncated block, mean ± std over seeds "
               "(hatched: softmax comparison, not TransFusion)", fontsize=10)
  save(fig, path)


def main(argv=None):
  return cli(run, "head_ablation", argv, __doc__)


if __name__ == "__main__":
  main(sys.argv[1:])
