"""CLOA's 3-D over-fusion example: three lines in R³, negation augmentation
(docs/experiments.md, "Over-fusion"; the config's docstring holds every option
and the quick size's result).

    python -m experiments.overfusion --config=experiments/configs/overfusion.py:quick --noprogress
    python -m experiments.overfusion             # full size (3 seeds)
    python -m experiments.overfusion --config=experiments/configs/overfusion.py:search

Data ``x = t·u_k + ε`` on three seeded random lines ``u_k`` (generated here per
seed, trained through ``tfjax.train.train_and_evaluate(..., data=...)``),
augmentation ``augment="sign_flip_noise"``; an MLP straight to 3-D embeddings,
each method of ``config.losses`` without and with OAR, every run of a seed from
the same initialisation and batches.  Columns, on the normalised held-out
embeddings (encoder in eval mode): ``variance``, ``rank95`` (1 = on one line),
``top1_energy``, ``class_var`` (``tfjax.diagnostics``), ``knn``
(``tfjax.probes``' weighted kNN, as ``train_and_evaluate`` reports it),
``anchor_acc`` (OAR runs: nearest anchor) and ``final_loss`` (last 50 steps).

Runs live in ``WORKDIR/runs/seed<S>/<method run name>`` and resume from their
checkpoints.  Writes overfusion_embeddings.png (first seed),
overfusion_variance.png, results.md, results.json
(:mod:`experiments.overfusion_report`).
"""

from __future__ import annotations

import itertools
import os
import sys
import time

import jax.numpy as jnp
import numpy as np

from experiments import runs
from experiments.common import cli
from experiments.overfusion_report import report, search_report
from tfjax import diagnostics, methods, probes

NUM_CLASSES = 3
DIM = 3


def make_lines(
  rng: np.random.Generator, n: int, directions: np.ndarray, noise: float
) -> tuple[np.ndarray, np.ndarray]:
  """``n`` points ``t·u_y + ε`` on the lines ``directions`` [k, 3]; balanced."""
  k = len(directions)
  y = rng.permutation(np.arange(n) % k)
  t = rng.normal(size=(n, 1))
  x = t * directions[y] + noise * rng.normal(size=(n, DIM)) / np.sqrt(DIM)
  return x.astype(np.float32), y.astype(np.int32)


def make_data(config, seed: int) -> dict:
  """The seed's lines, train and test points, and their pairwise angles."""
  rng = np.random.default_rng(seed)
  d = rng.normal(size=(NUM_CLASSES, DIM))
  d /= np.linalg.norm(d, axis=1, keepdims=True)
  x_tr, y_tr = make_lines(rng, config.n_train, d, config.noise)
  x_te, y_te = make_lines(rng, config.n_test, d, config.noise)
  cos = np.abs(d @ d.T)[np.triu_indices(NUM_CLASSES, 1)]
  angles = np.degrees(np.arccos(np.clip(cos, 0, 1)))
  return dict(x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, directions=d, angles=angles)


def loss_names(config) -> list[str]:
  """The methods of ``config.losses``, checked against the registry."""
  return methods.parse_names(config.losses)


def run_config(config, loss: str, oar: bool, seed: int):
  """The training config of one run (a resolved copy of ``config``)."""
  fraction, weight = (config.oar.label_fraction, config.oar.weight) if oar else (None, 0.0)
  hidden = {"backbone_kwargs.hidden": (config.hidden, config.hidden)}
  return runs.with_fields(
    config, hidden, seed=seed, loss=loss, label_fraction=fraction, oar_weight=weight
  )


def label(loss: str, oar: bool) -> str:
  """A run's name in the tables: the method's, ``OAR-`` in front with OAR."""
  return ("OAR-" if oar else "") + methods.get(loss).display_name


def train_run(c, data: dict, workdir: str, progress: bool):
  """Trains one encoder; returns (test embeddings, anchors, final loss, kNN)."""
  from tfjax import evaluation, train
  from tfjax.metrics import read_metrics
  from tfjax.state import eval_model

  arrays = (data["x_train"], data["y_train"], data["x_test"], data["y_test"])
  res = train.train_and_evaluate(c, workdir, progress=progress, data=arrays)
  state = res["state"]
  test_z = evaluation.extract_features(
    eval_model(state),
    state.variables,
    data["x_test"],
    batch_size=c.eval.batch_size,
    embeddings=True,
  )
  records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
  tail = [r["loss"] for r in records if r["step"] > c.num_steps - 50]
  anchors = None if state.anchors is None else np.asarray(state.anchors)
  return (test_z, anchors, float(np.mean(tail)) if tail else float(res["final_loss"]), res["knn"])


def geometry(test_z, labels) -> dict:
  """The over-fusion diagnostics of the test embeddings (table columns)."""
  s = diagnostics.summary(jnp.asarray(test_z), jnp.asarray(labels), NUM_CLASSES)
  return {
    "variance": s["variance"],
    "rank95": int(s["rank95"]),
    "top1_energy": s["top1_energy"],
    "class_var": s["class_variance_mean"],
  }


def nearest_anchor(anchors, test_z, labels) -> float:
  """The accuracy of classifying each test embedding by its nearest anchor."""
  return probes.knn_accuracy(
    anchors, np.arange(NUM_CLASSES), test_z, labels, num_classes=NUM_CLASSES, k=1
  )


def run(config, workdir: str, *, progress: bool = True):
  """Every loss of ``config.losses`` ± OAR on ``config.seeds`` seeds (or, with
  ``config.search.enabled``, the collapse search: :func:`search`)."""
  if config.get("search") is not None and config.search.enabled:
    return search(config, workdir, progress=progress)
  names = loss_names(config)
  cases = [(name, oar) for name in names for oar in (False, True)]
  runs.validate([run_config(config, name, oar, config.seed) for name, oar in cases])
  t0 = time.time()
  rows, shown = [], {}
  for seed in runs.seeds(config):
    data = make_data(config, seed)
    for name, oar in cases:
      c = run_config(config, name, oar, seed)
      run_dir = os.path.join(workdir, "runs", f"seed{seed}", methods.run_name(c))
      test_z, anchors, final_loss, knn = train_run(c, data, run_dir, progress)
      rows.append(
        say(
          {
            "run": label(name, oar),
            "loss": name,
            "seed": seed,
            **geometry(test_z, data["y_test"]),
            "knn": knn,
            "anchor_acc": nearest_anchor(anchors, test_z, data["y_test"]) if oar else "",
            "final_loss": final_loss,
          }
        )
      )
      if seed == config.seed:
        shown[rows[-1]["run"]] = test_z
  first = make_data(config, config.seed)
  report(config, workdir, rows, shown, first["y_test"], first["angles"], time.time() - t0)
  return rows


def say(row: dict) -> dict:
  """Prints ``row`` as one line of ``key=value``; returns it."""
  print(
    " | ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
    flush=True,
  )
  return row


def main(argv=None):
  return cli(run, "overfusion", argv, __doc__)


# ----------------------------------------------------------------------------
# The collapse search (config argument "search").
# ----------------------------------------------------------------------------
SEARCH_FIELDS = ("noise", "hidden", "temperature", "optimizer", "learning_rate")


def search_grid(config) -> list[dict]:
  """Every combination of the comma-separated values of ``config.search``."""
  values = []
  for field in SEARCH_FIELDS:
    raw = [v.strip() for v in str(config.search[field]).split(",") if v.strip()]
    if not raw:
      raise ValueError(f"config.search.{field} lists no value")
    cast = str if field == "optimizer" else (int if field == "hidden" else float)
    try:
      values.append([cast(v) for v in raw])
    except ValueError as e:
      raise ValueError(f"config.search.{field}: {e}") from None
  return [dict(zip(SEARCH_FIELDS, combo)) for combo in itertools.product(*values)]


def line_collapse(row: dict) -> bool:
  """Collapsed onto one line: 95 % of the energy in one direction (rank95 = 1)."""
  return row["status"] == "ok" and row["rank95"] == 1


def search(config, workdir: str, *, progress: bool = True):
  """Searches ``config.search`` for a setting where a base loss collapses onto
  a line (CLOA's figure), then reruns the first few such settings with OAR:
  the first of each (noise, width), at most ``search.max_oar_settings``.

  Writes ``search.md`` / ``search.json`` (one row per run) and
  ``overfusion_search.png`` (top-direction energy and kNN of every setting).
  """
  names = methods.parse_names(config.search.losses)
  grid = search_grid(config)
  runs.validate(
    [
      run_config(runs.with_fields(config, setting), name, oar, config.seed)
      for setting in grid
      for name in names
      for oar in (False, True)
    ]
  )
  t0 = time.time()
  data = {
    s["noise"]: make_data(runs.with_fields(config, noise=s["noise"]), config.seed) for s in grid
  }

  def train(setting, oar):
    return [
      say(_search_run(config, setting, n, oar, data[setting["noise"]], workdir, progress))
      for n in names
    ]

  rows = [row for setting in grid for row in train(setting, False)]
  collapsed = [r for r in rows if line_collapse(r)]
  first = {}  # (noise, width) -> its first collapsed setting
  for r in collapsed:
    first.setdefault((r["noise"], r["hidden"]), {k: r[k] for k in SEARCH_FIELDS})
  rescue = list(first.values())[: config.search.max_oar_settings]
  rows += [row for setting in rescue for row in train(setting, True)]
  search_report(
    config, workdir, rows, SEARCH_FIELDS, names, len(grid), collapsed, len(rescue), time.time() - t0
  )
  return rows


def _search_run(config, setting, loss, oar, data, workdir, progress) -> dict:
  """One run of the search: its setting, geometry and kNN, or how it diverged."""
  c = run_config(runs.with_fields(config, setting), loss, oar, config.seed)
  row = {"run": label(loss, oar), **setting}
  name = (
    f"noise{setting['noise']:g}_h{setting['hidden']}_t{setting['temperature']:g}_"
    f"{setting['optimizer']}_lr{setting['learning_rate']:g}"
  )
  try:
    test_z, _, _, knn = train_run(
      c, data, os.path.join(workdir, "search", name, methods.run_name(c)), progress
    )
  except FloatingPointError as e:
    failed = dict.fromkeys(("variance", "rank95", "top1_energy", "knn"), "")
    return {**row, **failed, "status": f"diverged ({e})"}
  return {**row, **geometry(test_z, data["y_test"]), "knn": knn, "status": "ok"}


if __name__ == "__main__":
  main(sys.argv[1:])
