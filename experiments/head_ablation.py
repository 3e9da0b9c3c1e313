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
results.json and head_ablation.png.
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
from experiments.report import (
  cell,
  formatted,
  machine,
  markdown_table,
  mean_std,
  pyplot,
  save,
  write_report,
)

METRICS = ("knn", "linear", "knn_head", "uniform_rows", "final_loss")
TARGET_TITLES = {"transfusion": "class targets", "transfusion_ssl": "self-supervised"}


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


def report(config, workdir: str, summary) -> None:
  """Writes results.md, results.json and head_ablation.png; prints the markdown."""
  md = results_markdown(config, summary)
  write_report(workdir, md, summary)
  plot(summary, os.path.join(workdir, "head_ablation.png"))
  print("\n" + md)
  print(f"wrote {workdir}/results.md, results.json, head_ablation.png")


def _table(rows, with_steps=False):
  cols = ["form", "activation", *(["steps"] if with_steps else []), *METRICS, "margin", "seeds"]
  return markdown_table(
    [
      {
        **formatted(r, METRICS),
        "activation": (
          r["activation"]
          if r["activation"] == "relu"
          else f"{r['activation']} (softmax, comparison)"
        ),
        "margin": f"{r['margin_sigma']:+.1f}σ" if "margin_sigma" in r else "",
      }
      for r in rows
    ],
    cols,
  )


def results_markdown(config, s) -> str:
  base, frac = s["random_baseline"], s["validation_fraction"]
  parts = [
    f"# Head ablation: {s['dataset']}, backbone {s['backbone']}, validation split\n\n"
    f"Every run trains on {1 - frac:.0%} of the training split and is scored on the "
    f"held-out, class-balanced {frac:.0%} (seed 0); the test split is not read. "
    f"Mean ± std (ddof 1) over seeds {s['seeds']}. knn / linear: kNN (k = "
    f"{config.eval.knn_k}) and linear probe ({config.eval.linear_steps} steps) on the "
    "backbone features; knn_head: kNN on the head's fused features (the projector's "
    "embeddings for a 1-layer head); uniform_rows: fraction of dead (uniform) adjacency "
    "rows at the last logged step; margin: (kNN − random kNN) / sqrt(std² + std_random²). "
    "Forms: L<layers> <final projection>; learned = LayerNorm + Q, K; tied = LayerNorm + "
    "one projection; norm = LayerNorm only; none = no parameters. Activations other than "
    "relu are softmax attention over cosines (exp: temperature 1, exp_tT: temperature T), "
    "a comparison, not TransFusion.\n\n"
  ]
  if base:
    parts.append(
      f"Random-init {s['backbone']} (BatchNorm statistics of the data), same "
      f"split: kNN {cell(base, 'knn')}, linear {cell(base, 'linear')}.\n\n"
    )
  for name in s["targets"]:
    rows = [r for r in s["rows"] if r["target"] == name]
    parts.append(
      f"## {name} ({TARGET_TITLES.get(name, name)}), {rows[0]['steps']} steps"
      f"\n\n{_table(rows)}\nBest ReLU form (validation kNN): "
      f"{s['best_relu'][name]}.\n\n"
    )
  if s["budget"]:
    parts.append(
      f"## Budget: {s['budget'][0]['target']}, best ReLU forms, longer training"
      f"\n\n{_table(s['budget'], with_steps=True)}\n"
    )
  parts.append(f"Time: {s['total_minutes']:.1f} min on {s['machine']}.\n")
  return "".join(parts)


def _panel(s, name, source):
  """(rows, groups, group_of, bar_of, comparison tick label, title) of one figure column."""
  if source == "budget":
    rows = s["budget"]
    group_of = lambda r: f"L{r['layers']} {r['projection']}"
    return (
      rows,
      list(dict.fromkeys(map(group_of, rows))),
      group_of,
      lambda r: f"{r['steps']} steps",
      "",
      f"{rows[0]['target']}: longer training",
    )
  rows = [r for r in s["rows"] if r["target"] == name]
  comp = [r for r in rows if r["part"] == "comparison"]
  groups = list(dict.fromkeys(r["projection"] for r in rows if r["part"] == "relu"))
  return (
    rows,
    groups + (["comparison"] if comp else []),
    lambda r: "comparison" if r["part"] == "comparison" else r["projection"],
    lambda r: (
      f"ReLU, L{r['layers']}" if r["part"] == "relu" else f"softmax {r['activation']} (comparison)"
    ),
    f"softmax at\nL{comp[0]['layers']} {comp[0]['projection']}" if comp else "",
    f"{name} ({TARGET_TITLES.get(name, name)}), {rows[0]['steps']} steps",
  )


def plot(s, path):
  """Validation kNN and linear accuracy: one panel per target and metric (bars: head forms;
  groups: final projection; error bars: std over seeds), plus the budget panel; the
  random-init backbone as a dashed line."""
  import numpy as np

  plt = pyplot()
  panels = [(n, "rows") for n in s["targets"]] + ([("budget", "budget")] if s["budget"] else [])
  metrics = ("knn", "linear")
  fig, axes = plt.subplots(
    len(metrics), len(panels), squeeze=False, figsize=(4.6 * len(panels), 3.4 * len(metrics))
  )
  base, handles, colors = s["random_baseline"], {}, {}
  palette = plt.get_cmap("tab10").colors
  for j, (name, source) in enumerate(panels):
    rows, groups, group_of, bar_of, comp_label, title = _panel(s, name, source)
    bars, cell_of = list(dict.fromkeys(map(bar_of, rows))), {}
    for r in rows:  # the first row of a (group, bar)
      cell_of.setdefault((group_of(r), bar_of(r)), r)
    in_group = {g: [b for b in bars if (g, b) in cell_of] for g in groups}
    width = 0.8 / max(len(v) for v in in_group.values())
    for i, metric in enumerate(metrics):
      ax, values = axes[i][j], []
      for bar in bars:
        hits = [
          (g, cell_of[group, bar], in_group[group])
          for g, group in enumerate(groups)
          if metric in cell_of.get((group, bar), {})
        ]
        if not hits:
          continue
        xs = [g + (peers.index(bar) - (len(peers) - 1) / 2) * width for g, _, peers in hits]
        ys = [r[metric] for _, r, _ in hits]
        es = [r.get(f"{metric}_std", 0.0) for _, r, _ in hits]
        color = colors.setdefault(bar, palette[len(colors) % len(palette)])
        h = ax.bar(
          xs,
          ys,
          width,
          yerr=es,
          capsize=2,
          color=color,
          hatch="//" if "exp" in bar else None,
          edgecolor="black",
          linewidth=0.4,
        )
        handles.setdefault(bar, h)
        values += [y - e for y, e in zip(ys, es)] + [y + e for y, e in zip(ys, es)]
      if base and metric in base:
        std = base.get(f"{metric}_std", 0.0)
        ax.axhline(base[metric], color="gray", ls="--", lw=1)
        ax.axhspan(base[metric] - std, base[metric] + std, color="gray", alpha=0.15, lw=0)
        handles.setdefault(
          "random-init backbone (± std)", plt.Line2D([], [], color="gray", ls="--")
        )
        values += [base[metric]]
      if values:
        lo, hi = float(np.min(values)), float(np.max(values))
        pad = max(0.02, 0.1 * (hi - lo))
        ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad))
      ax.set_xticks(range(len(groups)))
      ax.set_xticklabels([comp_label if g == "comparison" else g for g in groups], fontsize=8)
      ax.set_ylabel(f"validation {metric} (y axis cut)", fontsize=8)
      ax.set_title(f"{title}: {metric}", fontsize=8.5)
      ax.grid(axis="y", alpha=0.3)
  fig.legend(
    list(handles.values()),
    list(handles.keys()),
    fontsize=8,
    loc="upper center",
    bbox_to_anchor=(0.5, 0.0),
    ncol=min(6, len(handles)),
  )
  fig.suptitle(
    f"Head ablation on {s['dataset']} (validation split): backbone "
    "accuracy per form of the truncated block, mean ± std over seeds "
    "(hatched: softmax comparison, not TransFusion)",
    fontsize=10,
  )
  save(fig, path)


def main(argv=None):
  return cli(run, "head_ablation", argv, __doc__)


if __name__ == "__main__":
  main(sys.argv[1:])
