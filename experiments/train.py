"""The main job: train contrastive heads and compare their downstream accuracy.

    python -m experiments.train                                   # default config
    python -m experiments.train --config experiments/configs/default.py \
        --workdir workdirs/default --set num_steps=2000 --set seed=1

A config file defines ``get_config()`` (a locked ``ml_collections.ConfigDict``
from :func:`tfjax.config.base_config`) and may define ``COMPARE`` — the
losses to train one after another on the same backbone — and
``RAW_BASELINE`` (also evaluate the raw inputs).  Each run lives in
``WORKDIR/<loss>`` and resumes from its checkpoints when started again.
The job writes ``WORKDIR/results.md`` (a markdown table),
``WORKDIR/results.json`` and ``WORKDIR/comparison.png``.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import sys
import time

from experiments.common import pyplot, workdir_for, write_results

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "default.py")


def load_config_module(path: str):
  if not os.path.exists(path):
    raise FileNotFoundError(f"config file {path!r} does not exist")
  spec = importlib.util.spec_from_file_location("tfjax_experiment_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {path!r} defines no get_config()")
  return module


def apply_overrides(config, overrides):
  """``key=value`` pairs (dotted keys, Python literals) onto the locked config."""
  for item in overrides:
    if "=" not in item:
      raise ValueError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw  # a bare string such as loss=info_nce
    node = config
    parts = key.split(".")
    for part in parts[:-1]:
      node = node[part]
    try:
      setattr(node, parts[-1], value)
    except AttributeError as e:  # locked ConfigDict: unknown field
      raise ValueError(f"unknown config field {key!r}: {e}") from None
  return config


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default=DEFAULT_CONFIG)
  p.add_argument("--workdir", default=None,
                 help="default: workdirs/<config file name>")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="override a config field (repeatable)")
  p.add_argument("--losses", default=None,
                 help="comma-separated losses to compare (default: the config's COMPARE)")
  p.add_argument("--no-progress", action="store_true")
  p.add_argument("--xla_cpu_scheduler", default=None,
                 choices=["memory", "concurrency"],
                 help="XLA's CPU scheduler (tfjax.runtime); 'memory' for "
                      "large blockwise batches on CPU (default: XLA's)")
  g = p.add_argument_group("multi-process runs (see README 'Scaling out')")
  g.add_argument("--coordinator_address", default=None,
                 help="HOST:PORT of process 0 (or JAX_COORDINATOR_ADDRESS)")
  g.add_argument("--num_processes", default=None,
                 help="number of processes, or 'auto' on TPU pods / SLURM")
  g.add_argument("--process_id", type=int, default=None)
  return p.parse_args(argv)


def plot_comparison(rows, metrics, path):
  import numpy as np

  plt = pyplot()

  fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(metrics), 3.4))
  width = 0.8 / max(1, len(rows))
  for i, row in enumerate(rows):
    xs = np.arange(len(metrics)) + i * width
    ax.bar(xs, [row.get(m, 0.0) for m in metrics], width, label=row["method"])
  ax.set_xticks(np.arange(len(metrics)) + 0.4 - width / 2)
  ax.set_xticklabels(metrics)
  ax.set_ylabel("test accuracy")
  ax.set_ylim(0, 1)
  ax.legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  args = parse_args(argv)
  from tfjax import distributed
  if args.xla_cpu_scheduler:
    from tfjax.runtime import use_low_memory_cpu_scheduler
    use_low_memory_cpu_scheduler(args.xla_cpu_scheduler)
  distributed.initialize(args.coordinator_address, args.num_processes,
                         args.process_id)  # before any JAX computation
  module = load_config_module(args.config)
  base = apply_overrides(module.get_config(), args.set)
  compare = (args.losses.split(",") if args.losses
             else list(getattr(module, "COMPARE", [base.loss])))
  # An entry is a loss name or a dict of config overrides (with "loss").
  compare = [{"loss": e} if isinstance(e, str) else dict(e) for e in compare]
  name = os.path.splitext(os.path.basename(args.config))[0]
  workdir = workdir_for(name, args.workdir)

  import jax
  import numpy as np
  from tfjax import train
  from tfjax.data.registry import get_dataset_spec

  # Check every run's config before any compute.
  configs = []
  for overrides in compare:
    c = base.copy_and_resolve_references()
    for key, value in overrides.items():
      setattr(c, key, value)
    train.validate_config(c, c.num_devices or jax.device_count())
    configs.append(c)
  primary = distributed.is_primary()

  spec = get_dataset_spec(base.dataset)
  from tfjax.data import load_arrays
  data = (*load_arrays(base.dataset, spec.train_split, base.data_dir),
          *load_arrays(base.dataset, spec.test_split, base.data_dir))
  say = print if primary else (lambda *a, **k: None)
  say(f"dataset {base.dataset}: {len(data[0])} train / {len(data[2])} test, "
      f"{jax.device_count()} {jax.default_backend()} device(s), "
      f"{jax.process_count()} process(es)")

  rows = []
  t_job = time.time()
  for c in configs:
    t0 = time.time()
    res = train.train_and_evaluate(c, os.path.join(workdir, _run_dir(c)),
                                   data=data, progress=not args.no_progress)
    res.pop("state")
    row = {"method": _method_name(c), **{k: v for k, v in res.items()
                                         if isinstance(v, float)}}
    row["minutes"] = round((time.time() - t0) / 60, 2)
    rows.append(row)
    say(json.dumps(row))
  if not primary:
    return rows
  if getattr(module, "RANDOM_BASELINE", False):
    rows.append({"method": f"random-init {base.backbone} (no training)",
                 **train.evaluate_untrained(base, data, spec.num_classes)})
    say(json.dumps(rows[-1]))
  if getattr(module, "RAW_BASELINE", False):
    raw = train.evaluate_features(data[0], data[1], data[2], data[3],
                                  num_classes=spec.num_classes, eval_config=base.eval)
    rows.append({"method": "raw inputs (no training)", **raw})
    say(json.dumps(rows[-1]))

  metrics = (["knn"] + (["linear"] if base.eval.linear_steps > 0 else [])
             + [f"finetune@{f:g}" for f in base.eval.finetune_fractions])
  table = write_results(
      workdir, f"{name}: {base.dataset}, backbone {base.backbone}, "
      f"{base.num_steps} steps, batch {base.batch_size}", rows,
      ["method"] + metrics + ["feature_variance", "embedding_variance", "minutes"],
      f"Total time {(time.time() - t_job) / 60:.1f} min on "
      f"{jax.local_device_count()} {jax.default_backend()} device(s).")
  plot_comparison(rows, metrics, os.path.join(workdir, "comparison.png"))
  print("\n" + table)
  print(f"wrote {workdir}/results.md, results.json, comparison.png")
  return rows


def _method_name(c):
  name = {"jsd": "TransFusion (JSD)", "info_nce": "SimCLR (InfoNCE)",
          "supcon": "SupCon", "dcl": "DCL", "barlow_twins": "Barlow Twins",
          "vicreg": "VICReg"}[c.loss]
  if c.oar_weight > 0:
    name = "OAR-" + name
  if c.label_fraction is not None and (c.labels_in_loss or c.oar_weight > 0):
    name += f", {c.label_fraction:.0%} labels"
  return name


def _run_dir(c):
  name = c.loss
  if c.oar_weight > 0:
    name = "oar_" + name
  if c.label_fraction is not None and c.labels_in_loss:
    name += f"_labels{c.label_fraction:g}"
  return name


if __name__ == "__main__":
  main(sys.argv[1:])
