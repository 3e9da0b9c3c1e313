"""TransFusion's two limits, theory vs measurement (docs/experiments.md, "The two limits").

    python -m experiments.limits --config=experiments/configs/limits.py:quick --noprogress
    python -m experiments.limits --config=experiments/configs/limits.py:tiny   # smoke test
    python -m experiments.limits                                               # full size (GPU)

Data from the model of docs/theory.md §0 (``tfjax.theory.empirical``), trained
through :func:`tfjax.train.train_and_evaluate` (``data=``); weighted kNN
(``tfjax.probes``) of the encoder output on clean held-out points, against the
raw input and the untrained encoder.  Two sweeps (docs/theory.md §5):
augmentation s (self-supervised; measured ``ŝ_max`` vs
``theory.max_augmentation``) and batch size n (supervised; ``n̂_min`` vs
``theory.min_batch_size``, with the rows without a positive vs
``theory.expected_uncovered_fraction`` / ``failure_probability``).  The
config's docstring lists the fields; its ``NOTES`` are the notes of results.md.

Writes limits_augmentation.png, limits_batch.png, limits_coverage.png,
results.md and results.json; each grid point's run under ``WORKDIR/aug_s<s>``
and ``WORKDIR/batch_n<n>`` resumes from its checkpoint (a changed config is
refused, naming what differs; ``--overwrite`` starts afresh).  The report and
its figures: :mod:`experiments.limits_report`.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from experiments import runs
from experiments.common import cli
from experiments.limits_report import report
from tfjax import theory, train
from tfjax.evaluation import evaluate_untrained, extract_features
from tfjax.metrics import read_metrics
from tfjax.probes import knn_accuracy
from tfjax.state import eval_model


def run(config, workdir: str, *, progress: bool = True):
  """The two baselines, the two sweeps and their measured vs predicted limits; the report."""
  runs.validate([config])  # before any compute
  m, t_start = config.model, time.time()
  rng = np.random.default_rng(config.seed)
  centres = theory.equicorrelated_centres(rng, m.num_classes, m.dim, m.rho)
  # Clean balanced reference and test points: [x_ref, y_ref, x_test, y_test].
  draw = lambda: theory.sample_sources(rng, centres, m.sigma, config.n_test, balanced=True)
  evals = [*draw(), *draw()]
  init = point_config(
    config, supervised=False, batch_size=config.batch_size, strength=config.s_grid[0]
  )
  init = runs.with_fields(init, {"eval.head_knn": False})
  # The same kNN on the raw input as evaluate_untrained's on the untrained encoder.
  baselines = {"raw": knn(config, *evals), "init": evaluate_untrained(init, data=evals)["knn"]}
  print(
    f"kNN raw input {baselines['raw']:.3f}, encoder at init {baselines['init']:.3f}", flush=True
  )
  aug = augmentation_sweep(config, centres, evals, workdir, progress)
  bat = batch_sweep(config, centres, evals, workdir, progress)
  aug = measured(config, aug, "s", "s_max", theory.measured_max)
  for v in ("other", "same"):
    s_max = theory.max_augmentation(m.sigma, m.rho, m.dim, margin_z=2.0, versus=f"{v}_class")
    aug[f"predicted_s_max_{v}"] = float(s_max)
  bat = measured(config, bat, "n", "n_min", theory.measured_min)
  bat["predicted_n_min"] = theory.min_batch_size(m.num_classes, config.delta)
  for key in ("uncovered", "batch_fail"):
    bat[f"max_abs_err_{key}"] = max(abs(r[key] - r[f"{key}_theory"]) for r in bat["rows"])
  summary = {
    "config": json.loads(config.to_json()),
    "seed": config.seed,
    "baselines": baselines,
    "augmentation": aug,
    "batch": bat,
    "seconds": time.time() - t_start,
  }
  report(config, workdir, summary, num_sources(config))
  return summary


def num_sources(config) -> int:
  """Training sources of one grid point: each seen about once, capped."""
  return int(min(config.max_sources, config.num_steps * config.batch_size))


def point_config(config, *, supervised: bool, batch_size: int, strength: float):
  """The training config of one grid point of a sweep."""
  c = config.copy_and_resolve_references()
  c.batch_size = int(batch_size)
  c.augment_strength = float(strength)
  if supervised:  # positives = same class, one view
    c.num_views, c.label_fraction, c.labels_in_loss = 1, 1.0, True
  else:  # positives = the other view of the same source
    c.num_views, c.label_fraction, c.labels_in_loss = 2, None, False
  return c


def knn(config, fr, yr, ft, yt):
  """Weighted cosine kNN accuracy (``config.eval.knn_k``, ``knn_temperature``)."""
  e = config.eval
  return knn_accuracy(
    fr, yr, ft, yt, num_classes=config.model.num_classes, k=e.knn_k, temperature=e.knn_temperature
  )


def measured(config, rows, key, limit, measure):
  """A sweep's rows, its accuracy tolerance and its measured limit ``measured_LIMIT``."""
  accs = [r["knn_acc"] for r in rows]
  tol = theory.accuracy_tolerance(max(accs), config.n_test, config.tol_abs)
  limit_value = measure([r[key] for r in rows], accs, tol)
  return {"rows": rows, "tolerance": tol, f"measured_{limit}": limit_value}


def train_point(config, c, run_dir, sources, evals, progress):
  """Trains one grid point; its kNN accuracy (encoder output), final JSD (mean
  of the last 20 steps), mean uncovered-row fraction, and every step's fraction."""
  xr, yr, xt, yt = evals
  state = train.train_and_evaluate(c, run_dir, data=(*sources, xt, yt), progress=progress)["state"]
  records = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
  frac = np.array([r["rows_without_positive"] for r in records])
  features = lambda x: extract_features(eval_model(state), state.variables, x)
  return {
    "knn_acc": knn(config, features(xr), yr, features(xt), yt),
    "final_jsd": float(np.mean([r["loss"] for r in records[-20:]])),
    "uncovered": float(frac.mean()),
  }, frac


def augmentation_sweep(config, centres, evals, workdir, progress):
  """One self-supervised run per s of ``s_grid``: a row each, with the measured
  and predicted raw-view cosines and the predicted win probabilities."""
  m = config.model
  # One training set for the whole sweep (as the seed is): only s changes.
  sources = theory.sample_sources(
    np.random.default_rng(config.seed + 2), centres, m.sigma, num_sources(config)
  )
  rng = np.random.default_rng(config.seed + 1)
  rows = []
  for s in config.s_grid:
    t0 = time.time()
    c = point_config(config, supervised=False, batch_size=config.batch_size, strength=s)
    row, _ = train_point(config, c, os.path.join(workdir, f"aug_s{s:g}"), sources, evals, progress)
    cp, co = theory.empirical_cosines(rng, centres, m.sigma, s)
    a = (m.sigma, s, m.rho, m.dim)
    row = {"s": float(s), **row, "cos_pos": cp, "cos_pos_theory": float(theory.expected_cosine(*a))}
    row.update(cos_other=co, cos_other_theory=float(theory.expected_cosine(*a, pair="other_class")))
    row.update(win_other=float(theory.win_probability(*a)))
    row.update(win_same=float(theory.win_probability(*a, versus="same_class")))
    rows.append({**row, "sigma": m.sigma, "rho": m.rho, "d": m.dim})
    say = f"aug s={s:.2f}  knn {row['knn_acc']:.3f}  JSD {row['final_jsd']:.3f}"
    print(f"{say}  ({time.time() - t0:.1f} s)", flush=True)
  return rows


def batch_sweep(config, centres, evals, workdir, progress):
  """One supervised run per n of ``n_grid`` on its own training set: a row each,
  with the measured and predicted uncovered rows and batch failures."""
  k, rows = config.model.num_classes, []
  for n in config.n_grid:
    t0 = time.time()
    c = point_config(config, supervised=True, batch_size=n, strength=config.s_batch)
    sources = theory.sample_sources(
      np.random.default_rng([config.seed, 3, n]), centres, config.model.sigma, num_sources(c)
    )
    row, frac = train_point(
      config, c, os.path.join(workdir, f"batch_n{n}"), sources, evals, progress
    )
    row = {"n": int(n), **row, "uncovered_theory": theory.expected_uncovered_fraction(n, k)}
    row.update(
      batch_fail=float((frac > 0).mean()), batch_fail_theory=theory.failure_probability(n, k)
    )
    rows.append({**row, "steps": len(frac), "K": k})
    say = f"batch n={n}  knn {row['knn_acc']:.3f}  uncovered {row['uncovered']:.3f}"
    print(f"{say} (theory {row['uncovered_theory']:.3f})  ({time.time() - t0:.1f} s)", flush=True)
  return rows


def main(argv=None):
  return cli(run, "limits", argv, __doc__)


if __name__ == "__main__":
  main(sys.argv[1:])
