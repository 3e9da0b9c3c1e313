r"""bfloat16 vs float32 compute: accuracy over seeds and CPU step time.

    python -m experiments.precision --noprogress      # 3 seeds × 2 dtypes

Trains the runs of experiments/configs/precision.py (the main job's
class-target TransFusion recipe with ``compute_dtype`` float32 and bfloat16)
for ``seeds`` seeds each and reports kNN / linear accuracy (mean ± std) and
two step times: ``train_ms`` (the training loop's wall time after compiling
over its steps, input and logging included) and ``step_ms`` (the jitted step
alone: the two dtypes' steps alternate in ``timing_rounds`` rounds of
``timing_steps`` steps on one batch, so load from other processes falls on
both; the median round).  Writes WORKDIR/results.md, results.json and per_seed.json.
"""

import json
import os
import sys
import time

from experiments.common import cli
from experiments.report import write_results


def step_times(runs, batch, x_shape, num_classes, data_kind, rounds, steps):
  """Median ms per jitted training step of each run's config, alternating runs."""
  import jax
  import numpy as np
  from tfjax import state as st
  from tfjax.step import step_key, train_step

  jitted = jax.jit(train_step)
  states = {}
  for name, c in runs:
    s = st.create_train_state(c, jax.random.key(0), x_shape, num_classes, data_kind=data_kind)
    s, _ = jax.block_until_ready(jitted(s, batch, step_key(0, 0)))  # compile
    states[name] = s
  times = {name: [] for name, _ in runs}
  for _ in range(rounds):
    for name, _ in runs:
      s = states[name]
      t0 = time.perf_counter()
      for i in range(steps):
        s, metrics = jitted(s, batch, step_key(0, i + 1))
      jax.block_until_ready((s, metrics))
      times[name].append(1000 * (time.perf_counter() - t0) / steps)
      states[name] = s
  return {name: float(np.median(t)) for name, t in times.items()}


def run(config, workdir: str, *, progress: bool = True):
  import numpy as np
  from experiments.report import formatted, mean_std
  from experiments.runs import run_configs
  from tfjax import train
  from tfjax.data.pipeline import read_batch
  from tfjax.config import validate
  from tfjax.data.splits import open_splits

  runs = run_configs(config)
  for _, c in runs:
    validate(c, 1)
  spec = validate(config, 1)
  sources = open_splits(config, spec)
  seeds = [config.seed + k for k in range(config.seeds)]
  rows, per_run = [], {}
  for name, c in runs:
    per_seed = []
    for seed in seeds:
      c_seed = c.copy_and_resolve_references()
      c_seed.seed = seed
      res = train.train_and_evaluate(
        c_seed, os.path.join(workdir, name, f"seed{seed}"), data=sources, progress=progress
      )
      res.pop("state")
      per_seed.append(
        {
          "knn": res["knn"],
          "linear": res["linear"],
          "train_ms": 1000 * res["train_seconds"] / max(c.num_steps - 1, 1),
        }
      )
      print(json.dumps({"run": name, "seed": seed, **per_seed[-1]}), flush=True)
    per_run[name] = per_seed
    rows.append({"compute_dtype": name, **mean_std(per_seed), "seeds": len(seeds)})

  batch = read_batch(sources[0], np.arange(config.batch_size))
  batch = {"x": batch["x"], "semi_label": batch["label"].astype(np.int32)}
  ms = step_times(
    runs,
    batch,
    sources[0].x_shape,
    spec.num_classes,
    spec.kind,
    config.timing_rounds,
    config.timing_steps,
  )
  for row in rows:
    row["step_ms"] = ms[row["compute_dtype"]]
    print(json.dumps({"run": row["compute_dtype"], "step_ms": row["step_ms"]}), flush=True)
  table = write_results(
    workdir,
    f"{config.dataset}: float32 vs bfloat16 compute",
    [formatted(r) for r in rows],
    ["compute_dtype", "knn", "linear", "train_ms", "step_ms", "seeds"],
    f"Mean ± standard deviation over seeds {seeds[0]}…{seeds[-1]} on the test "
    "split; train_ms: training-loop wall time per step after compiling "
    "(input and logging included); step_ms: the jitted step alone, median "
    f"of {config.timing_rounds} alternating rounds of {config.timing_steps} steps.",
  )
  with open(os.path.join(workdir, "per_seed.json"), "w") as f:
    json.dump(per_run, f, indent=2)
  print("\n" + table)
  return rows


def main(argv=None):
  return cli(run, "precision", argv, __doc__)


if __name__ == "__main__":
  main(sys.argv[1:])
