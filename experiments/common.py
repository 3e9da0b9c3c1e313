"""What the experiment scripts share: the command line, work dirs, tables, figures.

Every experiment is ``run(config, workdir, progress=True) -> results`` plus a ``main`` that
parses the command line with :func:`cli`::

    python -m experiments.NAME --config=experiments/configs/NAME.py[:ARG] \\
        --config.FIELD=VALUE --workdir=DIR

``--config`` is an ``ml_collections`` config file (``ARG``, e.g. ``quick``,
is passed to its ``get_config``); every field can be overridden with
``--config.FIELD=VALUE``; a misspelt field is an error.  A rerun with the same
work directory resumes the runs it holds from their checkpoints.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")


def config_path(name: str) -> str:
  """The path of ``experiments/configs/NAME.py``."""
  return os.path.join(CONFIG_DIR, f"{name}.py")


def cli(run: Callable, name: str, argv: Optional[Sequence[str]] = None,
        description: str = "", default_arg: Optional[str] = None,
        config_name: Optional[str] = None):
  """Parses ``--config``, ``--config.*``, ``--workdir`` and friends, then runs.

  ``run(config, workdir, progress=...)`` is called with the loaded,
  overridden config and the work directory (default ``workdirs/NAME[_ARG]``).  Errors are printed
  as one line (``--debug`` shows the traceback) and exit with status 2.
  ``config_name`` names the default config file when it is not ``NAME``.
  Returns what ``run`` returns.
  """
  from absl import flags
  from ml_collections import config_flags

  argv = list(sys.argv[1:] if argv is None else argv)
  default = config_path(config_name or name) + (f":{default_arg}" if default_arg else "")
  debug = "--debug" in argv
  try:
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", default, f"config file (default {os.path.relpath(default)}); "
        "a suffix :ARG is passed to its get_config; override any field with "
        "--config.FIELD=VALUE", flag_values=fv,
        sys_argv=[f"experiments.{name}"] + argv)  # which overrides to define
    flags.DEFINE_string("workdir", None, "work directory (default "
                        f"workdirs/{name}[_ARG]); a rerun resumes from it",
                        flag_values=fv)
    flags.DEFINE_boolean("progress", True, "progress bars (--noprogress: off)",
                         flag_values=fv)
    flags.DEFINE_boolean("debug", False, "show the traceback of an error",
                         flag_values=fv)
    flags.DEFINE_enum("xla_cpu_scheduler", None, ["memory", "concurrency"],
                      "XLA's CPU scheduler (tfjax.runtime); 'memory' for large "
                      "blockwise batches on CPU", flag_values=fv)
    flags.DEFINE_string("coordinator_address", None, "multi-process runs: "
                        "HOST:PORT of process 0 (or JAX_COORDINATOR_ADDRESS)",
                        flag_values=fv)
    flags.DEFINE_string("num_processes", None, "multi-process runs: number of "
                        "processes, or 'auto' on TPU pods / SLURM", flag_values=fv)
    flags.DEFINE_integer("process_id", None, "multi-process runs: this "
                         "process's id", flag_values=fv)
    if any(a in ("-h", "--help", "--helpfull") for a in argv):
      print(f"{description}\n\nflags:\n{fv.get_help()}")
      return None
    fv([f"experiments.{name}"] + argv)
    if fv.xla_cpu_scheduler:
      from tfjax.runtime import use_low_memory_cpu_scheduler
      use_low_memory_cpu_scheduler(fv.xla_cpu_scheduler)
    from tfjax import distributed
    distributed.initialize(fv.coordinator_address, fv.num_processes,
                           fv.process_id)  # before any JAX computation
    workdir = fv.workdir or os.path.join(
        "workdirs", _workdir_name(fv["config"].config_filename, name))
    os.makedirs(workdir, exist_ok=True)
    return run(fv.config, workdir, progress=fv.progress)
  except Exception as e:  # one line for users, the traceback with --debug
    if debug:
      raise
    # One line, whatever the exception (ml_collections' "did you mean" hints
    # come as a repr with an escaped newline).
    message = " ".join(str(e).replace("\\n", " ").strip("'\"").split())
    if isinstance(e, AttributeError) and "Did you mean" in message:
      message = "unknown config field " + message.replace("\\'", "'")
    print(f"error: {type(e).__name__}: {message} (--debug for the traceback)",
          file=sys.stderr)
    raise SystemExit(2) from None


def _workdir_name(config_filename: str, name: str) -> str:
  base = os.path.splitext(os.path.basename(config_filename.split(":")[0]))[0]
  arg = config_filename.split(":", 1)[1] if ":" in config_filename else ""
  return f"{base}_{arg}" if arg else (base or name)


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
  from tfjax.plots import pyplot as _pyplot
  return _pyplot()


def accuracy_bars(ax, rows: Sequence[Dict], metrics: Sequence[str], title: str):
  """Grouped bars on ``ax``: one group per metric, one bar per row (its
  ``method``), error bars from ``METRIC_std`` (0 where there is none)."""
  width = 0.8 / max(1, len(rows))
  for i, row in enumerate(rows):
    ax.bar([j + i * width for j in range(len(metrics))],
           [row.get(m, 0.0) for m in metrics], width, label=row["method"],
           yerr=[row.get(f"{m}_std", 0.0) for m in metrics], capsize=2)
  ax.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))])
  ax.set_xticklabels(metrics, fontsize=8, rotation=20, ha="right")
  ax.set_ylim(0, 1)
  ax.set_ylabel("test accuracy (mean ± std over seeds)")
  ax.set_title(title, fontsize=9)
