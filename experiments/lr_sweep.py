"""CLOA's collapse and OAR's rescue, under the authors' protocol, with the mechanism logged.

    python -m experiments.lr_sweep --config=experiments/configs/lr_sweep.py:quick --noprogress
    python -m experiments.lr_sweep               # 4 losses, lr decades 1e-7 … 1 (GPU)

Per dataset of ``config.datasets``: a sweep on a validation split (every method
of ``config.losses`` ± OAR, every learning rate and seed; the grid grows ×10
until InfoNCE or DCL collapse or ``config.extend_to`` is passed), then each
variant retrained on the whole training split at its validation-chosen
learning rate and evaluated on the test split (Table 3's shape), beside the
random-init backbone with BatchNorm statistics of the data; then a verdict per
claim of CLOA (:func:`verdicts`).  The protocol and fields:
``experiments/configs/lr_sweep.py``; the method and its results:
docs/experiments.md.  Runs live in ``WORKDIR/DATASET/{sweep,test}/<run>_lr<lr>_s<seed>``
and resume when the sweep is started again.

Writes results.md, results.json, lr_sweep_table3.png, lr_sweep_accuracy.png,
lr_sweep_variance.png and lr_sweep_mechanism_DATASET.png (experiments/lr_sweep_report.py).
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import time
from typing import Dict, List, Sequence

from experiments import runs
from experiments.common import cli
from experiments.configs.lr_sweep import BACKBONE, EXPERIMENT_FIELDS
from experiments.lr_sweep_report import FINETUNE, MECHANISM, OARS, SHOWN, plot_mechanism, write
from experiments.report import mean_std, pm
from tfjax import methods

F10 = FINETUNE[0]  # the claims' metric: fine-tuning accuracy at 10 % labels
METRICS = FINETUNE + ("knn", "variance", "min_variance", "feature_variance")
COLLAPSING = ("info_nce", "dcl")  # the losses CLOA says collapse


def learning_rates(config) -> list[float]:
  """``config.lrs`` (a comma-separated string or a sequence) as floats."""
  lrs = config.lrs
  values = lrs.split(",") if isinstance(lrs, str) else list(lrs)
  out = [float(v) for v in values if str(v).strip()]
  if not out or any(not lr > 0 for lr in out):
    raise ValueError(f"config.lrs must list positive learning rates, got {lrs!r}")
  return sorted(out)


def loss_names(config) -> list[str]:
  """The methods of ``config.losses``, checked against the registry."""
  return methods.parse_names(config.losses)


def dataset_names(config) -> list[str]:
  """The datasets of ``config.datasets``, each with a known backbone."""
  names = [d.strip() for d in str(config.datasets).split(",") if d.strip()]
  if not names or any(d not in BACKBONE for d in names):
    raise ValueError(
      f"config.datasets must list datasets of {sorted(BACKBONE)}, got {config.datasets!r}"
    )
  return names


def run_config(config, loss, oar, lr, *, dataset=None, seed=None, stage="sweep"):
  """The training config of one run: a resolved copy of ``config`` without the sweep's fields."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    for field in EXPERIMENT_FIELDS:
      if field in c:
        del c[field]
  if dataset is not None and dataset != c.dataset:
    c.dataset = dataset
    c.backbone, c.backbone_kwargs = BACKBONE[dataset]
  c.loss, c.learning_rate = loss, lr
  c.seed = config.seed if seed is None else seed
  c.validation_fraction = config.sweep_validation_fraction if stage == "sweep" else None
  c.warmup_steps = min(c.warmup_steps, c.num_steps // 10)
  c.log_every = max(1, min(c.log_every, c.num_steps // 4))
  o = config.oar
  c.label_fraction, c.oar_weight, c.labelled_batch_size = (
    (o.label_fraction, o.weight, o.labelled_batch_size if o.separate_batch else 0)
    if oar
    else (None, 0.0, 0)
  )
  return c


def run(config, workdir: str, *, progress: bool = True):
  """Both stages on every dataset (:func:`one_dataset`), then the figures and results.md."""
  names, lrs, datasets = loss_names(config), learning_rates(config), dataset_names(config)
  every = itertools.product(datasets, names, (False, True), ("sweep", "test"))
  runs.validate([run_config(config, l, o, lrs[0], dataset=d, stage=s) for d, l, o, s in every])
  seeds, t0 = runs.seeds(config), time.time()
  report = {"datasets": {}, "config": {"losses": names, "seeds": seeds}}
  report["config"].update(temperature=config.temperature, num_steps=config.num_steps)
  report["collapse_variance"] = config.collapse_variance
  for dataset in datasets:
    args = (config, dataset, names, lrs, seeds, workdir, progress, t0)
    report["datasets"][dataset] = one_dataset(*args)
  report["seconds"] = round(time.time() - t0, 1)
  write(workdir, report, names, config)
  return report


def one_dataset(config, dataset, names, lrs, seeds, workdir, progress, t0) -> Dict:
  """Both stages on one dataset: the sweep (validation split, the grid grown
  ×10 until InfoNCE / DCL collapse or ``extend_to``), the baselines, the test
  runs at each variant's chosen learning rate, the verdicts."""
  val_cfg = run_config(config, names[0], False, lrs[0], dataset=dataset)
  (spec,) = runs.validate([val_cfg])
  data = _load_data(config, dataset, spec)

  def train_all(loss, oar, lr, stage):
    cfgs = [
      run_config(config, loss, oar == "yes", lr, dataset=dataset, seed=s, stage=stage)
      for s in seeds
    ]
    return [seed_run(c, stage, workdir, data, progress, t0) for c in cfgs]

  variants = [(loss, oar) for loss in names for oar in OARS]
  sweep = {v: {} for v in variants}  # (loss, oar) -> {lr: summary}
  curves, grid, threshold = {}, list(lrs), config.collapse_variance  # curves: seed 0's
  probe = [loss for loss in names if loss in COLLAPSING]
  for lr in grid:  # the loop sees the learning rates it appends
    for loss, oar in variants:
      seed_runs = train_all(loss, oar, lr, "sweep")
      sweep[(loss, oar)][lr], curves[(loss, oar, lr)] = _summary(seed_runs), seed_runs[0]["curve"]
    grows = lr == grid[-1] and config.extend_to and lr * 10 <= config.extend_to * (1 + 1e-9)
    none_yet = not any(collapsed(s, threshold) for l in probe for s in sweep[(l, "no")].values())
    if grows and probe and none_yet:
      grid.append(lr * 10)
  keys = FINETUNE + ("knn",)
  test_cfg = run_config(config, names[0], False, lrs[0], dataset=dataset, stage="test")
  random_val, random_test = [runs.random_init(c, [c.seed], keys, data) for c in (val_cfg, test_cfg)]
  chosen, test = {}, {}
  for v in variants:
    ok = {lr: s for lr, s in sweep[v].items() if s[F10] is not None}
    if ok:
      chosen[v] = max(ok, key=lambda x: ok[x][F10])
      test[v] = _summary(train_all(*v, chosen[v], "test"))
  loss = (probe or names)[0]
  plot_mechanism(workdir, dataset, loss, sweep[(loss, "no")], curves, grid, threshold)
  return {
    "grid": grid,
    "num_classes": spec.num_classes,
    "sweep": {f"{l}|{o}|{lr:g}": s for (l, o), d in sweep.items() for lr, s in d.items()},
    "chosen_lr": {f"{l}|{o}": lr for (l, o), lr in chosen.items()},
    "test": {f"{l}|{o}": s for (l, o), s in test.items()},
    "random_validation": {k: random_val[k] for k in keys},
    "random_test": {k: random_test[k] for k in keys},
    "verdicts": verdicts(sweep, test, names, grid, threshold),
  }


def _load_data(config, dataset, spec):
  """``data=`` of the runs: None (the pipeline reads the dataset), or the
  first ``max_*_examples`` records (0 = the whole split) as arrays."""
  if not (config.max_train_examples or config.max_test_examples):
    return None
  from tfjax.data.pipeline import load_arrays

  take = [
    (spec.train_split, config.max_train_examples),
    (spec.test_split, config.max_test_examples),
  ]
  return tuple(a for s, n in take for a in load_arrays(dataset, s, config.data_dir, take=n or None))


def seed_run(cfg, stage, workdir, data, progress, t0) -> Dict:
  """One run in ``WORKDIR/DATASET/STAGE/<run>_lr<lr>_s<seed>``, said in one line: its
  numbers (``status`` "ok" or "diverged (…)") and its per-step ``curve``."""
  lr, started = cfg.learning_rate, time.time()
  name = f"{methods.run_name(cfg)}_lr{lr:.3g}_s{cfg.seed}"
  run_dir = os.path.join(workdir, cfg.dataset, stage, name)
  try:
    res, status = runs.train_once(cfg, run_dir, progress, data), "ok"
  except FloatingPointError as e:
    res, status = None, f"diverged ({e})"
  out = {"status": status, "curve": _curve(run_dir)}
  if res is not None:
    end = res["embedding_variance"]
    low = min([end] + [v for v in out["curve"]["embedding_variance"] if v is not None])
    out.update({k: res[k] for k in FINETUNE + ("knn", "feature_variance")})
    out.update(variance=end, min_variance=low)
  said = " ".join(f"{k}={out[k]:.3f}" for k in SHOWN) if res is not None else status
  print(
    f"{cfg.dataset} {stage} {methods.display_name(cfg)} lr={lr:.3g} seed={cfg.seed}: {said} "
    f"({time.time() - started:.0f} s; {time.time() - t0:.0f} s in all)",
    flush=True,
  )
  return out


def _curve(run_dir) -> Dict[str, list]:
  """The logged steps of the run in ``run_dir`` and the mechanism's values at them."""
  from tfjax.metrics import read_metrics

  path = os.path.join(run_dir, "metrics.jsonl")
  rows = read_metrics(path) if os.path.exists(path) else []
  return {"step": [r["step"] for r in rows], **{k: [r.get(k) for r in rows] for k, _ in MECHANISM}}


def _summary(seed_runs: Sequence[Dict]) -> Dict:
  """Mean and std (ddof 0) over seeds of each metric (the ok runs), and the status."""
  ok = [r for r in seed_runs if r["status"] == "ok"]
  n, bad = len(seed_runs), len(seed_runs) - len(ok)
  none = {k: None for m in METRICS for k in (m, m + "_std")}
  return {
    "seeds": n,
    "diverged": bad,
    "seed_variances": [r["variance"] for r in ok],
    **(mean_std(ok, METRICS, ddof=0) if ok else none),
    "status": "ok" if not bad else "diverged" if not ok else f"{bad}/{n} diverged",
  }


def collapsed(summary: Dict, threshold: float, key: str = "variance") -> bool:
  """A setting collapsed: its mean ``key`` over the seeds that did not diverge (the end
  variance; ``min_variance``: the lowest during training) is below ``threshold``."""
  return summary[key] is not None and summary[key] < threshold


def verdicts(sweep, test, names, grid, threshold) -> List[Dict]:
  """CLOA's three claims, judged from the sweep (validation) and test runs.

  * "InfoNCE / DCL collapse at a high learning rate": *reproduced* when some
    learning rate gives a mean end variance below ``threshold``; otherwise
    *not reproduced in the region searched*.
  * "OAR prevents the collapse": *untestable here* when nothing collapsed;
    *reproduced* when, at every learning rate where the plain loss collapsed,
    the OAR run did not and beats it at 10 % labels by more than two
    standard deviations of the difference (:func:`_gap`); else *not reproduced*.
  * "OAR improves accuracy at 10 % labels" (Table 3, test split, each
    variant at its validation-chosen learning rate): *reproduced* when OAR
    is higher by more than two standard deviations of the difference,
    *reversed* when lower by more, else *not reproduced (within the seed spread)*.
  """
  out = []
  for loss in names:
    if loss in COLLAPSING:
      out += _collapse_verdicts(loss, sweep[(loss, "no")], sweep[(loss, "yes")], grid, threshold)
  for loss in names:
    o, p = test.get((loss, "yes")), test.get((loss, "no"))
    claim = f"OAR improves {methods.get(loss).display_name}'s accuracy at 10 % labels"
    if any(s is None or s[F10] is None for s in (o, p)):
      out.append(_said(claim, "untestable here", "a variant diverged at every learning rate"))
      continue
    better, worse = _gap(o, p, F10) > 0, _gap(p, o, F10) > 0
    verdict = "reproduced" if better else "reversed" if worse else "not reproduced"
    verdict += "" if better or worse else " (within the seed spread)"
    mean_std_pair = f"OAR {pm(o[F10], o[F10 + '_std'])} vs {pm(p[F10], p[F10 + '_std'])}"
    evidence = f"test finetune@10%: {mean_std_pair} (difference {o[F10] - p[F10]:+.3f})"
    out.append(_said(claim, verdict, evidence))
  return out


def _collapse_verdicts(loss, plain, with_oar, grid, threshold) -> List[Dict]:
  """The collapse claim and the rescue claim of one collapsing loss."""
  name = methods.get(loss).display_name
  collapse, rescue = f"{name} collapses at a high learning rate", f"OAR prevents {name}'s collapse"
  where = [lr for lr, s in plain.items() if collapsed(s, threshold)]
  below = {lr: sum(v < threshold for v in s.get("seed_variances", [])) for lr, s in plain.items()}
  some = [f"{n} of {plain[x]['seeds']} seeds at lr {x:.3g}" for x, n in sorted(below.items()) if n]
  note = ("; single seeds below it: " + ", ".join(some)) if some else ""
  transient = [x for x in sorted(plain) if collapsed(plain[x], threshold, "min_variance")]
  transient = [x for x in transient if x not in where]  # collapsed during training only
  if transient:
    note += (
      f"; a transient collapse (mean lowest variance during training < {threshold}) "
      "that training recovered from at lr " + ", ".join(f"{lr:.3g}" for lr in transient)
    )
  if where:
    rescued = [(lr, with_oar.get(lr)) for lr in where]
    # _gap > 0: OAR's runs have numbers, its variance among them
    ok = all(_gap(o, plain[lr], F10) > 0 and not collapsed(o, threshold) for lr, o in rescued)
    lrs = ", ".join(f"{lr:.3g}" for lr in where)
    return [
      _said(collapse, "reproduced", f"mean end variance < {threshold} at lr {lrs}{note}"),
      _said(
        rescue,
        "reproduced" if ok else "not reproduced",
        "; ".join(
          f"lr {lr:.3g}: OAR variance {pm(o and o['variance'])}, "
          f"finetune@10% {pm(o and o[F10])} vs {pm(plain[lr][F10])}"
          for lr, o in rescued
        ),
      ),
    ]
  region = f"lr {min(grid):.3g} … {max(grid):.3g}"
  low = min((s["variance"] for s in plain.values() if s["variance"] is not None), default=None)
  evidence = f"{name} did not collapse (mean end variance) in {region}"
  if transient:
    evidence += "; during training, at lr " + ", ".join(
      f"{lr:.3g}: lowest variance {pm(plain[lr]['min_variance'])} without OAR, "
      f"{pm(with_oar[lr]['min_variance'])} with"
      for lr in transient
      if lr in with_oar
    )
  lowest = f"{region}: lowest mean end variance {pm(low)}{note}"
  return [
    _said(collapse, "not reproduced in the region searched", lowest),
    _said(rescue, "untestable here", evidence),
  ]


def _said(claim, verdict, evidence) -> Dict:
  return {"claim": claim, "verdict": verdict, "evidence": evidence}


def _gap(a, b, key) -> float:
  """``mean_a − mean_b − 2·sd`` of the difference (sd from the seeds' stds):
  positive when a beats b by more than two standard deviations."""
  if a is None or b is None or a[key] is None or b[key] is None:
    return -math.inf
  sd = math.sqrt((a[key + "_std"] or 0) ** 2 + (b[key + "_std"] or 0) ** 2)
  return a[key] - b[key] - 2 * sd


def main(argv=None):
  return cli(run, "lr_sweep", argv, __doc__)


if __name__ == "__main__":
  main(sys.argv[1:])
