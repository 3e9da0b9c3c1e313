"""The recipe sweep's report (experiments/recipe_sweep.py): chosen.json,
results.md / results.json (every run, the chosen recipes, the transfer check)
and recipe_sweep.png.
"""

from __future__ import annotations

import json
import os

from experiments.report import formatted, markdown_table, pyplot, save, write_report


def write(config, summary, names, stages, workdir) -> None:
  """chosen.json, results.md, results.json and recipe_sweep.png of ``summary``
  (``stages``: the names of the sweep's stages, in order)."""
  with open(os.path.join(workdir, "chosen.json"), "w") as f:
    json.dump(summary["chosen"], f, indent=2)
  md = results_markdown(config, summary)
  write_report(workdir, md, summary)
  plot(summary, names, stages, os.path.join(workdir, "recipe_sweep.png"))
  print("\n" + md)
  print(f"wrote {workdir}/results.md, results.json, chosen.json, recipe_sweep.png")


def results_markdown(config, s) -> str:
  """results.md: every run, the chosen recipes, the transfer check, the time."""
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
    + (
      f"## Transfer check: {tr.dataset}, test split\n\n"
      f"Trained on {tr.dataset}'s training split, evaluated on its test split, "
      f"{tr.seeds} seeds (mean ± std); {steps}; linear probe of "
      f"{tr.linear_steps} steps.\n\n{transfer_table}\n"
      if tr.seeds
      else "No transfer check (transfer.seeds = 0).\n\n"
    )
    + f"Time: sweep {s['sweep_minutes']:.1f} min, transfer check "
    f"{s['transfer_minutes']:.1f} min, total {s['total_minutes']:.1f} min on "
    f"{s['machine']}.\n"
  )


def plot(s, names, stages, path):
  """Validation kNN of every setting, one panel per method, grouped by stage."""
  plt = pyplot()
  colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
  fig, axes = plt.subplots(
    1, len(names), figsize=(4.2 * len(names), 4.2), sharey=True, squeeze=False
  )
  axes, base = axes[0], s["random_baseline_validation"]
  for ax, name in zip(axes, names):
    x, ticks, labels = 0, [], []
    for stage, color in zip(range(1, len(stages) + 1), colors):
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
          label=f"stage {stage}: {stages[stage - 1]}",
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
