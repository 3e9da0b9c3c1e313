"""A digest of the data a run trains and evaluates on.

A run's work directory records it (``run.json``), so a rerun on other data
(another dataset, size, split or generator setting) is refused
(:class:`tfjax.workdir.RunDirectory`).
"""

from __future__ import annotations

import hashlib

import numpy as np

from tfjax.data.sources import ArraySource

__all__ = ["data_fingerprint"]

_SAMPLES = 16  # records hashed of a source that is not in memory


def _hash_source(h, source) -> None:
  n = len(source)
  h.update(f"{type(source).__name__}:{n}:{tuple(source.x_shape)};".encode())
  if isinstance(source, ArraySource):  # in memory: every byte
    h.update(np.ascontiguousarray(source.x).tobytes())
    h.update(np.ascontiguousarray(source.labels).tobytes())
    return
  inner, indices = getattr(source, "_source", None), getattr(source, "indices", None)
  if inner is not None and isinstance(indices, np.ndarray):  # a Subset
    h.update(np.ascontiguousarray(indices).tobytes())
    _hash_source(h, inner)
    return
  for i in np.unique(np.linspace(0, n - 1, _SAMPLES).astype(np.int64)) if n else ():
    record = source[int(i)]
    h.update(np.asarray(record["x"], np.float32).tobytes())
    h.update(np.asarray(record["label"], np.int64).tobytes())


def data_fingerprint(*sources) -> str:
  """A 32-hex-digit digest of the sources a run trains and evaluates on.

  In-memory sources (:class:`tfjax.data.sources.ArraySource`) are hashed
  whole; others by size, shape and 16 records spread over them (TFDS data
  is named by ``config.dataset``; the fingerprint catches another size,
  split or generator setting).
  """
  h = hashlib.blake2b(digest_size=16)
  for source in sources:
    _hash_source(h, source)
  return h.hexdigest()
