"""CLOA's fine-tuning protocol: a small MLP head on a fraction of the labels.

:func:`balanced_subset` picks a seeded, class-balanced labelled subset (the
one rule the data pipeline's labelled mask uses too); :func:`finetune_mlp`
trains an MLP head on the frozen features of that subset;
:func:`finetune_protocol` runs it at 10% / 50% / 100% of the labels.

Example::

    >>> finetune_protocol(f_train, y_train, f_test, y_test, num_classes=10)
    {0.1: 0.63, 0.5: 0.68, 1.0: 0.70}
"""

from __future__ import annotations

import functools
import math
from typing import Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tfjax.backbones import MLP
from tfjax.probes import _check_num_classes, _train_test, standardize


# ----------------------------------------------------------------------------
# Fine-tuning protocol (CLOA)
# ----------------------------------------------------------------------------
def balanced_subset(labels, fraction: float, seed: int) -> np.ndarray:
  """Seeded, class-balanced subset of indices: int [m], sorted.

  Class c with n_c examples contributes ``m_c = floor(fraction · n_c + ½)``
  examples (round half up, at least 1, at most n_c), chosen by a seeded
  permutation; ``m = Σ_c m_c``, so every class keeps its share.  The same
  (labels, fraction, seed) always give the same indices; ``fraction = 1``
  returns every index.  The rule matches the data pipeline's labelled mask.

  Example::

      >>> balanced_subset(np.array([0, 0, 1, 1, 1, 1]), 0.5, seed=0).size
      3
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must be 1-D [N], got shape {labels.shape}")
  if labels.size == 0:
    raise ValueError("labels is empty")
  if not np.issubdtype(labels.dtype, np.integer):
    raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
  if labels.min() < 0:
    raise ValueError(f"labels must be >= 0, got min {labels.min()}")
  fraction = float(fraction)
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"fraction must be in (0, 1], got {fraction}")
  rng = np.random.default_rng(seed)
  chosen = []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    m = min(idx.size, max(1, int(np.floor(fraction * idx.size + 0.5))))
    chosen.append(rng.permutation(idx)[:m])
  return np.sort(np.concatenate(chosen))


@functools.partial(jax.jit, static_argnames=("model", "steps", "batch_size", "full_batch"))
def _train_head(
  model, x, y, labelled, key, learning_rate, weight_decay, *, steps, batch_size, full_batch
):
  """Trains ``model`` on the rows of x [N, d] where ``labelled`` [N] is 1.

  Taking the whole training set plus a 0/1 mask (instead of the gathered
  subset) keeps the shapes fixed, so all label fractions share one compile.
  """
  init_key, data_key = jax.random.split(key)
  params = model.init(init_key, x[:1])["params"]
  opt = optax.adamw(learning_rate, weight_decay=weight_decay)
  probs = labelled / jnp.sum(labelled)

  def loss_fn(p, xb, yb, wb):
    logits = model.apply({"params": p}, xb)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
    return jnp.sum(wb * ce) / jnp.sum(wb)

  def step(carry, i):
    p, state = carry
    if full_batch:
      xb, yb, wb = x, y, labelled
    else:  # batch_size distinct labelled rows (zero-probability rows never drawn)
      idx = jax.random.choice(
        jax.random.fold_in(data_key, i), x.shape[0], (batch_size,), replace=False, p=probs
      )
      xb, yb, wb = x[idx], y[idx], jnp.ones((batch_size,), x.dtype)
    loss, grad = jax.value_and_grad(loss_fn)(p, xb, yb, wb)
    updates, state = opt.update(grad, state, p)
    return (optax.apply_updates(p, updates), state), loss

  (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), jnp.arange(steps))
  return params, losses


def finetune_mlp(
  train_features,
  train_labels,
  test_features,
  test_labels,
  *,
  num_classes: int,
  label_fraction: float = 0.1,
  hidden: Sequence[int] = (256,),
  steps: int = 1000,
  learning_rate: float = 1e-3,
  weight_decay: float = 0.0,
  batch_size: int = 256,
  seed: int = 0,
) -> Dict[str, float]:
  """CLOA fine-tuning protocol: an MLP head on a fraction of the labels.

  Steps: (1) pick ``balanced_subset(train_labels, label_fraction, seed)``;
  (2) z-score all features with the mean/std of the *whole* training set
  (unlabelled statistics; our choice); (3) train
  ``MLP(hidden, out_features=num_classes)`` (Dense→ReLU per hidden width,
  then a linear layer; default one hidden layer of 256, our choice — the
  papers only say "FFN head") with AdamW on mean cross-entropy for ``steps``
  minibatch steps of ``batch_size`` distinct labelled examples (a fresh
  seeded draw each step; the full labelled set when it is not larger than
  ``batch_size``); (4) report test accuracy.  All label fractions and
  learning rates share one compilation (the subset enters as a mask).
  Deterministic for a given ``seed``.

  Returns ``dict(accuracy, train_accuracy, num_labels, label_fraction,
  final_loss)`` (``train_accuracy`` on the labelled subset).

  Example::

      >>> finetune_mlp(f_train, y_train, f_test, y_test, num_classes=10,
      ...              label_fraction=0.1, steps=2000, learning_rate=1e-3)["accuracy"]
  """
  num_classes = _check_num_classes(num_classes)
  xtr, ytr, xte, yte = _train_test(
    train_features, train_labels, test_features, test_labels, num_classes
  )
  if int(steps) != steps or steps < 1:
    raise ValueError(f"steps must be a positive integer, got {steps}")
  if int(batch_size) != batch_size or batch_size < 1:
    raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
  if not (math.isfinite(learning_rate) and learning_rate > 0):
    raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
  if not (math.isfinite(weight_decay) and weight_decay >= 0):
    raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
  hidden = tuple(int(h) for h in hidden)
  if any(h < 1 for h in hidden):
    raise ValueError(f"hidden widths must be positive, got {hidden}")

  subset = balanced_subset(ytr, label_fraction, seed)
  xtr, xte = standardize(xtr, xte)
  xs, ys = xtr[subset], ytr[subset]
  labelled = np.zeros(xtr.shape[0], np.float32)
  labelled[subset] = 1.0
  model = MLP(hidden=hidden, out_features=num_classes)
  full_batch = int(batch_size) >= subset.size
  params, losses = _train_head(
    model,
    jnp.asarray(xtr),
    jnp.asarray(ytr),
    jnp.asarray(labelled),
    jax.random.key(seed),
    jnp.float32(learning_rate),
    jnp.float32(weight_decay),
    steps=int(steps),
    batch_size=0 if full_batch else int(batch_size),
    full_batch=full_batch,
  )

  def accuracy(x, y):
    logits = model.apply({"params": params}, jnp.asarray(x))
    return float(np.mean(np.asarray(jnp.argmax(logits, -1)) == y))

  return dict(
    accuracy=accuracy(xte, yte),
    train_accuracy=accuracy(xs, ys),
    num_labels=int(subset.size),
    label_fraction=float(label_fraction),
    final_loss=float(losses[-1]),
  )


def finetune_protocol(
  train_features,
  train_labels,
  test_features,
  test_labels,
  *,
  num_classes: int,
  fractions: Sequence[float] = (0.1, 0.5, 1.0),
  **kwargs,
) -> Dict[float, float]:
  """Runs :func:`finetune_mlp` at each label fraction -> ``{fraction: test accuracy}``.

  Keyword arguments (``hidden``, ``steps``, ``learning_rate``, ``seed``, ...)
  are passed on; with the default fractions this is CLOA's 10% / 50% / 100%
  protocol.

  Example::

      >>> finetune_protocol(f_train, y_train, f_test, y_test, num_classes=10,
      ...                   steps=2000)          # {0.1: ..., 0.5: ..., 1.0: ...}
  """
  if len(fractions) == 0:
    raise ValueError("fractions is empty")
  return {
    float(f): finetune_mlp(
      train_features,
      train_labels,
      test_features,
      test_labels,
      num_classes=num_classes,
      label_fraction=f,
      **kwargs,
    )["accuracy"]
    for f in fractions
  }
