"""Data augmentations by name: the training config's ``augment`` field.

Every augmentation is a pure JAX function ``f(key, x, strength) -> x'`` of
ONE example (:mod:`tfjax.data.augment_image` for images ``[H, W, C]`` in
[0, 1], :mod:`tfjax.data.augment_vector` for vectors ``[d]`` and 1-D
signals ``[L, C]``).  ``strength = 0`` is the exact identity and
``strength = 1`` is the SimCLR recipe for images.  :data:`AUGMENTATIONS`
names them; :func:`get_augmentation` picks one for a data kind ("": the
kind's default) and refuses one meant for another kind.  The training step
vmaps it over a batch (:mod:`tfjax.step`).

Example::

    >>> fn = get_augmentation("", "image")          # simclr_augment
    >>> x2 = fn(jax.random.key(0), jnp.ones((32, 32, 3)) * 0.5, 1.0)
"""

from __future__ import annotations

from typing import Callable

from tfjax.data.augment_image import simclr_augment
from tfjax.data.augment_vector import (
  gaussian_noise,
  isotropic_noise,
  sign_flip_noise,
  signal_augment,
  vector_augment,
)

__all__ = ["AUGMENTATIONS", "fits", "get_augment_fn", "get_augmentation"]

_DEFAULTS = {"image": simclr_augment, "vector": vector_augment, "signal": vector_augment}


def get_augment_fn(kind: str) -> Callable:
  """Default augmentation for a dataset kind: ``"image"`` -> :func:`simclr_augment`,
  ``"vector"`` / ``"signal"`` -> :func:`vector_augment`."""
  if kind not in _DEFAULTS:
    raise ValueError(f"unknown data kind {kind!r}; known: {', '.join(sorted(_DEFAULTS))}")
  return _DEFAULTS[kind]


# Augmentations by name (the training config's ``augment`` field).
AUGMENTATIONS = {
  "simclr": simclr_augment,
  "vector": vector_augment,
  "signal": signal_augment,
  "gaussian_noise": gaussian_noise,
  "isotropic_noise": isotropic_noise,
  "sign_flip_noise": sign_flip_noise,
}

# The data kinds each built-in augmentation accepts (images are [H, W, C];
# vector augmentations take [d] or [L, C]; the signal one needs an order in
# time). One added to AUGMENTATIONS without an entry here takes any kind.
_KINDS = {
  "simclr": ("image",),
  "vector": ("vector", "signal"),
  "signal": ("signal",),
  "gaussian_noise": ("vector", "signal"),
  "isotropic_noise": ("vector", "signal"),
  "sign_flip_noise": ("vector", "signal"),
}


def fits(name: str, kind: str) -> bool:
  """Whether the augmentation ``name`` ("" = the kind's default) takes data of ``kind``."""
  return not name or kind in _KINDS.get(name, (kind,))


def get_augmentation(name: str, kind: str) -> Callable:
  """The augmentation called ``name``; ``""`` gives the default of the data
  ``kind`` (:func:`get_augment_fn`). Unknown names, and a name meant for
  another kind of data, raise a ValueError."""
  if not name:
    return get_augment_fn(kind)
  if name not in AUGMENTATIONS:
    raise ValueError(f"unknown augmentation {name!r}; known: {', '.join(sorted(AUGMENTATIONS))}")
  if not fits(name, kind):
    raise ValueError(
      f"augmentation {name!r} is for {' or '.join(_KINDS[name])} data, not {kind} data"
    )
  return AUGMENTATIONS[name]
