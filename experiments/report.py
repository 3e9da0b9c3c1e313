"""What the experiments' reports share: mean ± std, markdown tables, files, figures."""

from __future__ import annotations

import json
import os
import platform
from typing import Dict, Iterable, Optional, Sequence


def mean_std(
  per_seed: Sequence[Dict], keys: Optional[Iterable[str]] = None, ddof: int = 1
) -> Dict[str, float]:
  """``{key: mean, key_std: std}`` over the seeds' results.

  ``keys`` defaults to the float fields of the first seed's; a key is kept
  only where every seed has a float for it.  One seed has std 0.
  """
  import numpy as np

  out = {}
  for key in (
    keys if keys is not None else [k for k, v in per_seed[0].items() if isinstance(v, float)]
  ):
    values = [r[key] for r in per_seed if isinstance(r.get(key), float)]
    if values and len(values) == len(per_seed):
      out[key] = float(np.mean(values))
      out[f"{key}_std"] = float(np.std(values, ddof=ddof)) if len(values) > ddof else 0.0
  return out


def pm(mean, std=None, digits: int = 3) -> str:
  """``mean ± std`` (``mean`` alone without a std, ``—`` without a mean)."""
  if mean is None:
    return "—"
  return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def cell(row: Dict, key: str) -> str:
  """``row[key]`` as a table cell: ``mean ± std`` where the row spans
  several seeds and has ``key_std``; empty where it has no ``key``."""
  if row.get(key) is None:
    return ""
  return pm(row[key], row.get(f"{key}_std") if row.get("seeds", 1) > 1 else None)


def formatted(row: Dict, keys: Optional[Iterable[str]] = None) -> Dict:
  """``row`` with its float ``keys`` (default: those with a ``_std``) as cells."""
  keys = [k for k in row if f"{k}_std" in row] if keys is None else keys
  return {**row, **{k: cell(row, k) for k in keys if isinstance(row.get(k), float)}}


def markdown_table(rows: Sequence[Dict], columns: Sequence[str]) -> str:
  """Rows of dicts as a markdown table; floats with three decimals."""
  head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
  body = ""
  for row in rows:
    cells = []
    for c in columns:
      v = row.get(c, "")
      cells.append(f"{v:.3f}" if isinstance(v, float) else str(v))
    body += "| " + " | ".join(cells) + " |\n"
  return head + body


def write_results(
  workdir: str, title: str, rows: Sequence[Dict], columns: Sequence[str], notes: str = "", data=None
) -> str:
  """Writes ``results.md`` (title, table of the formatted ``rows``, notes) and
  ``results.json`` (``data``, default the rows); returns the table."""
  table = markdown_table([formatted(r) for r in rows], columns)
  write_report(workdir, f"# {title}\n\n{table}\n{notes}\n", list(rows) if data is None else data)
  return table


def write_report(workdir: str, markdown: str, data, name: str = "results") -> None:
  """Writes ``NAME.md`` (the markdown as given) and ``NAME.json`` (``data``)."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, f"{name}.md"), "w") as f:
    f.write(markdown)
  with open(os.path.join(workdir, f"{name}.json"), "w") as f:
    json.dump(data, f, indent=2, default=float)


def machine() -> str:
  """The devices, CPU cores and processor, for a report's time line."""
  import jax

  return (
    f"{jax.local_device_count()} {jax.default_backend()} device(s), "
    f"{os.cpu_count()} CPU core(s), {platform.processor() or platform.machine()}"
  )


def pyplot():
  """matplotlib.pyplot on the headless Agg backend."""
  from tfjax.plots import pyplot as _pyplot

  return _pyplot()


def save(fig, path: str, dpi: int = 110) -> None:
  """Saves ``fig`` (tight layout, nothing cut off) and closes it."""
  fig.tight_layout()
  fig.savefig(path, dpi=dpi, bbox_inches="tight")
  pyplot().close(fig)


def accuracy_bars(ax, rows: Sequence[Dict], metrics: Sequence[str], title: str):
  """Grouped bars on ``ax``: one group per metric, one bar per row (its
  ``method``), error bars from ``METRIC_std`` (0 where there is none)."""
  width = 0.8 / max(1, len(rows))
  for i, row in enumerate(rows):
    ax.bar(
      [j + i * width for j in range(len(metrics))],
      [row.get(m, 0.0) for m in metrics],
      width,
      label=row["method"],
      yerr=[row.get(f"{m}_std", 0.0) for m in metrics],
      capsize=2,
    )
  ax.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))])
  ax.set_xticklabels(metrics, fontsize=8, rotation=20, ha="right")
  ax.set_ylim(0, 1)
  ax.set_ylabel("test accuracy (mean ± std over seeds)")
  ax.set_title(title, fontsize=9)


def plot_accuracy(groups: Dict[str, Sequence[Dict]], metrics: Sequence[str], path: str) -> None:
  """One panel of :func:`accuracy_bars` per group (``{title: rows}``), one
  legend outside, right of the last panel."""
  plt = pyplot()
  fig, axes = plt.subplots(
    1, len(groups), squeeze=False, figsize=((2.0 + 1.3 * len(metrics)) * len(groups), 3.6)
  )
  for ax, (title, rows) in zip(axes[0], groups.items()):
    accuracy_bars(ax, rows, metrics, f"{title} (knn_head: the head's output; others: backbone)")
  axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  save(fig, path)


def means_by(rows: Sequence[Dict], group: str, keys: Iterable[str]) -> Dict[str, Dict[str, float]]:
  """``{row[group]: {key: mean over the group's rows}}``, groups in order of appearance."""
  import numpy as np

  groups = dict.fromkeys(r[group] for r in rows)
  return {
    g: {k: float(np.mean([r[k] for r in rows if r[group] == g])) for k in keys} for g in groups
  }
