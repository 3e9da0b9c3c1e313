"""Evaluation of a network's inductive representation, and the fair baselines.

* :func:`extract_features` — backbone features (or projector embeddings) of
  a whole split in eval mode, streamed in batches through one cached jitted
  function per network (no recompile between calls);
* :func:`extract_fused` — the TransFusion head's fused (transductive)
  features, batch by batch as in training (the authors evaluate kNN on the
  head's output);
* :func:`evaluate_features` — weighted kNN, the linear probe and CLOA's MLP
  fine-tuning on fixed features (:mod:`tfjax.probes`, :mod:`tfjax.finetune`);
* :func:`precise_batch_stats` — BatchNorm statistics re-estimated on data
  (forward passes in train mode, no gradient step): the *fair* random
  baseline is a randomly initialised backbone with these statistics, not with
  BatchNorm's initial mean 0 / variance 1;
* :func:`evaluate_state` — all of the above for a train state (what
  :func:`tfjax.train.train_and_evaluate` reports), and
  :func:`evaluate_untrained` for the randomly initialised baseline.

The probes are run on the inductive representation (independent of the rest
of the batch); the head's fused features are reported beside them as what
they are: transductive.

Example::

    >>> feats = extract_features(model, state.variables, x_train)   # [N, F]
    >>> evaluate_features(feats, y_train, test_feats, y_test, num_classes=10,
    ...                   eval_config=config.eval)
    {'knn': 0.91, 'linear': 0.93, 'finetune@0.1': 0.85, ...}
"""

from __future__ import annotations

import functools
from typing import Callable, Dict, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from tfjax import diagnostics, guards
from tfjax.config import validate
from tfjax.finetune import finetune_mlp
from tfjax.networks import ContrastiveNet
from tfjax.probes import knn_accuracy, linear_probe
from tfjax.progress import Progress
from tfjax.state import TrainState, create_train_state, eval_model

Array = jax.Array


def release_compiled_programs() -> None:
  """Frees the XLA programs compiled for runs that have finished.

  Every run compiles its own step, finiteness check and feature functions
  (their static recipe and model differ), and JAX keeps a compiled program
  as long as the function it belongs to.  On CPU each program holds a few
  memory mappings of machine code, and Linux allows a process 65,530
  (``vm.max_map_count``): a sweep of ~35 MNIST-1D runs in one process
  exhausts them and dies with a segmentation fault inside XLA's compiler.
  :func:`tfjax.train.train_and_evaluate` and :func:`evaluate_untrained`
  call this when they finish; it clears only tfjax's own caches (the step
  functions are per run already), not the caller's jitted functions.
  """
  guards.clear_compiled()
  for cached in (_feature_fn, _fused_fn, _batch_stat_fn):
    cached.cache_clear()


@functools.lru_cache(maxsize=32)
def _feature_fn(model: ContrastiveNet, embeddings: bool) -> Callable:
  """One jitted feature function per (network, kind), reused across calls."""
  if embeddings:
    return jax.jit(lambda v, x: model.apply(v, x)[1])
  return jax.jit(lambda v, x: model.apply(v, x, method=ContrastiveNet.features))


def _batches(data, batch_size: int) -> Iterable[np.ndarray]:
  if isinstance(data, np.ndarray) or isinstance(data, jax.Array):
    for start in range(0, data.shape[0], batch_size):
      yield data[start : start + batch_size]
  else:  # a random-access source (tfjax.data.pipeline)
    from tfjax.data.pipeline import eval_batches

    for batch in eval_batches(data, batch_size):
      yield batch["x"]


def extract_features(
  model: ContrastiveNet,
  variables,
  data,
  *,
  batch_size: int = 512,
  embeddings: bool = False,
  progress: Optional[Callable[[int], None]] = None,
) -> np.ndarray:
  """Features [N, F] of ``data`` in eval mode, as numpy.

  ``data``: an array [N, ...] or a random-access source (records in order).
  ``embeddings=True`` gives the projector's output [N, D] (inductive too).
  ``progress(n)`` is called with the number of examples done after each batch.
  Every full batch has the same shape, so one compile serves the whole
  split (and later calls with the same network).
  """
  fn = _feature_fn(model, embeddings)
  out, done = [], 0
  for xb in _batches(data, batch_size):
    n = xb.shape[0]
    if n < batch_size and done:  # pad the tail: no second compile
      pad = np.zeros((batch_size - n,) + tuple(xb.shape[1:]), np.asarray(xb).dtype)
      out.append(np.asarray(fn(variables, np.concatenate([np.asarray(xb), pad])))[:n])
    else:
      out.append(np.asarray(fn(variables, xb)))
    done += n
    if progress is not None:
      progress(done)
  return np.concatenate(out)


@functools.lru_cache(maxsize=32)
def _fused_fn(model: ContrastiveNet) -> Callable:
  def fused(v, x):
    _, z = model.apply(v, x)
    return model.apply(v, z, method=ContrastiveNet.fuse)

  return jax.jit(fused)


def extract_fused(model: ContrastiveNet, variables, data, *, batch_size: int = 256) -> np.ndarray:
  """The TransFusion head's fused features X_{L−1} [N, d] of ``data`` (transductive).

  Each batch of ``batch_size`` consecutive records is fused together (the
  last, smaller batch on its own), as at training time, so a sample's
  features depend on the others in its batch.  Without a head: the
  projector's embeddings (the output the other methods train).
  """
  if model.head is None:
    return extract_features(model, variables, data, batch_size=batch_size, embeddings=True)
  fn = _fused_fn(model)
  return np.concatenate([np.asarray(fn(variables, xb)) for xb in _batches(data, batch_size)])


def evaluate_features(
  train_x: np.ndarray,
  train_y: np.ndarray,
  test_x: np.ndarray,
  test_y: np.ndarray,
  *,
  num_classes: int,
  eval_config,
  log: Optional[Callable[[str], None]] = None,
) -> Dict[str, float]:
  """kNN, linear probe and MLP fine-tuning accuracies of fixed features.

  ``eval_config`` (the config's ``eval`` block): ``knn_k``,
  ``knn_temperature``, ``linear_steps`` (0 skips the probe),
  ``finetune_fractions`` (empty skips fine-tuning), ``finetune_steps``.
  ``log(message)`` reports each protocol as it starts.
  Returns ``{"knn": acc, "linear": acc, "finetune@0.1": acc, ...}``.
  """
  say = log or (lambda msg: None)
  train_x = train_x.reshape(train_x.shape[0], -1)
  test_x = test_x.reshape(test_x.shape[0], -1)
  out = {}
  say(f"kNN (k={eval_config.knn_k}) on {train_x.shape[0]} × {train_x.shape[1]} features")
  out["knn"] = knn_accuracy(
    train_x,
    train_y,
    test_x,
    test_y,
    num_classes=num_classes,
    k=eval_config.knn_k,
    temperature=eval_config.knn_temperature,
  )
  if eval_config.linear_steps > 0:
    say(f"linear probe ({eval_config.linear_steps} steps)")
    out["linear"] = linear_probe(
      train_x,
      train_y,
      test_x,
      test_y,
      num_classes=num_classes,
      steps=eval_config.linear_steps,
      seed=0,
    )["accuracy"]
  for fraction in eval_config.finetune_fractions:
    say(
      f"fine-tuning an MLP head on {fraction:.0%} of the labels "
      f"({eval_config.finetune_steps} steps)"
    )
    out[f"finetune@{fraction:g}"] = finetune_mlp(
      train_x,
      train_y,
      test_x,
      test_y,
      num_classes=num_classes,
      label_fraction=fraction,
      steps=eval_config.finetune_steps,
      seed=0,
    )["accuracy"]
  return {k: float(v) for k, v in out.items()}


# ----------------------------------------------------------------------------
# BatchNorm statistics estimated on data (the fair random baseline).
# ----------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _batch_stat_fn(model: ContrastiveNet) -> Callable:
  def updated(variables, stats, x):
    _, new = model.apply(
      {"params": variables["params"], "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
    )
    return new["batch_stats"]

  @jax.jit
  def batch_moments(variables, x):
    # One train-mode pass from stats 0 and one from stats 1: a BatchNorm
    # updates ra ← m·ra + (1 − m)·b, so m = new₁ − new₀ and b = new₀/(1 − m),
    # whatever each layer's momentum m is.
    zeros = jax.tree.map(jnp.zeros_like, variables["batch_stats"])
    ones = jax.tree.map(jnp.ones_like, variables["batch_stats"])
    new0, new1 = updated(variables, zeros, x), updated(variables, ones, x)
    return jax.tree.map(lambda a, b: a / (1.0 - (b - a)), new0, new1)

  return batch_moments


def precise_batch_stats(
  model: ContrastiveNet, variables, data, *, batch_size: int = 256, max_batches: int = 50
):
  """BatchNorm statistics of ``model`` averaged over batches of ``data``.

  Each BatchNorm layer's running mean and variance become the average, over
  up to ``max_batches`` batches of ``batch_size`` examples (in record order),
  of the statistics it sees in train mode — "precise BatchNorm".  No
  parameter changes.  ``data``: an array [N, ...] or a random-access source.
  Returns the new ``batch_stats`` pytree (the old one if the model has none).
  """
  if not variables.get("batch_stats"):
    return variables.get("batch_stats", {})
  fn = _batch_stat_fn(model)
  total, count = None, 0
  for xb in _batches(data, batch_size):
    if xb.shape[0] < batch_size and count:
      break  # a partial tail would change the compile and the weighting
    stats = fn(variables, xb)
    total = stats if total is None else jax.tree.map(jnp.add, total, stats)
    count += 1
    if count >= max_batches:
      break
  return jax.tree.map(lambda t: t / count, total)


# ----------------------------------------------------------------------------
# A train state's evaluations, and the untrained baseline's.
# ----------------------------------------------------------------------------
def evaluate_state(
  state: TrainState,
  train_source,
  test_source,
  train_labels,
  num_classes: int,
  config,
  show: Optional[Progress] = None,
) -> Dict[str, float]:
  """The evaluations of ``state``'s backbone features and embedding diagnostics."""
  from tfjax.data import pipeline  # grain: imported on first use

  show = show or Progress(False)
  model = eval_model(state)
  feats = []
  for name, source in (("train", train_source), ("test", test_source)):
    bar = show.bar(total=len(source), desc=f"features ({name})", leave=False)
    feats.append(
      extract_features(
        model,
        state.variables,
        source,
        batch_size=config.eval.batch_size,
        progress=None if bar is None else (lambda n, b=bar: b.update(n - b.n)),
      )
    )
    if bar is not None:
      bar.close()
  test_labels = pipeline.source_labels(test_source)
  out = evaluate_features(
    feats[0],
    train_labels,
    feats[1],
    test_labels,
    num_classes=num_classes,
    eval_config=config.eval,
    log=show.say,
  )
  # Over-fusion diagnostics of both inductive representations: the backbone
  # features and the projector's embeddings (where the loss and OAR act).
  test_z = extract_features(
    model, state.variables, test_source, batch_size=config.eval.batch_size, embeddings=True
  )
  if config.eval.head_knn:  # the authors' protocol: kNN on the head's output
    fused = [
      extract_fused(model, state.variables, src, batch_size=config.batch_size)
      for src in (train_source, test_source)
    ]
    out["knn_head"] = knn_accuracy(
      fused[0],
      train_labels,
      fused[1],
      test_labels,
      num_classes=num_classes,
      k=config.eval.knn_k,
      temperature=config.eval.knn_temperature,
    )
  out["feature_variance"] = float(diagnostics.embedding_variance(feats[1]))
  out["embedding_variance"] = float(diagnostics.embedding_variance(test_z))
  out["embedding_rank95"] = float(diagnostics.rank_at_energy(test_z))
  return out


def evaluate_untrained(
  config, data=None, *, precise_bn: bool = True, max_bn_batches: int = 50
) -> Dict[str, float]:
  """The evaluations of a randomly initialised backbone: the fair baseline.

  With ``precise_bn`` its BatchNorm statistics are re-estimated on the
  training data (:func:`tfjax.precise_batch_stats`); without,
  BatchNorm keeps its initial mean 0 / variance 1 (a handicapped baseline).
  """
  from tfjax.data import pipeline  # grain: imported on first use
  from tfjax.data.splits import in_memory_splits, num_classes as split_classes, open_splits
  from tfjax import recipes

  config = recipes.resolve(config)[0]  # the head's form: the method's recipe
  spec = validate(config, 1, data=data)
  if not spec.labelled:
    raise ValueError(
      f"dataset {config.dataset!r} has no labels: a backbone cannot be evaluated without them"
    )
  train_source, test_source = in_memory_splits(config, *open_splits(config, spec, data))
  labels = pipeline.source_labels(train_source)
  num_classes = split_classes(spec, train_source, data)
  try:
    state = create_train_state(
      config, jax.random.key(config.seed), train_source.x_shape, num_classes, data_kind=spec.kind
    )
    if precise_bn:
      stats = precise_batch_stats(
        state.model,
        state.variables,
        train_source,
        batch_size=min(config.batch_size, len(train_source)),
        max_batches=max_bn_batches,
      )
      state = state.replace(batch_stats=stats)
    out = evaluate_state(state, train_source, test_source, labels, num_classes, config)
  finally:  # also when it fails: a sweep goes on with the next setting
    release_compiled_programs()
  return {k: v for k, v in out.items() if not k.startswith("embedding")}
