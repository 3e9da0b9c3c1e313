"""Small helpers shared by the experiment scripts: tables, figures, work dirs."""

from __future__ import annotations

import json
import os
from typing import Dict, List, Sequence


def workdir_for(name: str, workdir: str | None) -> str:
  path = workdir or os.path.join("workdirs", name)
  os.makedirs(path, exist_ok=True)
  return path


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


def write_results(workdir: str, title: str, rows: List[Dict],
                  columns: Sequence[str], notes: str = "") -> str:
  """Writes ``results.md`` (title, table, notes) and ``results.json``."""
  table = markdown_table(rows, columns)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(f"# {title}\n\n{table}\n{notes}\n")
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(rows, f, indent=2, default=float)
  return table


def pyplot():
  """matplotlib.pyplot on the headless Agg backend."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt
