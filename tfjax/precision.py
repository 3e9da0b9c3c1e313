"""Compute dtypes: which parts of a run compute in bfloat16 and which stay float32.

``config.compute_dtype`` ("float32" | "bfloat16") is the dtype of the
backbone's, the projector's and the TransFusion head's computation: Flax
modules get it as their ``dtype`` (inputs and parameters are cast to it
before each matmul or convolution), while their parameters keep
``param_dtype=float32``.  ``config.head.compute_dtype`` overrides it for the
head alone (None: the head inherits ``config.compute_dtype``).

What stays float32, and why:

* parameters, gradients and the optimiser state: updates of size lr·g are
  far below a bfloat16 weight's resolution (2⁻⁸ relative) and would round
  away;
* BatchNorm and LayerNorm statistics (Flax reduces in float32 whatever the
  module's ``dtype``) and the BatchNorm running averages;
* the network's outputs — features, embeddings, fused features and the
  head's adjacency — and so every loss and its normalisation: the
  embeddings are cast to float32 before any loss sees them;
* inside the head, cosines and row sums accumulate in float32
  (:mod:`tfjax.attention`, :mod:`tfjax.blockwise`).

float16 is refused: its range (largest 65504, smallest normal 6·10⁻⁵) lets
gradients underflow unless the loss is scaled, which tfjax does not do;
bfloat16 has float32's exponent range and needs no scaling, and the
accelerators that run float16 fast (TPUs, A100/H100 GPUs) run bfloat16 as
fast.

"float32" maps to the module dtype None, so the float32 network is exactly
the network without a compute dtype (same operations, same numbers).
"""

from __future__ import annotations

from typing import Optional, Tuple

import jax
import jax.numpy as jnp

Array = jax.Array

COMPUTE_DTYPES = ("float32", "bfloat16")


def _module_dtype(field: str, name, allow_none: bool):
  if name is None and allow_none:
    return None
  if name not in COMPUTE_DTYPES:
    none = " (or None)" if allow_none else ""
    why = " (float16 needs loss scaling, which tfjax does not do)" if name == "float16" else ""
    raise ValueError(
      f"{field} must name a float dtype the network computes in: "
      f"one of {COMPUTE_DTYPES}{none}, got {name!r}{why}"
    )
  return None if name == "float32" else jnp.dtype(name)


def compute_dtypes(config) -> Tuple[Optional[jnp.dtype], Optional[jnp.dtype]]:
  """The checked module dtypes (network, head) of ``config``.

  The network's is that of ``config.compute_dtype``; the head's that of
  ``config.head.compute_dtype``, or the network's when that is None.  Each
  is None for float32 (the modules' default) or ``jnp.bfloat16``.  Raises
  ValueError naming the field for anything but "float32" or "bfloat16".
  """
  network = _module_dtype("compute_dtype", config.get("compute_dtype", "float32"), allow_none=False)
  head_name = config.head.get("compute_dtype", None)
  if head_name is None:
    return network, network
  # float32 maps to None here too: the head's inputs, the embeddings, are
  # float32 whatever the network's dtype.
  return network, _module_dtype("head.compute_dtype", head_name, allow_none=True)


def at_least_float32(x: Array) -> Array:
  """A float array ``x`` in float32 when it is narrower (bfloat16), else unchanged."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))
