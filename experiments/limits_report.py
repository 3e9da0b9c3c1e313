"""TransFusion's limits' report (experiments/limits.py): results.md / results.json
(the limits, both sweeps, the notes) and its figures (limits_augmentation.png,
limits_batch.png, limits_coverage.png).
"""

from __future__ import annotations

import math
import os

import numpy as np

from experiments.configs.limits import NOTES
from experiments.report import markdown_table, pyplot, save, write_report
from tfjax import theory

AUG_COLUMNS = (
  "s knn_acc final_jsd cos_pos cos_pos_theory cos_other cos_other_theory win_other win_same"
)
BATCH_COLUMNS = "n knn_acc final_jsd uncovered uncovered_theory batch_fail batch_fail_theory"
LIMIT_COLUMNS = ["limit", "predicted", "measured", "tolerance"]


def report(config, workdir: str, summary, sources: int) -> None:
  """The three figures, results.md (limits, both sweeps, notes) and results.json;
  prints results.md.  ``sources``: the augmentation sweep's training sources."""
  aug, bat, baselines = summary["augmentation"], summary["batch"], summary["baselines"]
  s_meas, n_meas = aug["measured_s_max"], bat["measured_n_min"]
  above = [r["s"] for r in aug["rows"] if r["s"] > s_meas]
  s_bracket = f"[{s_meas:g}, {above[0]:g})" if above else f"≥ {s_meas:g} (grid end)"
  below = [r["n"] for r in bat["rows"] if r["n"] < n_meas]
  n_bracket = f"({below[-1]}, {n_meas}]" if below else f"≤ {n_meas} (grid start)"
  cov_se = max(
    math.sqrt(r["batch_fail_theory"] * (1 - r["batch_fail_theory"]) / config.num_steps)
    for r in bat["rows"]
  )
  plot_figures(config, workdir, summary)
  s_pred = f"{aug['predicted_s_max_other']:.2f} (other class, z=2); "
  s_pred += f"{aug['predicted_s_max_same']:.2f} (same class)"
  limits_rows = [  # limit, predicted, measured, tolerance
    ("max augmentation s_max", s_pred, f"{s_meas:g}, i.e. in {s_bracket}", aug["tolerance"]),
    (
      f"min batch size n_min (δ={config.delta})",
      str(bat["predicted_n_min"]),
      f"{n_meas}, i.e. in {n_bracket}",
      bat["tolerance"],
    ),
  ]
  m, bb = config.model, config.backbone_kwargs
  md = (
    f"# TransFusion's limits: prediction vs measurement\n\n"
    f"Model data: K={m.num_classes}, d={m.dim}, σ={m.sigma}, ρ={m.rho}; encoder MLP"
    f"{tuple(bb['hidden'])}→{bb['out_features']}, TransFusion head L={config.head.num_layers} "
    f"({config.head.activation}, tied initial Q/K: {config.head.tie_qk_init}), {config.optimizer} "
    f"lr={config.learning_rate} (weight decay {config.weight_decay}, {config.schedule} schedule), "
    f"{config.num_steps} steps per point, seed {config.seed}. kNN (k={config.eval.knn_k}, "
    f"τ={config.eval.knn_temperature}) on the encoder output, {config.n_test} clean reference "
    f"and {config.n_test} clean test points. Reference kNN: raw input {baselines['raw']:.3f}, "
    f"encoder at init {baselines['init']:.3f}.\n\n"
    "## Limits\n\n"
    + markdown_table([dict(zip(LIMIT_COLUMNS, r)) for r in limits_rows], LIMIT_COLUMNS)
    + f"\n## Augmentation sweep (self-supervised, {config.batch_size} sources × 2 views)\n\n"
    + markdown_table(aug["rows"], AUG_COLUMNS.split())
    + f"\n## Batch-size sweep (supervised, 1 view, s={config.s_batch})\n\n"
    + markdown_table(bat["rows"], BATCH_COLUMNS.split())
    + f"\nCoverage: largest |measured − theory| over the grid: uncovered-row "
    f"fraction {bat['max_abs_err_uncovered']:.4f}, batch failure rate "
    f"{bat['max_abs_err_batch_fail']:.4f} (largest binomial SE of the failure rate "
    f"over {config.num_steps} batches: {cov_se:.4f}).\n"
    f"\n## Notes\n\n{notes(config, summary, s_bracket, n_bracket, cov_se, sources)}"
    f"\n\nTime {summary['seconds']:.0f} s.\n"
  )
  write_report(workdir, md, summary)
  print(md)


def notes(config, summary, s_bracket, n_bracket, cov_se, sources):
  """The notes of results.md: the config file's ``NOTES`` with this run's numbers."""
  aug, bat, baselines = summary["augmentation"], summary["batch"], summary["baselines"]
  s_pred, s_meas = aug["predicted_s_max_other"], aug["measured_s_max"]
  n_pred, n_meas = bat["predicted_n_min"], bat["measured_n_min"]
  cov_err, fail_err = bat["max_abs_err_uncovered"], bat["max_abs_err_batch_fail"]
  best_aug = max(r["knn_acc"] for r in aug["rows"])
  agree_s = "agree" if abs(s_meas - s_pred) <= 0.25 * s_pred else "disagree"
  ok = fail_err <= 3 * cov_se + 1e-9
  within = "within sampling error" if ok else "NOT within 3 SE: check the coverage counting"
  agree_n = "agree" if abs(n_meas - n_pred) <= 0.5 * n_pred else "disagree"
  return NOTES.format(**locals())  # the template's fields are these names


def plot_figures(config, workdir, summary):
  """limits_augmentation.png, limits_batch.png and limits_coverage.png."""
  aug, bat, base = summary["augmentation"], summary["batch"], summary["baselines"]
  m, k, thin = config.model, config.model.num_classes, {"ls": "--", "lw": 1}
  s_pred, s_same, s_meas = (
    aug[f] for f in ("predicted_s_max_other", "predicted_s_max_same", "measured_s_max")
  )
  fig, ax, tw = sweep_axes(
    aug,
    "s",
    base,
    "augmentation strength s",
    "augmentation sweep (self-supervised): kNN accuracy vs s",
  )
  ax.axvline(s_pred, color="C3", label=f"predicted s_max (other class) {s_pred:.2f}")
  ax.axvline(s_same, color="C3", **thin, label=f"predicted s_max (same class) {s_same:.2f}")
  ax.axvline(s_meas, color="C0", **thin, label=f"measured s_max {s_meas:.2f}")
  grid = np.linspace(0, max(r["s"] for r in aug["rows"]) * 1.05, 120)
  for v, ls in (("other_class", "-"), ("same_class", "--")):
    win = np.asarray(theory.win_probability(m.sigma, grid, m.rho, m.dim, versus=v))
    tw.plot(grid, win, color="C2", lw=1, ls=ls, label=f"theory P(positive wins), {v}")
  finish_sweep(
    fig,
    ax,
    tw,
    "predicted win probability",
    (0.45, 1.01),
    os.path.join(workdir, "limits_augmentation.png"),
  )
  n_pred, n_meas = bat["predicted_n_min"], bat["measured_n_min"]
  fig, ax, tw = sweep_axes(
    bat,
    "n",
    base,
    "batch size n (supervised, i.i.d. labels)",
    "batch-size sweep (supervised): kNN accuracy vs n",
  )
  ax.axvline(n_pred, color="C3", label=f"predicted n_min (δ={config.delta}) {n_pred}")
  ax.axvline(n_meas, color="C0", **thin, label=f"measured n_min {n_meas}")
  grid = np.arange(2, max(max(r["n"] for r in bat["rows"]), n_pred) + 2)
  cover = [theory.coverage_probability(int(g), k) for g in grid]
  tw.plot(grid, cover, color="C2", lw=1, label="theory P(every row has a positive)")
  finish_sweep(
    fig, ax, tw, "coverage probability", (0, 1.01), os.path.join(workdir, "limits_batch.png")
  )
  plot_coverage(os.path.join(workdir, "limits_coverage.png"), bat["rows"], k)


def sweep_axes(sweep, key, baselines, xlabel, title):
  """A sweep's figure: kNN accuracy vs ``key``, its tolerance band and the baselines;
  a second y-axis for theory curves."""
  plt = pyplot()
  xs, acc, tol = (
    [r[key] for r in sweep["rows"]],
    [r["knn_acc"] for r in sweep["rows"]],
    sweep["tolerance"],
  )
  fig, ax = plt.subplots(figsize=(6.4, 3.8))
  ax.plot(xs, acc, "o-", color="C0", label="kNN accuracy (encoder output)")
  ax.axhspan(
    max(acc) - tol, max(acc), color="C0", alpha=0.12, label=f"within tol={tol:.3f} of best"
  )
  for name, b, ls in (("raw input", "raw", ":"), ("encoder at init", "init", "-.")):
    ax.axhline(baselines[b], color="gray", ls=ls, lw=1, label=f"kNN, {name}")
  ax.set_xlabel(xlabel), ax.set_ylabel("kNN accuracy"), ax.set_title(title, fontsize=9)
  return fig, ax, ax.twinx()


def finish_sweep(fig, ax, tw, ylabel, ylim, path):
  """Labels and limits the theory axis, puts one legend for both y-axes below
  them (off the data) and saves the figure."""
  tw.set_ylabel(ylabel, color="C2"), tw.set_ylim(*ylim)
  (h1, l1), (h2, l2) = ax.get_legend_handles_labels(), tw.get_legend_handles_labels()
  below = {"loc": "upper center", "bbox_to_anchor": (0.5, -0.2), "ncol": 2, "frameon": False}
  ax.legend(h1 + h2, l1 + l2, fontsize=6, **below)
  save(fig, path, dpi=100)


def plot_coverage(path, rows, k):
  """Rows without a positive and batches with such a row: measured vs theory over n."""
  plt = pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
  n = [r["n"] for r in rows]
  grid = np.arange(2, max(n) + 2)
  for ax, formula, key, ylabel, title in zip(
    axes,
    (theory.expected_uncovered_fraction, theory.failure_probability),
    ("uncovered", "batch_fail"),
    ("fraction of rows without positive", "P(some row has no positive)"),
    ("rows without a positive", "batches with such a row"),
  ):
    theory_label = "theory (left: (1 − 1/K)^(n−1); right: exact)"
    ax.plot(grid, [formula(int(g), k) for g in grid], color="C2", label=theory_label)
    ax.plot(n, [r[key] for r in rows], "o", color="C0", label="measured (training batches)")
    ax.set_xlabel("batch size n"), ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
  h, l = axes[0].get_legend_handles_labels()
  fig.legend(h, l, fontsize=7, loc="lower center", ncol=2, frameon=False)
  fig.tight_layout(rect=(0, 0.08, 1, 1))
  fig.savefig(path, dpi=100)
  plt.close(fig)
