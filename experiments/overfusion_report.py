"""The over-fusion experiment's reports (experiments/overfusion.py): the
comparison's results.md / results.json, its notes and two figures, and the
collapse search's search.md / search.json and figure.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np

from experiments.report import markdown_table, means_by, pyplot, save, write_report, write_results
from tfjax import diagnostics

COLUMNS = "run seed variance rank95 top1_energy class_var knn anchor_acc final_loss".split()


def report(config, workdir, rows, shown, labels, angles, seconds) -> None:
  """results.md / results.json and the two figures of the comparison
  (``shown``: the first seed's test embeddings per run, ``labels`` theirs,
  ``angles`` between that seed's lines)."""
  means = means_by(rows, "run", ("variance", "knn", "rank95", "class_var"))
  _plot_embeddings(workdir, shown, labels)
  _plot_variance(workdir, means)
  notes = _notes(config, means, angles, seconds)
  title = (
    f"Over-fusion on 3 lines in R³ ({config.num_steps} steps, batch "
    f"{config.batch_size}, {config.seeds} seed(s))"
  )
  print(write_results(workdir, title, rows, COLUMNS, notes))
  print(notes)


def _plot_embeddings(workdir, shown, labels):
  """The first seed's normalised test embeddings on the unit sphere."""
  plt = pyplot()
  plain = [r for r in shown if not r.startswith("OAR-")]
  cols = max(1, len(plain))
  fig = plt.figure(figsize=(3.0 * cols, 6.4))
  colors = np.array(["tab:blue", "tab:orange", "tab:green"])
  for name, z in shown.items():
    u = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    # Plain runs on the top row, their OAR versions below.
    base = name.removeprefix("OAR-")
    col = plain.index(base) if base in plain else len(plain) - 1
    oar_row = cols if name.startswith("OAR-") else 0
    ax = fig.add_subplot(2, cols, col + 1 + oar_row, projection="3d")
    ax.scatter(u[:, 0], u[:, 1], u[:, 2], c=colors[labels], s=4, alpha=0.6)
    ax.set_xlim(-1, 1), ax.set_ylim(-1, 1), ax.set_zlim(-1, 1)
    ax.set_xticklabels([]), ax.set_yticklabels([]), ax.set_zticklabels([])
    ax.set_title(f"{name}\nvar {diagnostics.embedding_variance(jnp.asarray(z)):.2f}", fontsize=8)
  fig.suptitle(
    "Normalised test embeddings on the unit sphere, first seed\n"
    "(colour = line / class; top: base loss, bottom: with OAR)",
    fontsize=9,
  )
  save(fig, f"{workdir}/overfusion_embeddings.png", dpi=100)


def _plot_variance(workdir, means):
  """Embedding and within-class variance per run, means over the seeds."""
  plt = pyplot()
  names, x = list(means), np.arange(len(means))
  fig, ax = plt.subplots(figsize=(1.0 * len(names) + 4.5, 3.6))
  variance, class_var = ([means[r][k] for r in names] for k in ("variance", "class_var"))
  colors = ["tab:red" if r.startswith("OAR-") else "tab:gray" for r in names]
  ax.bar(x - 0.2, variance, 0.4, label="embedding variance\n(grey: base, red: OAR)", color=colors)
  ax.bar(x + 0.2, class_var, 0.4, label="within-class variance", color="tab:blue", alpha=0.6)
  ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
  ax.set_ylim(0, 1)
  ax.set_ylabel("variance of normalised embeddings")
  ax.set_title("Spread of the test embeddings per run (mean over seeds)", fontsize=9)
  ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  save(fig, f"{workdir}/overfusion_variance.png", dpi=100)


def _notes(config, means, angles, seconds) -> str:
  """The setting, each loss's means without → with OAR, and the verdict."""
  optimizer = (
    "Adam" if config.optimizer == "adamw" and config.weight_decay == 0 else config.optimizer
  )
  lines = [
    "## Notes",
    "",
    f"Setting: lines at pairwise angles {', '.join(f'{a:.0f}°' for a in angles)} "
    f"(seed {config.seed}), data noise {config.noise}, augmentation = negation + "
    f"noise {config.augment_strength}; MLP 3→{config.hidden}→{config.hidden}→3 "
    f"with BatchNorm, {optimizer} lr {config.learning_rate} ({config.schedule}), "
    f"temperature {config.temperature}, {config.num_steps} steps of batch "
    f"{config.batch_size}; OAR weight {config.oar.weight:g} on a "
    f"{config.oar.label_fraction:.0%} class-balanced labelled subset. Numbers on "
    f"held-out points (means over seeds below). kNN chance = 0.333. "
    f"Time {seconds:.0f} s.",
    "",
  ]
  for base in dict.fromkeys(r.removeprefix("OAR-") for r in means):
    plain, oar = means.get(base), means.get("OAR-" + base)
    if plain is not None and oar is not None:
      lines.append(
        f"- {base}: variance {plain['variance']:.3f} → {oar['variance']:.3f} with OAR, rank95 "
        f"{plain['rank95']:.1f} → {oar['rank95']:.1f}, kNN {plain['knn']:.3f} → {oar['knn']:.3f}."
      )
  lines.append("")
  base_runs = {r: m for r, m in means.items() if not r.startswith("OAR-")}
  collapsed = [r for r, m in base_runs.items() if m["rank95"] <= 1.0]
  separated = [r for r, m in means.items() if r.startswith("OAR-") and m["knn"] >= 0.9]
  plain_ok = [r for r, m in base_runs.items() if m["knn"] >= 0.9]
  lines.append(
    "Paper's claim (CLOA): InfoNCE and DCL collapse onto one line, OAR separates "
    "the three clusters. Measured here: plain runs whose embeddings lie on one "
    f"line ±z* (rank95 = 1): {', '.join(collapsed) or 'none'}; OAR runs with "
    f"kNN ≥ 0.9: {', '.join(separated) or 'none'}."
  )
  if not collapsed:
    lines.append(
      "\nWhere we disagree: in this setting no base loss collapses onto one line "
      "(rank95 stays > 1 and the normalised embeddings keep most of their "
      f"variance); plain runs with kNN ≥ 0.9: {', '.join(plain_ok) or 'none'}. "
      "OAR does pull each class toward its anchor (anchor accuracy above) and "
      "usually lowers the within-class variance, but it does not rescue a "
      "collapse here because there is none to rescue. Probes outside the "
      "defaults (the search mode, docs/overfusion_search.md) collapse InfoNCE "
      "and DCL only with SGD at lr 10-1000, tau <= 0.1 and widths 4-8. The paper's exact data noise, widths, "
      "temperature, optimiser and step count are not stated; a collapse may "
      "need other values than ours."
    )
  else:
    lines.append(
      "\nWhere we agree: the runs listed as rank95 = 1 reproduce the collapse "
      "onto one line; compare their OAR versions' kNN and variance above."
    )
  return "\n".join(lines)


def search_report(config, workdir, rows, fields, names, settings, collapsed, rerun, seconds):
  """search.md / search.json (one row per run, notes) and overfusion_search.png
  (``fields``: the searched config fields, ``collapsed``: the base runs on a line)."""
  _plot_search(workdir, rows, collapsed)
  region = "; ".join(f"{f} ∈ {{{config.search[f]}}}" for f in fields)
  notes = [
    "## Notes",
    "",
    f"Searched: {region}; {config.num_steps} steps of batch {config.batch_size}, "
    f"seed {config.seed}, {settings} settings × {len(names)} base losses. "
    "A run collapsed onto a line when rank95 = 1 (95 % of its normalised test "
    "embeddings' energy in one direction), as in CLOA's figure.",
    "",
    (
      f"Collapsed base runs: {len(collapsed)} of {settings * len(names)}; {rerun} of them (the "
      "first of each data noise and width) were rerun with OAR (rows marked OAR-)."
      if collapsed
      else "No base run collapsed onto a line in the region searched: CLOA's "
      "3-D figure is **not reproduced** there."
    ),
    f"\nTime {seconds:.0f} s.",
  ]
  table = markdown_table(
    rows, ["run", *fields, "variance", "rank95", "top1_energy", "knn", "status"]
  )
  title = "# Over-fusion: searching for InfoNCE's collapse onto a line"
  write_report(workdir, f"{title}\n\n{table}\n" + "\n".join(notes) + "\n", rows, name="search")
  print(table)
  print("\n".join(notes))


def _plot_search(workdir, rows, collapsed):
  """Top-direction energy and kNN of every base run of the search."""
  plt = pyplot()
  base = [r for r in rows if not r["run"].startswith("OAR-")]
  labels = [
    f"{r['run'].split(' ')[0]} σ{r['noise']:g} h{r['hidden']} τ{r['temperature']:g}"
    f" {'Adam' if r['optimizer'] == 'adamw' else 'SGD'} {r['learning_rate']:g}"
    for r in base
  ]
  top1, knn = (
    [r[k] if r["status"] == "ok" else np.nan for r in base] for k in ("top1_energy", "knn")
  )
  y = np.arange(len(base))
  fig, axes = plt.subplots(1, 2, figsize=(10, 0.22 * len(base) + 1.5), sharey=True)
  axes[0].barh(y, top1, color=["tab:red" if r in collapsed else "tab:gray" for r in base])
  axes[0].axvline(0.95, color="black", ls=":", lw=0.8)
  axes[0].set_xlabel("energy in the top direction\n(red: rank95 = 1, on one line)")
  axes[1].barh(y, knn, color="tab:blue")
  axes[1].axvline(1 / 3, color="black", ls=":", lw=0.8)
  axes[1].set_xlabel("kNN accuracy (dotted: chance)")
  axes[0].set_yticks(y, labels, fontsize=6)
  axes[0].set_xlim(0, 1), axes[1].set_xlim(0, 1)
  fig.suptitle(
    "Collapse search on three lines in R³: every base run (diverged runs left blank)", fontsize=9
  )
  save(fig, os.path.join(workdir, "overfusion_search.png"), dpi=100)
