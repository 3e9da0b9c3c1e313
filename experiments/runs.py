"""What the experiments' training runs share: names, seeds, configs, runs over
seeds, finished-run re-reading, and the fair baselines.

The main job's comparison (:func:`compare`) lives here too: the main job
(``experiments.train``) and ``experiments.downstream`` both report it.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

from experiments.report import mean_std


# ----------------------------------------------------------------------------
# Names, seeds and configs.
# ----------------------------------------------------------------------------
def names(text: str, defined, field: str) -> List[str]:
  """The comma-separated names of the config field ``field`` (``text``),
  each one of ``defined`` and each once (a repeated name would be trained
  once and reported twice)."""
  out = [n.strip() for n in str(text).split(",") if n.strip()]
  unknown = [n for n in out if n not in defined]
  if unknown or not out:
    raise ValueError(f"{field} names unknown runs {unknown or out}; defined: {sorted(defined)}")
  twice = [n for i, n in enumerate(out) if n in out[:i]]
  if twice:
    raise ValueError(f"{field} names run {twice[0]!r} twice; name each run once")
  return out


def seeds(config, field: str = "seeds", count: Optional[int] = None) -> List[int]:
  """``config.seed``, ``config.seed + 1``, … : ``count`` of them (default
  the value of the config field ``field``, which must be an integer ≥ 1)."""
  count = config[field] if count is None else count
  if isinstance(count, bool) or not isinstance(count, int) or count < 1:
    raise ValueError(f"{field} must be an integer >= 1 (how many seeds), got {count!r}")
  return [config.seed + k for k in range(count)]


def with_fields(config, fields: Optional[Dict] = None, **more):
  """A resolved copy of ``config`` with ``fields`` (dotted keys) set."""
  c = config.copy_and_resolve_references()
  for key, value in {**(fields or {}), **more}.items():
    *path, leaf = key.split(".")
    node = c
    for part in path:
      node = node[part]
    setattr(node, leaf, value)
  return c


def validate(configs: Sequence, num_devices: Optional[int] = None, data=None) -> list:
  """Checks every training config before any compute (:func:`tfjax.config.validate`:
  fields, devices, the data on disk or ``data``'s arrays); their dataset specs."""
  from tfjax.config import validate as check

  return [check(c, num_devices, data=data) for c in configs]


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


def run_configs(config) -> list:
  """``[(run name, training config)]`` of ``config.compare``, in order: each
  run's own fields (``config.runs.NAME``) over the top-level ones, then its
  method's recipe for the dataset's kind in the fields still unset
  (:func:`tfjax.recipes.resolve`, said in one line per run)."""
  from experiments.common import run_fields
  from tfjax import recipes

  kind = recipes.data_kind(config)
  out = []
  for name in names(config.compare, config.runs, "compare"):
    c = config.copy_and_resolve_references()
    apply_overrides(c, run_fields(config.runs[name]), f"run {name!r}")
    c, filled = recipes.resolve(c, kind)
    if filled:
      print(f"run {name!r}: {recipes.describe(c, filled, kind)}", flush=True)
    out.append((name, c))
  return out


# Short names of the fields a sweep sets, in the order of a recipe's key.
SHORT = {
  "augment": "",
  "augment_strength": "aug",
  "learning_rate": "lr",
  "temperature": "T",
  "head.num_layers": "L",
  "head.final_projection": "proj",
  "head.activation": "act",
  "head.fuse_within_view": "within",
  "num_steps": "steps",
}


def recipe_key(recipe: Dict) -> str:
  """A run directory's name for a recipe (flat overrides; fields of
  :data:`SHORT` in its order): ``lr0.004_L1_projnone_actrelu_steps800``."""
  parts = []
  for field in SHORT:
    if field in recipe:
      v = recipe[field]
      v = {True: "1", False: "0"}.get(v, v) if isinstance(v, bool) else v
      parts.append(f"{SHORT[field]}{v:g}" if isinstance(v, float) else f"{SHORT[field]}{v}")
  return "_".join(parts)


def training_config(config, method: str, recipe: Dict, **fields):
  """The training config of the sweep ``method`` (its ``config.runs`` entry)
  with ``recipe`` and ``fields`` (dotted keys) over it; the warm-up is
  capped at a tenth of the steps."""
  c = config.copy_and_resolve_references()
  for key, value in dict(config.runs[method]).items():
    setattr(c, key, value)
  c = with_fields(c, {**recipe, **fields})
  c.warmup_steps = min(c.warmup_steps, max(1, c.num_steps // 10))
  return c


# ----------------------------------------------------------------------------
# Runs.
# ----------------------------------------------------------------------------
def finished_results(config, run_dir: str) -> Optional[Dict]:
  """The ``results.json`` of a run in ``run_dir`` that finished with exactly
  ``config``'s training fields, or None (train or evaluate it again).

  Sweeps call this to re-read a finished run instead of re-evaluating it;
  any difference, even in a field a rerun may change, means None (an
  evaluation field changes the results; ``train_and_evaluate`` then decides).
  """
  from tfjax import rerun

  paths = [os.path.join(run_dir, n) for n in ("results.json", "config.json")]
  if not all(os.path.exists(p) for p in paths):
    return None
  with open(paths[0]) as f:
    res = json.load(f)
  with open(paths[1]) as f:
    fixed, free = rerun.config_diff(rerun.config_fields(json.load(f)), rerun.config_fields(config))
  if res.get("step") != config.num_steps or fixed or free:
    return None
  return res


def train_once(c, run_dir: str, progress: bool, data=None) -> Dict:
  """One run's results (its float fields, ``evaluated_on`` and
  ``uniform_rows`` at the last logged step); a finished run's results.json
  is re-read, not re-evaluated."""
  from tfjax import train

  res = finished_results(c, run_dir)
  if res is None:  # train_and_evaluate refuses a real mismatch in one line
    res = train.train_and_evaluate(c, run_dir, progress=progress, data=data)
  out = {k: v for k, v in res.items() if isinstance(v, float)}
  out["evaluated_on"] = res["evaluated_on"]
  metrics = os.path.join(run_dir, "metrics.jsonl")
  from tfjax.metrics import read_metrics

  logged = (
    [r for r in read_metrics(metrics) if "uniform_rows" in r] if os.path.exists(metrics) else []
  )
  if logged:
    out["uniform_rows"] = float(logged[-1]["uniform_rows"])
  return out


def over_seeds(configs, run_dirs, progress: bool, evaluated_on: str, data=None) -> List[Dict]:
  """:func:`train_once` of each config in its run directory; every run must
  have been evaluated on ``evaluated_on`` (validation or test)."""
  per_seed = [train_once(c, d, progress, data) for c, d in zip(configs, run_dirs)]
  on = {r["evaluated_on"] for r in per_seed}
  if on != {evaluated_on}:
    raise RuntimeError(f"{run_dirs[0]} was evaluated on {on}, not {evaluated_on}")
  return per_seed


# ----------------------------------------------------------------------------
# The fair baselines.
# ----------------------------------------------------------------------------
def random_init(
  config, seed_list: Sequence[int], keys=None, data=None, fields: Optional[Dict] = None
) -> Dict:
  """Mean ± std over the seeds of the randomly initialised backbone with
  BatchNorm statistics of the data (``tfjax.evaluation.evaluate_untrained``),
  ``config`` with ``fields`` set."""
  from tfjax.evaluation import evaluate_untrained

  return mean_std(
    [evaluate_untrained(with_fields(config, fields, seed=s), data=data) for s in seed_list], keys
  )


def raw_arrays(source):
  """All examples and labels of a source (for the raw-input baseline)."""
  import numpy as np
  from tfjax.data.pipeline import read_batch

  batch = read_batch(source, np.arange(len(source)))
  return batch["x"], batch["label"]


def raw_inputs(config, sources, num_classes: int) -> Dict:
  """The evaluations of the raw inputs (no network) of ``sources``."""
  from tfjax import evaluation

  x_tr, y_tr = raw_arrays(sources[0])
  x_te, y_te = raw_arrays(sources[1])
  return evaluation.evaluate_features(
    x_tr, y_tr, x_te, y_te, num_classes=num_classes, eval_config=config.eval
  )


# ----------------------------------------------------------------------------
# The main job's comparison.
# ----------------------------------------------------------------------------
def compare(config, workdir: str, *, progress: bool = True, data=None) -> List[Dict]:
  """Trains every run of ``config.compare`` over the seeds in
  ``WORKDIR/<run>/seed<N>`` and evaluates the baselines; one row per run
  (mean and ``_std`` over the seeds, its own ``steps``, ``minutes``: the
  training time its seeds report, summed) and per baseline."""
  import jax
  from tfjax import distributed, methods, train

  runs = run_configs(config)
  seed_list = seeds(config)
  # Every run's config, and the top-level one of the baselines, checked
  # before any compute (data prepared or checked, batches fit).
  validate([c for _, c in runs], data=data)
  (spec,) = validate([config], data=data)
  primary = distributed.is_primary()
  say = print if primary else (lambda *a, **k: None)
  from tfjax.data.splits import open_splits

  sources = open_splits(config, spec, data)
  say(
    f"dataset {config.dataset}: {len(sources[0])} train / {len(sources[1])} "
    f"test, {jax.device_count()} {jax.default_backend()} device(s), "
    f"{jax.process_count()} process(es)",
    flush=True,
  )

  rows = []
  for name, c in runs:
    per_seed = []
    for seed in seed_list:
      res = train.train_and_evaluate(
        with_fields(c, seed=seed),
        os.path.join(workdir, name, f"seed{seed}"),
        data=sources,
        progress=progress,
      )
      per_seed.append({k: v for k, v in res.items() if isinstance(v, float)})
      say(json.dumps({"run": name, "seed": seed, **per_seed[-1]}), flush=True)
    seconds = sum(r.get("train_seconds", 0.0) for r in per_seed)
    rows.append(
      {
        "method": methods.display_name(c),
        "steps": c.num_steps,
        **mean_std(per_seed),
        "seeds": len(seed_list),
        "minutes": round(seconds / 60, 2),
      }
    )
  if not primary:
    return rows
  if not spec.labelled:  # nothing to probe the baselines with
    if config.random_baseline or config.raw_baseline:
      say(f"dataset {config.dataset}: no labels, so no baselines", flush=True)
    return rows
  if config.random_baseline:
    rows.append(
      {
        "method": f"random-init {config.backbone} (BatchNorm statistics of the data)",
        **random_init(config, seed_list, data=sources),
        "seeds": len(seed_list),
      }
    )
    say(json.dumps(rows[-1]), flush=True)
  if config.raw_baseline:
    rows.append(
      {
        "method": "raw inputs (no training)",
        **raw_inputs(config, sources, spec.num_classes),
        "seeds": 1,
      }
    )
    say(json.dumps(rows[-1]), flush=True)
  return rows


def compared_metrics(config) -> List[str]:
  """The accuracy columns of :func:`compare`'s rows under ``config.eval``."""
  return (
    ["knn"]
    + (["linear"] if config.eval.linear_steps > 0 else [])
    + [f"finetune@{f:g}" for f in config.eval.finetune_fractions]
    + (["knn_head"] if config.eval.head_knn else [])
  )
