"""The training loop: streaming input, the one step, checkpoints, metrics, evaluation.

:func:`train_and_evaluate` trains ``config`` in a work directory:

* batches stream from :mod:`tfjax.data.pipeline` (grain over a random-access
  source; batch s is a pure function of (seed, s)), prefetched on the host
  and on the devices;
* :func:`tfjax.step.train_step` runs jitted on one device or ``jax.pmap``-ed
  over all local devices (``steps_per_call`` steps per call as a scan);
* the config (and data passed as arrays) is checked by
  :func:`tfjax.config.validate` and the work directory
  (:mod:`tfjax.workdir`) before any data is read: writable, locked against
  a second run, and holding no run of another config (a rerun may raise
  ``num_steps`` or change free fields; ``overwrite=True`` starts afresh);
* orbax checkpoints every ``checkpoint_every`` steps; a rerun resumes from
  the last readable one (:mod:`tfjax.checkpoint` falls back past a corrupt
  one) and ends bit-identical to an uninterrupted run;
* metrics go to ``metrics.jsonl`` and TensorBoard event files through
  ``clu.metric_writers`` (:mod:`tfjax.metrics`); a non-finite metric (loss,
  gradient norm, ...) at a logged step, or a non-finite parameter,
  BatchNorm statistic or optimiser state at a logged step or before a
  checkpoint, stops the run, naming the step and the quantity
  (:mod:`tfjax.guards`): no checkpoint ever holds a NaN;
* the inductive features are then evaluated (:mod:`tfjax.evaluation`) and
  ``results.json`` and the plots of :mod:`tfjax.plots` are written.

Example::

    >>> from tfjax.config import base_config
    >>> results = train_and_evaluate(base_config(), "/tmp/run")
    >>> results["knn"]
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Optional

import jax
import ml_collections

from tfjax import distributed, recipes
from tfjax import workdir as workdirs
from tfjax.checkpoint import Checkpointer
from tfjax.config import validate
from tfjax.data import pipeline
from tfjax.data.splits import in_memory_splits, num_classes as split_classes, open_splits
from tfjax.devices import compile_step, replicate, stack_keys, unreplicate
from tfjax.evaluation import evaluate_state, release_compiled_programs
from tfjax.guards import DeadTrainingWatch, check_state_finite, diverged
from tfjax.metrics import _finite_record, make_metric_writer, read_metrics
from tfjax.progress import Progress
from tfjax.state import create_train_state
from tfjax.step import step_key


def _logged_record(workdir: str, step: int) -> Optional[Dict[str, Any]]:
  """The ``metrics.jsonl`` record of ``step`` (None if there is none)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return None
  return next((r for r in read_metrics(path) if r.get("step") == step), None)


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  progress: bool = True,
  data=None,
  stop_after: Optional[int] = None,
  overwrite: bool = False,
) -> Dict[str, Any]:
  """Trains ``config`` in ``workdir`` (resuming from its last checkpoint).

  Writes ``config.json``, ``run.json``, ``metrics.jsonl``, ``tensorboard/``,
  ``checkpoints/``, ``results.json`` and (``write_plots``) the plots to
  ``workdir``.  ``data`` may give ``(x_train, y_train, x_test, y_test)``
  arrays (or ``(train_source, test_source)``) instead of
  ``config.dataset``.  ``stop_after`` ends the run after that many steps of
  this call, without the evaluation (to test resumption).  Returns the
  results dict, with the final ``"state"``.

  Recipe fields left unset take the method's recipe for the data's kind
  first (:func:`tfjax.recipes.resolve`), said in one line; ``config.json``
  holds the resolved values.  Before any data is read: :func:`tfjax.config.validate` (the config, the
  registry dataset on disk or the ``data`` arrays, the batch size against
  the training split), and the work directory
  (:class:`tfjax.workdir.RunDirectory`): writable, not in use by another
  run (``WorkdirBusyError``), and holding no run of another config
  (``ConfigMismatchError``: a rerun may only raise ``num_steps`` or change
  the free fields of :data:`tfjax.rerun.FREE_FIELDS`).  ``overwrite``
  deletes the run the directory holds and starts afresh.  Training stops
  with ``FloatingPointError`` at the first logged step (or checkpoint) whose
  metrics or parameters are not finite, naming the step and the quantity;
  no checkpoint is ever written with a non-finite value.  On unlabelled
  data (``spec.labelled`` False) the probes are skipped, said in one line.
  """
  config = recipes.resolve_and_say(config, print if distributed.is_primary() else None)
  spec = validate(config, data=data)
  show = Progress(progress and distributed.is_primary())
  try:
    with workdirs.RunDirectory(workdir, config, overwrite=overwrite, say=show.warn) as run:
      return _train_and_evaluate(config, workdir, spec, run, show, data=data, stop_after=stop_after)
  finally:
    release_compiled_programs()


def _train_and_evaluate(config, workdir, spec, run, show, *, data, stop_after):
  """:func:`train_and_evaluate` once the work directory is checked and locked."""
  processes = jax.process_count()
  num_devices = config.num_devices or jax.device_count()
  local_devices = num_devices // processes
  primary = distributed.is_primary()

  train_source, test_source = open_splits(config, spec, data)
  run.start(train_source, test_source)  # checks the data; writes config.json
  train_source, test_source = in_memory_splits(config, train_source, test_source)
  semi = None
  if config.label_fraction is not None:  # one pass over the labels (4 B each)
    semi = pipeline.semi_labels(
      pipeline.source_labels(train_source), config.label_fraction, config.seed
    )
  num_classes = split_classes(spec, train_source, data)

  axis_name = "batch" if num_devices > 1 else None
  state = create_train_state(
    config,
    jax.random.key(config.seed),
    train_source.x_shape,
    num_classes,
    data_kind=spec.kind,
    axis_name=axis_name,
  )
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  restored = ckpt.restore_latest(state)
  if restored is not None:
    state = restored
  start = int(state.step)
  saved = ckpt.latest_step()  # the newest (finite) checkpoint on disk
  writer = make_metric_writer(workdir, start) if primary else None

  end = config.num_steps if stop_after is None else min(config.num_steps, start + stop_after)
  per_call = config.steps_per_call
  step_fn = compile_step(num_devices, per_call)
  if axis_name is not None:
    state = replicate(state, local_devices)
  batches = pipeline.device_prefetch(
    pipeline.train_batches(
      train_source,
      seed=config.seed,
      batch_size=config.batch_size,
      start_step=start,
      end_step=end,
      steps_per_call=per_call,
      semi=semi,
      num_devices=local_devices if axis_name else None,
      num_threads=config.input.num_threads,
      prefetch=config.input.host_prefetch,
      labelled_batch_size=config.labelled_batch_size,
    ),
    size=config.input.device_prefetch if processes == 1 else 0,
    num_devices=local_devices if axis_name else None,
  )

  t0, last, bar, started = time.time(), None, None, False
  earlier = run.train_seconds  # the earlier starts' training, up to `start`
  trained = lambda: earlier + (time.time() - t0 if started else 0.0)  # noqa: E731
  watch = DeadTrainingWatch()
  if start < end:
    show.say(f"{config.loss}: compiling the step (the progress bar starts after it)")
  for first, count, batch in batches:
    if per_call == 1:
      state, metrics = step_fn(state, batch, step_key(config.seed, first))
    else:
      state, metrics = step_fn(state, batch, stack_keys(config.seed, first, count))
    done = first + count
    if not started:  # the first call compiled: rates and the bar start now
      jax.block_until_ready(metrics)
      started, t0 = True, time.time()
      bar = show.bar(total=config.num_steps, initial=done, desc=config.loss)
    elif bar is not None:
      bar.update(count)
    logged = [
      s for s in range(first + 1, done + 1) if s % config.log_every == 0 or s == config.num_steps
    ]
    if logged:
      m = metrics if axis_name is None else unreplicate(metrics)
      m = jax.device_get(m)
      for s in logged:
        scalars = {k: (v if per_call == 1 else v[s - first - 1]) for k, v in m.items()}
        record = _finite_record(s, scalars)
        record["elapsed_s"] = round(time.time() - t0, 2)
        if writer is not None:
          writer.write_scalars(s, {**scalars, "elapsed_s": record["elapsed_s"]})
        last = record
        for message in watch.check(record):
          show.warn(message)
        if "nonfinite" in record:
          raise FloatingPointError(diverged(config, record["nonfinite"], s, saved))
      check_state_finite(config, state, axis_name, done, saved)
      if bar is not None:
        bar.set_postfix(loss=f"{last['loss']:.4f}")
    if any(
      s % config.checkpoint_every == 0 or s == config.num_steps for s in range(first + 1, done + 1)
    ):
      if not logged:  # never a non-finite checkpoint
        check_state_finite(config, state, axis_name, done, saved)
      ckpt.save(done, state if axis_name is None else unreplicate(state))
      saved = done
      run.save_train_seconds(trained())
  if bar is not None:
    bar.close()
  if writer is not None:
    writer.close()
  ckpt.close()
  final = state if axis_name is None else unreplicate(state)
  final = jax.tree.map(jax.numpy.asarray, final)
  if not primary or (stop_after is not None and int(final.step) < config.num_steps):
    return {"step": int(final.step), "state": final}

  if last is None:  # nothing left to train (a finished run): its logged loss
    last = _logged_record(workdir, int(final.step))
  results = {
    "loss_name": config.loss,
    "dataset": config.dataset,
    "evaluated_on": "validation" if config.get("validation_fraction") else "test",
    "step": int(final.step),
    "final_loss": None if last is None else last["loss"],
    # after compiling, summed over the starts of the run
    "train_seconds": round(trained(), 1),
  }
  if spec.labelled:
    results.update(
      evaluate_state(
        final,
        train_source,
        test_source,
        pipeline.source_labels(train_source),
        num_classes,
        config,
        show,
      )
    )
  else:
    results["evaluated_on"] = None
    show.warn(
      f"dataset {config.dataset!r} has no labels: the probes (kNN, linear, fine-tuning) are skipped"
    )
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  if config.write_plots:
    from tfjax import plots

    plots.training_plots(workdir, final, test_source, config)
  results["state"] = final
  return results
