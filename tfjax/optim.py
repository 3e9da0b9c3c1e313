"""Optimisers and learning-rate schedules (optax).

* :func:`make_schedule` — ``"warmup_cosine"`` (linear warm-up, cosine decay)
  or ``"constant"`` (optionally after a linear warm-up);
* :func:`make_optimizer` — ``"sgd"`` (momentum, decoupled weight decay),
  ``"adamw"`` and ``"lars"``;
* :func:`decay_mask` — True for the leaves that weight decay should touch
  (kernels), False for biases and normalisation scales.

All return plain optax objects, usable inside ``jax.jit`` / ``jax.pmap``.

Example::

    >>> sched = make_schedule("warmup_cosine", base_lr=0.3, total_steps=1000,
    ...                       warmup_steps=100)
    >>> tx = make_optimizer("lars", sched, weight_decay=1e-6)
    >>> opt_state = tx.init(params)
    >>> updates, opt_state = tx.update(grads, opt_state, params)
"""

from __future__ import annotations

import math
from typing import Any, Callable, Union

import jax
import jax.numpy as jnp
import optax

Schedule = Callable[[Any], Any]
ScalarOrSchedule = Union[float, Schedule]

SCHEDULES = ("warmup_cosine", "constant")
OPTIMIZERS = ("sgd", "adamw", "lars")

# Leaf names that weight decay and LARS adaptation skip (Flax conventions).
_NO_DECAY_NAMES = frozenset({"bias", "scale"})
_DECAY_NAMES = frozenset({"kernel", "embedding"})


def make_schedule(
  kind: str = "warmup_cosine",
  base_lr: float = 0.1,
  total_steps: int = 1000,
  warmup_steps: int = 0,
  end_lr_factor: float = 0.0,
) -> Schedule:
  """Learning-rate schedule ``step -> lr`` (a scalar function, jit-able).

  ``"warmup_cosine"`` with base η, total T, warm-up W, end factor f::

      lr(t) = η · t / W                                   for t < W
      lr(t) = η_end + (η − η_end) · ½ (1 + cos(π (t − W) / (T − W)))   for W ≤ t ≤ T
      η_end = f · η, and lr(t) = η_end for t > T.

  ``"constant"``: η·t/W for t < W, then η (``end_lr_factor`` is ignored).

  Raises ValueError for an unknown kind, a negative rate, total_steps < 1,
  warmup_steps outside [0, total_steps] (or == total_steps for the cosine)
  or end_lr_factor outside [0, 1].

  Example::

      >>> s = make_schedule("warmup_cosine", base_lr=1.0, total_steps=100,
      ...                   warmup_steps=10)
      >>> float(s(5)), float(s(10)), float(s(55)), float(s(100))   # 0.5, 1.0, 0.5, 0.0
  """
  if kind not in SCHEDULES:
    raise ValueError(f"unknown schedule {kind!r}; choices: {list(SCHEDULES)}")
  base_lr = float(base_lr)
  if not math.isfinite(base_lr) or base_lr < 0:
    raise ValueError(f"base_lr must be finite and >= 0, got {base_lr}")
  if int(total_steps) != total_steps or total_steps < 1:
    raise ValueError(f"total_steps must be a positive integer, got {total_steps}")
  if int(warmup_steps) != warmup_steps or not 0 <= warmup_steps <= total_steps:
    raise ValueError(
      f"warmup_steps must be an integer in [0, total_steps={total_steps}], got {warmup_steps}"
    )
  if not 0.0 <= end_lr_factor <= 1.0:
    raise ValueError(f"end_lr_factor must be in [0, 1], got {end_lr_factor}")
  total_steps, warmup_steps = int(total_steps), int(warmup_steps)
  if kind == "constant":
    if warmup_steps == 0:
      return optax.constant_schedule(base_lr)
    return optax.join_schedules(
      [optax.linear_schedule(0.0, base_lr, warmup_steps), optax.constant_schedule(base_lr)],
      [warmup_steps],
    )
  if warmup_steps == total_steps:
    raise ValueError(
      f"warmup_cosine needs warmup_steps < total_steps, got {warmup_steps} == {total_steps}"
    )
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=base_lr,
    warmup_steps=warmup_steps,
    decay_steps=total_steps,
    end_value=base_lr * end_lr_factor,
  )


def decay_mask(params: Any) -> Any:
  """Pytree of bools shaped like ``params``: True where weight decay applies.

  By leaf name (the last key of its path): ``kernel``/``embedding`` → True;
  ``bias`` and ``scale`` (LayerNorm / BatchNorm scales) → False; any other
  name → True iff the leaf has ≥ 2 axes (our choice: matrices decay,
  vectors do not).

  Example::

      >>> decay_mask({"Dense_0": {"kernel": w, "bias": b}})
      {'Dense_0': {'kernel': True, 'bias': False}}
  """

  def leaf_mask(path, leaf):
    name = None
    if path:
      last = path[-1]
      name = getattr(last, "key", getattr(last, "name", None))
    if name in _DECAY_NAMES:
      return True
    if name in _NO_DECAY_NAMES:
      return False
    return jnp.ndim(leaf) >= 2

  return jax.tree_util.tree_map_with_path(leaf_mask, params)


def _resolve_mask(mask):
  if mask is None:
    return None
  if isinstance(mask, str):
    if mask != "no_bias_norm":
      raise ValueError(
        f"unknown weight_decay_mask {mask!r}; use None, "
        "'no_bias_norm', a pytree of bools or a callable"
      )
    return decay_mask
  return mask


def make_optimizer(
  name: str,
  learning_rate: ScalarOrSchedule,
  *,
  weight_decay: float = 0.0,
  momentum: float = 0.9,
  nesterov: bool = False,
  weight_decay_mask: Union[None, str, Any, Callable] = None,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  trust_coefficient: float = 0.001,
) -> optax.GradientTransformation:
  """Builds an optax optimiser by name.

  * ``"sgd"``: heavy-ball momentum μ (Nesterov optional) with **decoupled**
    weight decay λ (our choice, as in SGDW)::

        m ← μ m + g;   θ ← θ − lr · (m + λ θ)      (Nesterov: g + μ m for m)

    i.e. ``chain(trace(μ), add_decayed_weights(λ, mask), scale_by_learning_rate)``.
  * ``"adamw"``: ``optax.adamw(lr, b1, b2, eps, weight_decay=λ, mask=mask)``.
  * ``"lars"``: ``optax.lars`` with momentum μ and trust coefficient; weight
    decay and the trust-ratio adaptation both skip biases and norm scales
    (``weight_decay_mask=None`` means ``"no_bias_norm"`` for LARS, the
    standard practice).

  ``weight_decay_mask``: None (sgd/adamw: decay every leaf), ``"no_bias_norm"``
  (:func:`decay_mask`), a pytree of bools, or a callable ``params -> pytree``.
  ``learning_rate`` is a float or a schedule ``step -> lr``.

  Raises ValueError for an unknown name (listing the choices), a negative
  weight decay or a momentum outside [0, 1).

  Example::

      >>> tx = make_optimizer("sgd", 0.1, weight_decay=5e-4, nesterov=True,
      ...                     weight_decay_mask="no_bias_norm")
      >>> state = tx.init(params)
  """
  if name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {name!r}; choices: {list(OPTIMIZERS)}")
  if not callable(learning_rate):
    lr = float(learning_rate)
    if not math.isfinite(lr) or lr < 0:
      raise ValueError(f"learning_rate must be finite and >= 0, got {learning_rate}")
  if not weight_decay >= 0:
    raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
  if not 0.0 <= momentum < 1.0:
    raise ValueError(f"momentum must be in [0, 1), got {momentum}")
  mask = _resolve_mask(weight_decay_mask)

  if name == "sgd":
    parts = [optax.trace(decay=momentum, nesterov=nesterov)] if momentum else []
    if weight_decay:
      parts.append(optax.add_decayed_weights(weight_decay, mask))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)
  if name == "adamw":
    return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask)
  # lars
  if mask is None:
    mask = decay_mask
  return optax.lars(
    learning_rate,
    weight_decay=weight_decay,
    weight_decay_mask=mask,
    trust_coefficient=trust_coefficient,
    trust_ratio_mask=mask,
    momentum=momentum,
    nesterov=nesterov,
  )
