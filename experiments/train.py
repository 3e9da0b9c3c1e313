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

import sys
import time

from experiments.common import cli
from experiments.report import plot_accuracy, write_results
from experiments.runs import compare, compared_metrics


def run(config, workdir: str, *, progress: bool = True, data=None):
  """Trains every run of ``config.compare`` and evaluates the baselines."""
  t_job = time.time()
  rows = compare(config, workdir, progress=progress, data=data)
  from tfjax import distributed

  if distributed.is_primary():
    report(config, workdir, rows, time.time() - t_job)
  return rows


def report(config, workdir: str, rows, seconds: float) -> None:
  """``results.md`` (the table), ``results.json`` (the rows), ``comparison.png``."""
  import jax

  # Unlabelled data has no probes: the training loss is the one number.
  labelled = any("knn" in r for r in rows)
  metrics = compared_metrics(config) if labelled else ["final_loss"]
  seeds = f"seeds {config.seed}…{config.seed + config.seeds - 1}"
  table = write_results(
    workdir,
    f"{config.dataset}, backbone {config.backbone}, batch "
    f"{config.batch_size}, {config.seeds} seed(s)",
    rows,
    ["method"] + metrics + ["feature_variance", "embedding_variance", "steps", "seeds", "minutes"],
    f"Mean ± standard deviation over {config.seeds} seed(s) ({seeds}: "
    "initialisation, batches, views); kNN, linear and fine-tuning on the "
    "backbone features (inductive); knn_head on the head's output "
    "(TransFusion's fused features, transductive; the projector's output "
    "otherwise). steps: each run's own training steps; minutes: the training "
    "time its seeds' runs report (train_seconds, summed over the seeds and "
    "over every invocation that trained them; no evaluation). Total time of "
    f"this invocation {seconds / 60:.1f} min on {jax.local_device_count()} "
    f"{jax.default_backend()} device(s).",
  )
  if labelled:
    plot_accuracy({"downstream accuracy": rows}, metrics, f"{workdir}/comparison.png")
  print("\n" + table)
  print(f"wrote {workdir}/results.md, results.json" + (", comparison.png" if labelled else ""))


def main(argv=None):
  return cli(run, "train", argv, __doc__, config_name="default")


if __name__ == "__main__":
  main(sys.argv[1:])
