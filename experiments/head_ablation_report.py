"""The head ablation's report (experiments/head_ablation.py): results.md /
results.json (one table per target, the budget table) and head_ablation.png.
"""

from __future__ import annotations

import os

from experiments.report import cell, formatted, markdown_table, pyplot, save, write_report

# The metrics of each row (mean ± std over its seeds), in table order.
METRICS = ("knn", "linear", "knn_head", "uniform_rows", "final_loss")
TARGET_TITLES = {"transfusion": "class targets", "transfusion_ssl": "self-supervised"}


def report(config, workdir: str, summary) -> None:
  """Writes results.md, results.json and head_ablation.png; prints the markdown."""
  md = results_markdown(config, summary)
  write_report(workdir, md, summary)
  plot(summary, os.path.join(workdir, "head_ablation.png"))
  print("\n" + md)
  print(f"wrote {workdir}/results.md, results.json, head_ablation.png")


def _table(rows, with_steps=False):
  """The rows' metrics (mean ± std), activation and margin as a markdown table."""
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
  """results.md: the protocol, the random-init baseline, each target's forms, the budget."""
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
