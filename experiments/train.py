"""The main job: train contrastive heads on one backbone, compare them with baselines.

    python -m experiments.train                                  # configs/default.py
    python -m experiments.train --config=experiments/configs/default.py:quick \\
        --config.compare=transfusion,supcon --config.runs.supcon.num_steps=2000

The config (``experiments/configs/default.py``) holds the training fields,
``runs`` (each run's overrides), ``compare`` (which runs, in order) and the
baselines to evaluate: ``random_baseline`` (the randomly initialised backbone
with BatchNorm statistics estimated on the training data) and
``raw_baseline`` (the raw inputs).  A run's own fields (``runs.NAME.*``)
override the top-level ones: set them as ``--config.runs.NAME.FIELD=VALUE``
(a top-level override that every compared run sets again is an error).
Each run lives in ``WORKDIR/<run>/seed<N>`` and resumes from its checkpoints
when started again; a rerun with a config that changes a run's result is
refused, naming the fields, and ``--overwrite`` starts every run afresh.
Writes ``WORKDIR/results.md`` (a markdown table), ``results.json`` and
``comparison.png``.
"""

from __future__ import annotations

import json
import os
import sys
import time

from experiments.common import (accuracy_bars, cli, pyplot, run_fields,
                                write_results)


def run_configs(config):
  """``[(run name, training config)]`` of ``config.compare``, in order: each
  run's overrides on the top-level fields, then its method's recipe for the
  dataset's kind in the fields still unset (:func:`tfjax.recipes.resolve`,
  said in one line per run)."""
  from tfjax import recipes
  names = [n.strip() for n in config.compare.split(",") if n.strip()]
  unknown = [n for n in names if n not in config.runs]
  if unknown or not names:
    raise ValueError(f"compare names unknown runs {unknown or names}; "
                     f"defined: {sorted(config.runs)}")
  kind = recipes.data_kind(config)
  out = []
  for name in names:
    c = config.copy_and_resolve_references()
    apply_overrides(c, run_fields(config.runs[name]), f"run {name!r}")
    c, filled = recipes.resolve(c, kind)
    if filled:
      print(f"run {name!r}: {recipes.describe(c, filled, kind)}", flush=True)
    out.append((name, c))
  return out


def apply_overrides(config, overrides, where: str = "overrides"):
  """Sets ``overrides`` (nested dicts or dotted keys) on ``config``, in place."""
  for key, value in overrides.items():
    node, parts = config, key.split(".")
    for part in parts[:-1]:
      node = node[part]
    leaf = parts[-1]
    if leaf not in node:
      raise ValueError(f"{where} sets unknown config field {key!r}")
    if hasattr(value, "items") and hasattr(node[leaf], "items"):
      apply_overrides(node[leaf], value, where)
    else:
      setattr(node, leaf, value)


def raw_arrays(source):
  """All examples and labels of a source (for the raw-input baseline)."""
  import numpy as np
  from tfjax.data.pipeline import read_batch
  batch = read_batch(source, np.arange(len(source)))
  return batch["x"], batch["label"]


def run(config, workdir: str, *, progress: bool = True, data=None):
  """Trains every run of ``config.compare`` and evaluates the baselines."""
  import jax
  from tfjax import distributed, evaluation, methods, train
  from tfjax.config import validate
  from tfjax.data.splits import open_splits

  runs = run_configs(config)
  for _, c in runs:  # every run's config checked before any compute
    validate(c, data=data)   # data prepared (or checked) and batches fit
  # The top-level fields (the baselines'), with a method's recipe where unset.
  spec = validate(config, data=data)
  primary = distributed.is_primary()
  say = print if primary else (lambda *a, **k: None)
  sources = open_splits(config, spec, data)
  say(f"dataset {config.dataset}: {len(sources[0])} train / {len(sources[1])} "
      f"test, {jax.device_count()} {jax.default_backend()} device(s), "
      f"{jax.process_count()} process(es)", flush=True)

  seeds = [config.seed + k for k in range(config.seeds)]
  rows, t_job = [], time.time()
  for name, c in runs:
    t0, per_seed = time.time(), []
    for seed in seeds:
      c_seed = c.copy_and_resolve_references()
      c_seed.seed = seed
      res = train.train_and_evaluate(c_seed, os.path.join(workdir, name, f"seed{seed}"),
                                     data=sources, progress=progress)
      res.pop("state")
      per_seed.append({k: v for k, v in res.items() if isinstance(v, float)})
      say(json.dumps({"run": name, "seed": seed, **per_seed[-1]}), flush=True)
    rows.append({"method": methods.display_name(c), **mean_std(per_seed),
                 "seeds": len(seeds), "minutes": round((time.time() - t0) / 60, 2)})
  if not primary:
    return rows
  if not spec.labelled and (config.random_baseline or config.raw_baseline):
    say(f"dataset {config.dataset}: no labels, so no baselines", flush=True)
  if config.random_baseline and spec.labelled:
    per_seed = []
    for seed in seeds:
      c_seed = config.copy_and_resolve_references()
      c_seed.seed = seed
      per_seed.append(evaluation.evaluate_untrained(c_seed, data=sources))
    rows.append({"method": f"random-init {config.backbone} (BatchNorm "
                           "statistics of the data)", **mean_std(per_seed),
                 "seeds": len(seeds)})
    say(json.dumps(rows[-1]), flush=True)
  if config.raw_baseline and spec.labelled:
    x_tr, y_tr = raw_arrays(sources[0])
    x_te, y_te = raw_arrays(sources[1])
    rows.append({"method": "raw inputs (no training)",
                 **evaluation.evaluate_features(
                     x_tr, y_tr, x_te, y_te, num_classes=spec.num_classes,
                     eval_config=config.eval), "seeds": 1})
    say(json.dumps(rows[-1]), flush=True)

  metrics = (["knn"] + (["linear"] if config.eval.linear_steps > 0 else [])
             + [f"finetune@{f:g}" for f in config.eval.finetune_fractions]
             + (["knn_head"] if config.eval.head_knn else []))
  if not spec.labelled:   # no probes: the training loss is the one number
    metrics = ["final_loss"]
  table = write_results(
      workdir, f"{config.dataset}, backbone {config.backbone}, "
      f"{'/'.join(str(s) for s in sorted({c.num_steps for _, c in runs}))} "
      f"steps, batch {config.batch_size}, "
      f"{len(seeds)} seed(s)", [formatted(r) for r in rows],
      ["method"] + metrics + ["feature_variance", "embedding_variance", "seeds",
                              "minutes"],
      f"Mean ± standard deviation over {len(seeds)} seed(s) (seeds "
      f"{seeds[0]}…{seeds[-1]}: initialisation, batches, views); kNN, linear and "
      "fine-tuning on the backbone features (inductive); knn_head on the head's "
      "output (TransFusion's fused features, transductive; the projector's "
      f"output otherwise). Total time {(time.time() - t_job) / 60:.1f} min on "
      f"{jax.local_device_count()} {jax.default_backend()} device(s).")
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(rows, f, indent=2)
  if spec.labelled:
    plot_comparison(rows, metrics, os.path.join(workdir, "comparison.png"))
  print("\n" + table)
  print(f"wrote {workdir}/results.md, results.json"
        + (", comparison.png" if spec.labelled else ""))
  return rows


def mean_std(per_seed):
  """``{key: mean, key_std: std}`` over the seeds' results (floats only)."""
  import numpy as np
  out = {}
  for key in per_seed[0]:
    values = [r[key] for r in per_seed if isinstance(r.get(key), float)]
    if len(values) == len(per_seed):
      out[key] = float(np.mean(values))
      out[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
  return out


def formatted(row):
  """A table row: ``mean ± std`` where there is a spread over seeds."""
  out = dict(row)
  for key, value in row.items():
    std = row.get(f"{key}_std")
    if isinstance(value, float) and std is not None and row.get("seeds", 1) > 1:
      out[key] = f"{value:.3f} ± {std:.3f}"
  return out


def plot_comparison(rows, metrics, path):
  """Grouped bars (mean, ± std over seeds): one group per metric; legend outside."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(2.0 + 1.3 * len(metrics), 3.6))
  accuracy_bars(ax, rows, metrics, "downstream accuracy (knn_head: the head's "
                "output; others: backbone)")
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  fig.tight_layout()
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)


def main(argv=None):
  return cli(run, "train", argv, __doc__, config_name="default")


if __name__ == "__main__":
  main(sys.argv[1:])
