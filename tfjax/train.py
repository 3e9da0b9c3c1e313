"""The training loop: streaming input, the one step, checkpoints, metrics, evaluation.

:func:`train_and_evaluate` trains ``config`` in a work directory:

* batches stream from :mod:`tfjax.data.pipeline` (grain over a random-access
  source; batch s is a pure function of (seed, s)), prefetched on the host
  and on the devices;
* :func:`tfjax.step.train_step` runs jitted on one device or ``jax.pmap``-ed
  over all local devices (``steps_per_call`` steps per call as a scan);
* the work directory (:mod:`tfjax.workdir`) is checked before any data is
  read: writable, locked against a second run, and holding no run of
  another config (a rerun may raise ``num_steps`` or change free fields;
  ``overwrite=True`` starts afresh);
* orbax checkpoints every ``checkpoint_every`` steps; a rerun resumes from
  the last readable one (:mod:`tfjax.checkpoint` falls back past a corrupt
  one) and ends bit-identical to an uninterrupted run;
* metrics go to ``metrics.jsonl`` and TensorBoard event files through
  ``clu.metric_writers`` (:mod:`tfjax.metrics`); a non-finite metric (loss,
  gradient norm, ...) at a logged step, or a non-finite parameter,
  BatchNorm statistic or optimiser state at a logged step or before a
  checkpoint, stops the run, naming the step and the quantity: no
  checkpoint ever holds a NaN;
* the inductive features are then evaluated (:mod:`tfjax.evaluation`) and
  ``results.json`` and the plots of :mod:`tfjax.plots` are written.

Example::

    >>> from tfjax.config import base_config
    >>> results = train_and_evaluate(base_config(), "/tmp/run")
    >>> results["knn"]
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import weakref
from typing import Any, Callable, Dict, Mapping, Optional

import jax
import numpy as np
import ml_collections

from tfjax import diagnostics, distributed, evaluation, recipes
from tfjax import workdir as workdirs
from tfjax.checkpoint import Checkpointer
from tfjax.metrics import _finite_record, make_metric_writer, read_metrics  # noqa: F401  (read_metrics re-exported)
from tfjax.data import pipeline
from tfjax.state import (TrainState, create_train_state, eval_model,
                         validate_config)
from tfjax.step import step_key, train_step, train_steps

# Re-exported for users of the previous single-module layout.
from tfjax.state import build_network, build_optimizer  # noqa: F401
from tfjax.data.pipeline import batch_indices  # noqa: F401


# ----------------------------------------------------------------------------
# Devices.
# ----------------------------------------------------------------------------
def replicate(tree, num_devices: int):
  """Stacks ``tree`` ``num_devices`` times along a new leading (pmap) axis."""
  return jax.tree.map(
      lambda x: np.broadcast_to(np.asarray(x), (num_devices,) + np.shape(x)), tree)


def unreplicate(tree):
  """First device's copy of a replicated pytree."""
  return jax.tree.map(lambda x: x[0], tree)


def shard(batch: Dict[str, np.ndarray], num_devices: int):
  """[B, ...] -> [D, B/D, ...] for pmap."""
  def split(x):
    if x.shape[0] % num_devices:
      raise ValueError(f"batch of {x.shape[0]} is not divisible by the device "
                       f"count {num_devices}")
    return x.reshape((num_devices, x.shape[0] // num_devices) + x.shape[1:])
  return jax.tree.map(split, batch)


def compile_step(num_devices: int, steps_per_call: int = 1) -> Callable:
  """The jitted (one device) or pmapped step, one or ``steps_per_call`` at a time.

  Single step: ``fn(state, batch, key)``; several: ``fn(state, batches, keys)``
  with a leading step axis on ``batches`` ([S, n, ...]; [D, S, n/D, ...]
  under pmap) and ``keys`` [S].
  """
  base = train_step if steps_per_call == 1 else train_steps

  def fn(state, batch, key):  # a fresh function: its compiled programs die with it
    return base(state, batch, key)

  if num_devices == 1:
    return jax.jit(fn, donate_argnums=(0,))
  return jax.pmap(fn, axis_name="batch", in_axes=(0, 0, None),
                  donate_argnums=(0,))


def _stack_keys(seed: int, first: int, count: int):
  return jax.vmap(lambda s: step_key(seed, s))(np.arange(first, first + count))


# ----------------------------------------------------------------------------
# Data.
# ----------------------------------------------------------------------------
def open_splits(config, spec, data=None):
  """``(train source, evaluation source)``: ``data``, or the registry dataset.

  With ``config.validation_fraction`` the evaluation source is that held-out
  part of the training split (and training uses the rest), not the test split.
  Two sources given as ``data`` are taken as they are (already split).
  """
  if data is not None and len(data) == 2:
    return tuple(data)
  if data is not None:
    x_train, y_train, x_test, y_test = data
    splits = pipeline.ArraySource(x_train, y_train), pipeline.ArraySource(x_test, y_test)
  else:
    splits = (pipeline.open_source(config.dataset, spec.train_split, data_dir=config.data_dir),
              pipeline.open_source(config.dataset, spec.test_split, data_dir=config.data_dir))
  if config.get("validation_fraction"):
    return pipeline.split_source(splits[0], config.validation_fraction, seed=0)
  return splits


# Sources already read into memory, by the object a caller passed (a job
# passes the same sources to every run of its seeds): read once.
_READ = weakref.WeakKeyDictionary()


def _in_memory(config, *sources):
  """The sources read into memory when small (``config.input.in_memory_mb``)."""
  limit = int(config.get("input", {}).get("in_memory_mb", 0)) << 20
  out = []
  for source in sources:
    try:
      copy = _READ.get(source)
    except TypeError:   # not weak-referable: read it again
      copy = None
    if copy is None or copy.x.nbytes > limit:
      copy = pipeline.in_memory(source, limit)
      if copy is not source:
        with contextlib.suppress(TypeError):
          _READ[source] = copy
    out.append(copy)
  return tuple(out)


def _num_classes(spec, train_source, data) -> int:
  """The registry's class count; with user ``data``, at least its labels' range."""
  if data is None:
    return spec.num_classes
  return max(spec.num_classes, int(pipeline.source_labels(train_source).max()) + 1)


def _check_batch_fits(config, train_source) -> None:
  """The batch fits in the training split (checked before any compute)."""
  if config.batch_size > len(train_source):
    held = (f" (after holding out validation_fraction="
            f"{config.validation_fraction})" if config.get("validation_fraction") else "")
    raise ValueError(f"batch_size {config.batch_size} exceeds the "
                     f"{len(train_source)} training examples{held}")


# ----------------------------------------------------------------------------
# Divergence: never a silent NaN, never a NaN checkpoint.
# ----------------------------------------------------------------------------
def _leaf_finite(x):
  if jax.numpy.issubdtype(x.dtype, jax.numpy.inexact):
    return jax.numpy.isfinite(x).all()
  return jax.numpy.ones((), bool)


def _leaf_flags(tree):
  """One bool per leaf of ``tree``: all its entries are finite."""
  return jax.tree.map(_leaf_finite, tree)


_finite_flags = jax.jit(_leaf_flags)
_finite_flags_pmap = jax.pmap(_leaf_flags)   # per device, no gather


def release_compiled_programs() -> None:
  """Frees the XLA programs compiled for runs that have finished.

  Every run compiles its own step, finiteness check and feature functions
  (their static recipe and model differ), and JAX keeps a compiled program
  as long as the function it belongs to.  On CPU each program holds a few
  memory mappings of machine code, and Linux allows a process 65,530
  (``vm.max_map_count``): a sweep of ~35 MNIST-1D runs in one process used to
  exhaust them and die with a segmentation fault inside XLA's compiler.
  :func:`train_and_evaluate` and :func:`evaluate_untrained` call this when
  they finish; it clears only tfjax's own caches (the step functions are
  per run already), not the caller's jitted functions.
  """
  global _finite_flags_pmap
  _finite_flags.clear_cache()
  _finite_flags_pmap = jax.pmap(_leaf_flags)   # pmap has no clear_cache
  evaluation.clear_compiled()


def nonfinite_state(state: TrainState, *, replicated: bool = False) -> list:
  """Paths of the leaves of ``state``'s params, batch_stats and opt_state
  that hold a NaN or an infinity, parameters first (``params/backbone/...``).

  One jitted reduction per leaf, on device; only a bool per leaf comes back.
  ``replicated``: ``state`` carries a leading device axis (the pmapped
  loop's); every device's copy is checked, without gathering it.
  """
  tree = [{"params": state.params}, {"batch_stats": state.batch_stats},
          {"opt_state": state.opt_state}]   # a list: reported in this order
  flags = jax.device_get((_finite_flags_pmap if replicated else _finite_flags)(tree))
  return [_path_name(path)
          for path, ok in jax.tree_util.tree_flatten_with_path(flags)[0]
          if not np.all(ok)]


def _path_name(path) -> str:
  """``params/backbone/Dense_0/kernel`` for a pytree key path."""
  parts = []
  for k in path[1:]:   # path[0] is the list index of nonfinite_state's tree
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


_FIRST = ("loss", "grad_norm", "param_norm")


def _diverged(config, quantities, step: int, saved: Optional[int]) -> str:
  quantities = sorted(quantities, key=lambda q: (
      _FIRST.index(q) if q in _FIRST else len(_FIRST), q))
  where = (f"the last checkpoint (step {saved}) is finite" if saved is not None
           else "no checkpoint was written")
  return (f"training diverged: {', '.join(quantities)} not finite at step "
          f"{step} (learning_rate={config.learning_rate:g}); {where}")


def _check_state_finite(config, state, axis_name, step: int,
                        saved: Optional[int]) -> None:
  bad = nonfinite_state(state, replicated=axis_name is not None)
  if bad:   # parameters first, then BatchNorm statistics, then optimiser state
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    raise FloatingPointError(_diverged(
        config, [f"the state ({', '.join(bad[:3])}{more})"], step, saved))


def _logged_record(workdir: str, step: int) -> Optional[Dict[str, Any]]:
  """The ``metrics.jsonl`` record of ``step`` (None if there is none)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return None
  return next((r for r in read_metrics(path) if r.get("step") == step), None)


class DeadTrainingWatch:
  """Warns, once each, when training has stopped learning without failing.

  * more than half of the TransFusion head's adjacency rows are uniform
    (``uniform_rows`` > 0.5: "dead" ReLU rows pass no gradient);
  * ``grad_norm`` is exactly 0 at two consecutive logged steps.
  """

  def __init__(self):
    self._zero_grads, self._said = 0, set()

  def check(self, record: Mapping[str, Any]):
    out = []
    rows = record.get("uniform_rows")
    if rows is not None and rows > 0.5 and "rows" not in self._said:
      self._said.add("rows")
      out.append(f"warning: at step {record['step']} {rows:.0%} of the "
                 "TransFusion adjacency rows are uniform (dead ReLU rows pass "
                 "no gradient); see head.final_projection / head.activation")
    grad = record.get("grad_norm")
    self._zero_grads = self._zero_grads + 1 if grad == 0.0 else 0
    if self._zero_grads >= 2 and "grad" not in self._said:
      self._said.add("grad")
      out.append(f"warning: grad_norm is 0 at two consecutive logged steps "
                 f"(step {record['step']}): the model no longer learns")
    return out


class _Progress:
  """tqdm on the primary process; a no-op elsewhere or when disabled."""

  def __init__(self, enabled: bool):
    self.enabled = enabled

  def warn(self, message: str):
    """Always shown (on the primary process), with or without progress bars."""
    if self.enabled:
      self.say(message)
    elif distributed.is_primary():
      import sys
      print(message, file=sys.stderr, flush=True)

  def bar(self, **kwargs):
    if not self.enabled:
      return None
    from tqdm.auto import tqdm
    return tqdm(dynamic_ncols=True, **kwargs)

  def say(self, message: str):
    if self.enabled:
      from tqdm.auto import tqdm
      tqdm.write(message)


# ----------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       progress: bool = True, data=None,
                       stop_after: Optional[int] = None,
                       overwrite: bool = False) -> Dict[str, Any]:
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
  holds the resolved values.  Before any data is read:
  :func:`tfjax.state.validate_config`, the
  registry dataset on disk and the batch size against its split
  (:func:`tfjax.workdir.check_dataset`), and the work directory
  (:class:`tfjax.workdir.RunDirectory`): writable, not in use by another
  run (``WorkdirBusyError``), and holding no run of another config
  (``ConfigMismatchError``: a rerun may only raise ``num_steps`` or change
  the free fields of :data:`tfjax.workdir.FREE_FIELDS`).  ``overwrite``
  deletes the run the directory holds and starts afresh.  Training stops
  with ``FloatingPointError`` at the first logged step (or checkpoint) whose
  metrics or parameters are not finite, naming the step and the quantity;
  no checkpoint is ever written with a non-finite value.
  """
  config = recipes.resolve_and_say(config, print if distributed.is_primary() else None)
  processes = jax.process_count()
  num_devices = config.num_devices or jax.device_count()
  if processes > 1 and num_devices != jax.device_count():
    raise ValueError(f"a run of {processes} processes uses all "
                     f"{jax.device_count()} devices; set num_devices=0, "
                     f"not {num_devices}")
  if num_devices > jax.device_count():
    raise ValueError(f"config asks for {num_devices} devices, but only "
                     f"{jax.device_count()} are available")
  spec = validate_config(config, num_devices)
  if data is None:
    workdirs.check_dataset(config, spec)
  show = _Progress(progress and distributed.is_primary())
  try:
    with workdirs.RunDirectory(workdir, config, overwrite=overwrite,
                               say=show.warn) as run:
      return _train_and_evaluate(config, workdir, spec, run, show, data=data,
                                 stop_after=stop_after)
  finally:
    release_compiled_programs()


def _train_and_evaluate(config, workdir, spec, run, show, *, data, stop_after):
  """:func:`train_and_evaluate` once the work directory is checked and locked."""
  processes = jax.process_count()
  num_devices = config.num_devices or jax.device_count()
  local_devices = num_devices // processes
  primary = distributed.is_primary()

  train_source, test_source = open_splits(config, spec, data)
  _check_batch_fits(config, train_source)
  run.start(train_source, test_source)   # checks the data; writes config.json
  train_source, test_source = _in_memory(config, train_source, test_source)
  semi = None
  if config.label_fraction is not None:  # one pass over the labels (4 B each)
    semi = pipeline.semi_labels(pipeline.source_labels(train_source),
                                config.label_fraction, config.seed)
  num_classes = _num_classes(spec, train_source, data)

  axis_name = "batch" if num_devices > 1 else None
  state = create_train_state(config, jax.random.key(config.seed),
                             train_source.x_shape, num_classes,
                             data_kind=spec.kind, axis_name=axis_name)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  restored = ckpt.restore_latest(state)
  if restored is not None:
    state = restored
  start = int(state.step)
  saved = ckpt.latest_step()   # the newest (finite) checkpoint on disk
  writer = make_metric_writer(workdir, start) if primary else None

  end = config.num_steps if stop_after is None else min(config.num_steps, start + stop_after)
  per_call = config.steps_per_call
  step_fn = compile_step(num_devices, per_call)
  if axis_name is not None:
    state = replicate(state, local_devices)
  batches = pipeline.device_prefetch(
      pipeline.train_batches(
          train_source, seed=config.seed, batch_size=config.batch_size,
          start_step=start, end_step=end, steps_per_call=per_call, semi=semi,
          num_devices=local_devices if axis_name else None,
          num_threads=config.input.num_threads, prefetch=config.input.host_prefetch,
          labelled_batch_size=config.labelled_batch_size),
      size=config.input.device_prefetch if processes == 1 else 0,
      num_devices=local_devices if axis_name else None)

  t0, last, bar, started = time.time(), None, None, False
  watch = DeadTrainingWatch()
  if start < end:
    show.say(f"{config.loss}: compiling the step (the progress bar starts after it)")
  for first, count, batch in batches:
    if per_call == 1:
      state, metrics = step_fn(state, batch, step_key(config.seed, first))
    else:
      state, metrics = step_fn(state, batch, _stack_keys(config.seed, first, count))
    done = first + count
    if not started:  # the first call compiled: rates and the bar start now
      jax.block_until_ready(metrics)
      started, t0 = True, time.time()
      bar = show.bar(total=config.num_steps, initial=done, desc=config.loss)
    elif bar is not None:
      bar.update(count)
    logged = [s for s in range(first + 1, done + 1)
              if s % config.log_every == 0 or s == config.num_steps]
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
          raise FloatingPointError(_diverged(config, record["nonfinite"], s, saved))
      _check_state_finite(config, state, axis_name, done, saved)
      if bar is not None:
        bar.set_postfix(loss=f"{last['loss']:.4f}")
    if any(s % config.checkpoint_every == 0 or s == config.num_steps
           for s in range(first + 1, done + 1)):
      if not logged:  # never a non-finite checkpoint
        _check_state_finite(config, state, axis_name, done, saved)
      ckpt.save(done, state if axis_name is None else unreplicate(state))
      saved = done
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
  results = {"loss_name": config.loss, "dataset": config.dataset,
             "evaluated_on": "validation" if config.get("validation_fraction") else "test",
             "step": int(final.step),
             "final_loss": None if last is None else last["loss"],
             "train_seconds": round(time.time() - t0, 1)}  # after compiling
  results.update(evaluate_state(final, train_source, test_source,
                                pipeline.source_labels(train_source),
                                num_classes, config, show))
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  if config.write_plots:
    from tfjax import plots
    plots.training_plots(workdir, final, test_source, config)
  results["state"] = final
  return results


def evaluate_state(state: TrainState, train_source, test_source, train_labels,
                   num_classes: int, config, show: Optional[_Progress] = None
                   ) -> Dict[str, float]:
  """The evaluations of ``state``'s backbone features and embedding diagnostics."""
  show = show or _Progress(False)
  model = eval_model(state)
  feats = []
  for name, source in (("train", train_source), ("test", test_source)):
    bar = show.bar(total=len(source), desc=f"features ({name})", leave=False)
    feats.append(evaluation.extract_features(
        model, state.variables, source, batch_size=config.eval.batch_size,
        progress=None if bar is None else (lambda n, b=bar: b.update(n - b.n))))
    if bar is not None:
      bar.close()
  test_labels = pipeline.source_labels(test_source)
  out = evaluation.evaluate_features(feats[0], train_labels, feats[1], test_labels,
                                     num_classes=num_classes,
                                     eval_config=config.eval, log=show.say)
  # Over-fusion diagnostics of both inductive representations: the backbone
  # features and the projector's embeddings (where the loss and OAR act).
  test_z = evaluation.extract_features(model, state.variables, test_source,
                                       batch_size=config.eval.batch_size,
                                       embeddings=True)
  if config.eval.head_knn:  # the authors' protocol: kNN on the head's output
    fused = [evaluation.extract_fused(model, state.variables, src,
                                      batch_size=config.batch_size)
             for src in (train_source, test_source)]
    out["knn_head"] = evaluation.knn_accuracy(
        fused[0], train_labels, fused[1], test_labels, num_classes=num_classes,
        k=config.eval.knn_k, temperature=config.eval.knn_temperature)
  out["feature_variance"] = float(diagnostics.embedding_variance(feats[1]))
  out["embedding_variance"] = float(diagnostics.embedding_variance(test_z))
  out["embedding_rank95"] = float(diagnostics.rank_at_energy(test_z))
  return out


def evaluate_untrained(config, data=None, *, precise_bn: bool = True,
                       max_bn_batches: int = 50) -> Dict[str, float]:
  """The evaluations of a randomly initialised backbone: the fair baseline.

  With ``precise_bn`` its BatchNorm statistics are re-estimated on the
  training data (:func:`tfjax.evaluation.precise_batch_stats`); without,
  BatchNorm keeps its initial mean 0 / variance 1 (a handicapped baseline).
  """
  config = recipes.resolve(config)[0]   # the head's form: the method's recipe
  spec = validate_config(config, 1)
  if data is None:
    workdirs.check_dataset(config, spec, batch_size=False)
  train_source, test_source = _in_memory(
      config, *open_splits(config, spec, data))
  labels = pipeline.source_labels(train_source)
  num_classes = _num_classes(spec, train_source, data)
  try:
    state = create_train_state(config, jax.random.key(config.seed),
                               train_source.x_shape, num_classes, data_kind=spec.kind)
    if precise_bn:
      stats = evaluation.precise_batch_stats(
          state.model, state.variables, train_source,
          batch_size=min(config.batch_size, len(train_source)),
          max_batches=max_bn_batches)
      state = state.replace(batch_stats=stats)
    out = evaluate_state(state, train_source, test_source, labels, num_classes, config)
  finally:   # also when it fails: a sweep goes on with the next setting
    release_compiled_programs()
  return {k: v for k, v in out.items() if not k.startswith("embedding")}
