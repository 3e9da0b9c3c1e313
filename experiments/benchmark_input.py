"""Input-pipeline throughput: grain over TFDS sources, and + the step's views.

    python -m experiments.benchmark_input --config=experiments/configs/benchmark_input.py[:quick|tiny] \\
        [--config.datasets=digits,mnist1d] [--config.batch_size=512] [--config.steps=100]

For every dataset of ``config.datasets`` (offline ones need no network),
examples per second of

1. ``make_dataset``: :func:`tfjax.data.pipeline.make_dataset` alone (numpy
   batches; the convenience iterator);
2. ``train_batches``: :func:`tfjax.data.pipeline.train_batches` alone (the
   grain reader of training: batch s is a pure function of (seed, s));
3. ``+ device_prefetch``: (2) followed by
   :func:`tfjax.data.pipeline.device_prefetch`, i.e. the path
   ``tfjax.train`` takes, blocking until each batch is on the device;
4. ``+ views``: (3) followed by the training step's jitted views
   (:func:`tfjax.step.global_index_views` with
   :func:`tfjax.data.augment.get_augmentation` of the config's ``augment``
   and the dataset's kind; ``num_views`` views, the step's key), blocking on
   the views each step.

Each measurement starts a fresh iterator, skips ``warmup`` batches (threads
start, compiles) and times ``steps`` batches.  Writes ``results.md`` and
``results.json`` to the work directory and prints the table.  Nothing
resumes: every call measures afresh and replaces them.
"""

from __future__ import annotations

import os
import sys
import time

import jax


def _rate(next_batch, steps: int, warmup: int, batch_size: int) -> float:
  for _ in range(warmup):
    next_batch()
  t0 = time.perf_counter()
  for _ in range(steps):
    next_batch()
  return steps * batch_size / (time.perf_counter() - t0)


def measure(config, name: str) -> dict:
  """Examples/s of the four measurements (module docstring) for dataset ``name``."""
  from tfjax.data import get_dataset_spec
  from tfjax.data.augment import get_augmentation
  from tfjax.data.pipeline import device_prefetch, make_dataset, open_source, train_batches
  from tfjax.step import global_index_views, step_key

  spec = get_dataset_spec(name)
  b, steps, warmup = config.batch_size, config.steps, config.warmup
  inp = config.input

  it = make_dataset(
    name,
    config.split,
    batch_size=b,
    seed=config.seed,
    data_dir=config.data_dir,
    download=config.download,
    num_threads=inp.num_threads,
  )
  make = _rate(lambda: next(it), steps, warmup, b)

  source = open_source(name, config.split, data_dir=config.data_dir, download=config.download)

  def batches(device: bool):
    host = train_batches(
      source,
      seed=config.seed,
      batch_size=b,
      start_step=0,
      end_step=warmup + steps,
      num_threads=inp.num_threads,
      prefetch=inp.host_prefetch,
    )
    return device_prefetch(host, size=inp.device_prefetch) if device else host

  host = batches(False)
  reader = _rate(lambda: next(host), steps, warmup, b)

  dev = batches(True)
  on_device = _rate(lambda: jax.block_until_ready(next(dev)[-1]), steps, warmup, b)

  augment = get_augmentation(config.augment, spec.kind)
  strength, num_views, seed = (
    float(config.augment_strength),
    int(config.num_views),
    int(config.seed),
  )

  @jax.jit
  def views(step, x):  # the step's views; its key folded in on device
    return global_index_views(augment, step_key(seed, step), x, strength, num_views, 0)

  dev = batches(True)

  def with_views():
    first, _, batch = next(dev)
    jax.block_until_ready(views(first, batch["x"]))

  viewed = _rate(with_views, steps, warmup, b)
  return {
    "dataset": name,
    "kind": spec.kind,
    "x_shape": "×".join(map(str, spec.x_shape)),
    "batch": b,
    "make_dataset": round(make),
    "train_batches": round(reader),
    "+ device_prefetch": round(on_device),
    "+ views": round(viewed),
  }


COLUMNS = [
  "dataset",
  "kind",
  "x_shape",
  "batch",
  "make_dataset",
  "train_batches",
  "+ device_prefetch",
  "+ views",
]


def run(config, workdir: str, progress: bool = True):
  """Measures every dataset of ``config.datasets``; writes results.md/json."""
  from experiments.report import write_results

  names = [s for s in config.datasets.replace(" ", "").split(",") if s]
  load_start = [round(x, 2) for x in os.getloadavg()]
  rows = []
  for name in names:
    if progress:
      print(f"{name} ...", file=sys.stderr, flush=True)
    rows.append(measure(config, name))
  dev = jax.devices()[0]
  notes = (
    f"Examples per second; {config.steps} timed batches after "
    f"{config.warmup} untimed, split {config.split!r}, device "
    f"{dev.platform}:{dev.device_kind}, {os.cpu_count()} CPU cores, "
    f"reader threads {config.input.num_threads}, host prefetch "
    f"{config.input.host_prefetch}, device prefetch "
    f"{config.input.device_prefetch}; views: {config.num_views} of the "
    f"augmentation {config.augment or 'default of the kind'!r} at strength "
    f"{config.augment_strength}.  Load average at start/end: {load_start} / "
    f"{[round(x, 2) for x in os.getloadavg()]}.\n"
  )
  table = write_results(workdir, "Input-pipeline throughput (examples/s)", rows, COLUMNS, notes)
  print("\n" + table + "\n" + notes)
  return rows


def main(argv=None):
  from experiments.common import cli

  return cli(run, "benchmark_input", argv, __doc__)


if __name__ == "__main__":
  main(sys.argv[1:])
