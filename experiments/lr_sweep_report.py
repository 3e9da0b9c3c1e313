"""The learning-rate sweep's report (experiments/lr_sweep.py): results.md / results.json
(the protocol, the verdicts, Table 3's comparison, the sweep) and its figures
(lr_sweep_accuracy.png, lr_sweep_variance.png, lr_sweep_table3.png,
lr_sweep_mechanism_DATASET.png).
"""

from __future__ import annotations

import os
from typing import Dict, List

import numpy as np

from experiments.configs.lr_sweep import PAPER
from experiments.report import markdown_table, pm, pyplot, save, write_report
from tfjax import methods

FINETUNE = ("finetune@0.1", "finetune@0.5", "finetune@1")
PERCENT = ("10 %", "50 %", "100 %")  # Table 3's columns: the labels of FINETUNE
SHOWN = ("finetune@0.1", "knn", "variance", "min_variance")  # per run, and in the sweep's tables
OARS = ("no", "yes")
COLORS = [f"tab:{c}" for c in "blue orange green red purple brown pink olive".split()]
RANDOM = "random init (BatchNorm of the data)"
LR_CHOSEN, PAPER_COL = "lr (chosen on validation)", "paper (CIFAR-10, ResNet-18)"
# The sweep's figures: (key, file, y label, title).
SWEEP_FIGURES = (
  (
    "finetune@0.1",
    "lr_sweep_accuracy.png",
    "fine-tuning accuracy, 10 % labels\n(validation split)",
    "Accuracy across the learning-rate sweep",
  ),
  (
    "variance",
    "lr_sweep_variance.png",
    "embedding variance at the end\n(validation projector outputs)",
    "Collapse across the sweep (0 = one point)",
  ),
)
# The mechanism's figure: (logged key, panel title).
MECHANISM = (
  ("embedding_variance", "embedding variance (batch)"),
  ("param_norm", "backbone weight norm"),
  ("base_grad_norm", "base-loss gradient norm"),
  ("oar_grad_norm", "OAR gradient norm"),
)


def write(workdir, report, names, config) -> None:
  """The sweep's and Table 3's figures, results.md (printed too) and results.json."""
  plot_sweep(workdir, report, names)
  plot_table3(workdir, report, names)
  md = markdown(report, names, config)
  write_report(workdir, md, report)
  print(md)


def label(loss, oar) -> str:
  return ("OAR-" if oar == "yes" else "") + methods.get(loss).display_name


def _legend(ax, source=None) -> None:
  """The legend of ``source``'s artists (default ``ax``'s), right of ``ax``."""
  handles, labels = (source or ax).get_legend_handles_labels()
  ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))


def _sweep_series(entry, loss, oar, key):
  """``(lrs, means, stds)`` of ``key`` over the sweep of one variant, by learning rate."""
  pts = sorted(
    (float(k.split("|")[2]), s) for k, s in entry["sweep"].items() if k.startswith(f"{loss}|{oar}|")
  )
  pts = [(lr, s[key], s[key + "_std"]) for lr, s in pts if s[key] is not None]
  return [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]


def plot_sweep(workdir, report, names):
  """The sweep's figures (:data:`SWEEP_FIGURES`): a panel per dataset, a line per variant."""
  datasets, colors = list(report["datasets"]), dict(zip(names, COLORS))
  for key, fname, ylabel, title in SWEEP_FIGURES:
    fig, axes = pyplot().subplots(
      1, len(datasets), figsize=(max(7.0, 5.2 * len(datasets)), 3.8), squeeze=False, sharey=True
    )
    for ax, dataset in zip(axes[0], datasets):
      entry = report["datasets"][dataset]
      for loss in names:
        for oar, ls in zip(OARS, ("--", "-")):
          x, y, e = _sweep_series(entry, loss, oar, key)
          style = dict(fmt=ls, marker="o", ms=4, capsize=3, color=colors[loss])
          ax.errorbar(x, y, yerr=e, **style, label=label(loss, oar))
      if key == "finetune@0.1":
        ax.axhline(entry["random_validation"][key], color="gray", ls=":", label=RANDOM)
        ax.axhline(1 / entry["num_classes"], color="black", lw=0.8, ls="-.", label="chance")
      else:
        ax.axhline(report["collapse_variance"], color="gray", ls=":", label="collapse threshold")
      ax.set_xscale("log")
      ax.set_ylim(0, 1.02)
      ax.set_xlabel("learning rate")
      ax.set_title(dataset, fontsize=10)
    axes[0][0].set_ylabel(ylabel)
    _legend(axes[0][-1])
    seeds = len(report["config"]["seeds"])
    fig.suptitle(
      f"{title}: mean ± std over {seeds} seeds (dashed: base loss, solid: with OAR)", fontsize=9
    )
    save(fig, os.path.join(workdir, fname), dpi=100)


def plot_table3(workdir, report, names):
  """Table 3's comparison as bars: ours per dataset (test split), then the paper's."""
  datasets, colors = list(report["datasets"]), dict(zip(names, COLORS))
  groups = [(loss, oar) for loss in names for oar in OARS]
  fig, axes = pyplot().subplots(
    1, len(datasets) + 1, figsize=(4.6 * (len(datasets) + 1), 3.8), squeeze=False, sharey=True
  )
  width = 0.8 / len(groups)
  for ax, dataset in zip(axes[0], datasets + ["paper"]):
    for i, (loss, oar) in enumerate(groups):
      if dataset == "paper":
        vals, errs = PAPER[loss][oar == "yes"] if loss in PAPER else (0, 0, 0), None
      else:
        s = report["datasets"][dataset]["test"].get(f"{loss}|{oar}")
        vals = [s[k] or 0 if s else 0 for k in FINETUNE]
        errs = [s[k + "_std"] or 0 if s else 0 for k in FINETUNE]
      alpha = 1.0 if oar == "yes" else 0.45
      style = dict(yerr=errs, capsize=2, color=colors[loss], alpha=alpha, label=label(loss, oar))
      ax.bar([j + i * width for j in range(3)], vals, width, **style)
    if dataset != "paper":
      rnd = report["datasets"][dataset]["random_test"]
      for j, k in enumerate(FINETUNE):  # one mark over each group of bars
        x, lab = [j - width / 2, j + 0.8 - width / 2], RANDOM if j == 0 else None
        ax.plot(x, [rnd[k]] * 2, "--", color="black", lw=1.2, label=lab)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(3)], list(PERCENT))
    ax.set_xlabel("labels for fine-tuning")
    ours = f"ours, {dataset} (test, lr chosen on validation)"
    ax.set_title("CLOA draft, CIFAR-10 (Table 3)" if dataset == "paper" else ours, fontsize=9)
    ax.set_ylim(0, 1.05)
  axes[0][0].set_ylabel("test accuracy")
  _legend(axes[0][-1], axes[0][0])
  fig.suptitle(
    "Table 3's comparison: fine-tuned accuracy with and without OAR "
    "(pale: base loss, solid: with OAR; error bars: std over seeds)",
    fontsize=9,
  )
  save(fig, os.path.join(workdir, "lr_sweep_table3.png"), dpi=100)


def plot_mechanism(workdir, dataset, loss, plain, curves, grid, threshold):
  """Per-step mechanism of ``loss`` ± OAR (seed 0's ``curves``) at the learning rate
  where its variance without OAR (``plain``: lr -> summary) was lowest: variance,
  weight norm, both gradient norms (:data:`MECHANISM`)."""
  ok = {lr: s for lr, s in plain.items() if s["min_variance"] is not None}
  lr = min(ok, key=lambda x: ok[x]["min_variance"]) if ok else max(grid)
  fig, axes = pyplot().subplots(1, 4, figsize=(15, 3.4))
  for ax, (key, title) in zip(axes, MECHANISM):
    for oar, ls, color in zip(OARS, ("--", "-"), ("tab:blue", "tab:red")):
      c = curves.get((loss, oar, lr))
      if c and c["step"]:
        y = [np.nan if v is None else v for v in c[key]]
        ax.plot(c["step"], y, ls, color=color, label=label(loss, oar))
    if key == "embedding_variance":
      ax.axhline(threshold, color="gray", ls=":", label="collapse threshold")
      ax.set_ylim(0, 1.02)
    elif key != "param_norm":
      ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step")
  _legend(axes[-1])
  fig.suptitle(
    f"{dataset}: the mechanism at lr {lr:.3g} (the lowest variance of "
    f"{methods.get(loss).display_name} in the sweep; seed 0)",
    fontsize=9,
  )
  save(fig, os.path.join(workdir, f"lr_sweep_mechanism_{dataset}.png"), dpi=100)


def markdown(report, names, config) -> str:
  """results.md: the protocol, the verdicts, Table 3's comparison, the sweep."""
  o, entries, seeds = config.oar, report["datasets"].items(), report["config"]["seeds"]
  labelled = f" plus a separate labelled batch of {o.labelled_batch_size}"
  verdicts = [
    {"dataset": d, **v, "verdict": f"**{v['verdict']}**"} for d, e in entries for v in e["verdicts"]
  ]
  lines = [
    f"# CLOA's learning-rate protocol: collapse and OAR ({len(seeds)} seeds, mean ± std)",
    "",
    f"Protocol: temperature {config.temperature}, SGD momentum {config.momentum}, "
    f"weight decay {config.weight_decay}, cosine schedule with "
    f"{config.warmup_steps} warm-up steps, {config.num_steps} steps of batch "
    f"{config.batch_size}{labelled if o.separate_batch else ''} for OAR "
    f"(λ = {o.weight}, {o.label_fraction:.0%} labels); fine-tuning head "
    f"{config.eval.finetune_steps} steps. Sweep on a {config.sweep_validation_fraction:.0%} "
    "validation split; the Table-3 rows retrain each variant at its validation-chosen "
    "learning rate and report the test split.",
    "",
    "## Verdicts",
    "",
    markdown_table(verdicts, ["dataset", "claim", "verdict", "evidence"])
    + "\n## Table 3's comparison (test split; fine-tuning accuracy at 10 / 50 / 100 % labels)",
    "",
    markdown_table(table3(report, names), ["dataset", "method", LR_CHOSEN, *PERCENT, PAPER_COL]),
    "## The sweep (validation split)",
    "",
  ]
  for dataset, entry in entries:
    grid = ", ".join(f"{lr:.3g}" for lr in entry["grid"])
    lines += [
      f"### {dataset} (chance {1 / entry['num_classes']:.2f}; learning rates {grid})",
      "",
      markdown_table(sweep_rows(entry), ["method", "lr", *SHOWN, "status"]),
      "",
    ]
  lines += [
    "`variance`: 1 − ‖mean‖² of the normalised projector outputs of the "
    "evaluation split at the end (0 = one point); `min_variance`: its "
    "lowest value over training (the logged training batches and the end), "
    "which shows a transient collapse the run recovered from. The paper "
    "reports InfoNCE at lr = 1 at accuracy .10 and variance ≈ .05, "
    "OAR-InfoNCE at .665 and ≈ .89 (CIFAR-10).",
    "",
    f"Time {report['seconds']:.0f} s.",
  ]
  return "\n".join(lines) + "\n"


def table3(report, names) -> List[Dict]:
  """Table 3's rows: each variant's test accuracy at its chosen learning rate beside
  the paper's, then the random-init backbone, per dataset."""
  rows = []
  for d, e in report["datasets"].items():
    for loss in names:
      for oar in OARS:
        s, lr = e["test"].get(f"{loss}|{oar}"), e["chosen_lr"].get(f"{loss}|{oar}")
        paper = PAPER[loss][oar == "yes"] if loss in PAPER else None
        rows.append(
          {
            "dataset": d,
            "method": label(loss, oar),
            LR_CHOSEN: "—" if lr is None else f"{lr:.3g}",
            **{c: pm(s and s[k], s and s[k + "_std"]) for c, k in zip(PERCENT, FINETUNE)},
            PAPER_COL: "/".join(f"{v:.3f}" for v in paper) if paper else "—",
          }
        )
    rnd = {c: pm(e["random_test"][k]) for c, k in zip(PERCENT, FINETUNE)}
    rows.append({"dataset": d, "method": RANDOM, LR_CHOSEN: "—", PAPER_COL: "—", **rnd})
  return rows


def sweep_rows(entry) -> List[Dict]:
  """The sweep's rows of one dataset (validation split), then the random-init backbone."""
  rows = [
    {
      "method": label(*key.split("|")[:2]),
      "lr": key.split("|")[2],
      **{k: pm(s[k], s[k + "_std"]) for k in SHOWN},
      "status": s["status"],
    }
    for key, s in entry["sweep"].items()
  ]
  rnd = entry["random_validation"]  # pm(None): "—" for the variances it lacks
  return rows + [
    {"method": RANDOM, "lr": "—", **{k: pm(rnd.get(k)) for k in SHOWN}, "status": "no training"}
  ]
