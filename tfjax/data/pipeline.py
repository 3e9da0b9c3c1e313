"""Input pipelines: grain over random-access TFDS data sources.

Why grain over ``tfds.data_source`` rather than tf.data: the order of the
examples is a *pure function of (seed, step)* — batch s of a run holds the
examples ``batch_indices(seed, s, N, B)``, read by random access.  So

* a run resumed at step s reads exactly the batches an uninterrupted run
  would, with no iterator state to checkpoint and nothing to replay;
* host memory does not grow with the dataset: no shuffle buffer, no cache,
  only the batches in flight (an epoch's permutation is 8 bytes an example);
* each process reads only its rows of the global batch (multi-host).

grain supplies the reader threads and host prefetch; :func:`device_prefetch`
keeps the next batches on the devices.  The sources themselves live in
:mod:`tfjax.data.sources` (re-exported here).  Records are read with
``tfds.data_source``, which needs TFDS's ``array_record`` file format: our
offline builders write it; real datasets must be prepared with it (the
:class:`DatasetNotFoundError` says how).  In-memory arrays go through the
same interface as an :class:`ArraySource`; :func:`in_memory` reads a small
source into one once (a random TFDS read costs ~25 µs a record).

Every example is ``{"x": float32, "label": int32}``; real images (uint8) are
mapped to ``x = image / 255``.  Batches add ``"index"`` (the record's
position in its split) and, with labels, ``"semi_label"`` (the label in the
labelled subset, −1 elsewhere).

Example::

    >>> it = make_dataset("digits", "train", batch_size=64, num_devices=4)
    >>> batch = next(it)
    >>> batch["x"].shape, batch["label"].shape
    ((4, 16, 8, 8, 1), (4, 16))
"""

from __future__ import annotations

import collections
import functools
from typing import Dict, Iterator, Optional, Sequence, Tuple

import grain
import jax
import numpy as np

from tfjax.data.registry import DatasetNotFoundError, get_dataset_spec

__all__ = [
  "ArraySource",
  "TFDSSource",
  "Subset",
  "split_source",
  "in_memory",
  "open_source",
  "source_labels",
  "semi_labels",
  "batch_indices",
  "labelled_batch",
  "read_batch",
  "train_batches",
  "eval_batches",
  "device_prefetch",
  "make_dataset",
  "load_arrays",
  "labelled_subset_mask",
  "prepare_dataset",
  "DatasetNotFoundError",
]


from tfjax.data.sources import (  # noqa: F401  (the sources, re-exported)
  ArraySource,
  Subset,
  TFDSSource,
  _check_pos_int,
  labelled_subset_mask,
  open_source,
  prepare_dataset,
  semi_labels,
  source_labels,
  split_source,
)


# ----------------------------------------------------------------------------
# Sampling: which examples a step reads
# ----------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _epoch_permutation(seed: int, epoch: int, num_examples: int, stream: int = 0) -> np.ndarray:
  entropy = [seed, epoch] if stream == 0 else [seed, epoch, stream]
  return np.random.default_rng(entropy).permutation(num_examples)


def batch_indices(
  seed: int, step: int, num_examples: int, batch_size: int, shuffle: bool = True, stream: int = 0
) -> np.ndarray:
  """Example indices of global step ``step``: a pure function of its arguments.

  Each epoch is a fresh seeded permutation (the identity without
  ``shuffle``); the tail that does not fill a batch is dropped.  Because
  the order depends on nothing but the step, a resumed run sees exactly the
  batches an uninterrupted run would.  ``stream`` > 0 draws an independent
  order from the same seed (the separate labelled batch uses stream 1).
  """
  per_epoch = num_examples // batch_size
  if per_epoch == 0:
    raise ValueError(f"batch_size {batch_size} exceeds the {num_examples} training examples")
  epoch, pos = divmod(int(step), per_epoch)
  order = (
    _epoch_permutation(seed, epoch, num_examples, stream) if shuffle else np.arange(num_examples)
  )
  return order[pos * batch_size : (pos + 1) * batch_size]


LABELLED_STREAM = 1  # the ``stream`` of the separate labelled batches


def labelled_batch(
  source, labelled: np.ndarray, *, seed: int, step: int, batch_size: int
) -> Dict[str, np.ndarray]:
  """This process's rows of step ``step``'s separate labelled batch.

  ``labelled`` [m] holds the indices of the labelled subset; the batch is
  ``batch_size`` of them, in epochs over the subset (its own seeded order,
  independent of the main batch's).  Returns ``{"labelled_x": [b, ...],
  "labelled_label": int32 [b]}``.  CLOA's protocol: every step pairs the
  unlabelled batch with a labelled one, on which OAR is averaged.
  """
  if len(labelled) < batch_size:
    raise ValueError(
      f"labelled_batch_size {batch_size} exceeds the {len(labelled)} "
      "labelled training examples (raise label_fraction or lower "
      "labelled_batch_size)"
    )
  pick = batch_indices(seed, step, len(labelled), batch_size, stream=LABELLED_STREAM)
  rows = _process_rows(np.asarray(labelled)[pick])
  part = read_batch(source, rows)
  return {"labelled_x": part["x"], "labelled_label": part["label"]}


def read_batch(
  source, indices: Sequence[int], semi: Optional[np.ndarray] = None
) -> Dict[str, np.ndarray]:
  """Records ``indices`` stacked: ``x`` [b, ...], ``label``, ``index`` (and ``semi_label``)."""
  indices = np.asarray(indices)
  if isinstance(source, ArraySource):  # vectorised fast path
    x, label = source.x[indices], source.labels[indices]
  else:
    records = [source[int(i)] for i in indices]
    x = np.stack([r["x"] for r in records]).astype(np.float32)
    label = np.array([r["label"] for r in records], np.int32)
  out = {"x": x, "label": label, "index": indices.astype(np.int32)}
  if semi is not None:
    out["semi_label"] = semi[indices]
  return out


def in_memory(source, max_bytes: int):
  """``source`` read whole into an :class:`ArraySource` when it is small.

  A source whose float32 examples take at most ``max_bytes`` is read once,
  in record order (record ``i`` of the result is record ``i`` of
  ``source``, so batches of the same indices are equal); a larger one, or
  one already in memory, is returned as it is.  ``max_bytes <= 0`` never
  reads.

  Example::

      >>> src = in_memory(open_source("mnist1d", "train"), 64 << 20)
      >>> type(src).__name__, src.x.shape     # ('ArraySource', (4000, 40, 1))
  """
  if isinstance(source, ArraySource) or max_bytes <= 0 or len(source) == 0:
    return source
  if 4 * len(source) * int(np.prod(source.x_shape, dtype=np.int64)) > max_bytes:
    return source
  whole = read_batch(source, np.arange(len(source)))
  return ArraySource(whole["x"], whole["label"])


def _process_rows(rows: np.ndarray) -> np.ndarray:
  from tfjax.distributed import process_rows

  return process_rows(rows)


def _device_layout(batch: Dict[str, np.ndarray], num_devices: Optional[int]):
  if num_devices is None:
    return batch
  return {
    k: v.reshape((num_devices, v.shape[0] // num_devices) + v.shape[1:]) for k, v in batch.items()
  }


def _grain_iter(ds: "grain.MapDataset", num_threads: int, prefetch: int):
  if num_threads <= 0:
    return iter(ds)
  return iter(
    ds.to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(1, prefetch))
    )
  )


def train_batches(
  source,
  *,
  seed: int,
  batch_size: int,
  start_step: int,
  end_step: int,
  steps_per_call: int = 1,
  semi: Optional[np.ndarray] = None,
  num_devices: Optional[int] = None,
  num_threads: int = 4,
  prefetch: int = 4,
  labelled_batch_size: int = 0,
) -> Iterator[Tuple[int, int, Dict[str, np.ndarray]]]:
  """This process's training batches of steps ``[start_step, end_step)``.

  Yields ``(first_step, num_steps, batch)``: ``num_steps`` consecutive
  steps (``steps_per_call``, fewer at the end) stacked on a leading axis
  when ``steps_per_call > 1``.  ``batch`` holds this process's rows of the
  global batch (:func:`tfjax.distributed.process_rows`), laid out
  ``[D, b/D, ...]`` with ``num_devices=D`` (stacked: ``[S, b, ...]``, or
  ``[D, S, b/D, ...]`` with devices — the layout the pmapped scan takes).
  The batches are a pure function of (seed, step): see :func:`batch_indices`.
  ``labelled_batch_size`` > 0 (needs ``semi``) adds a separate batch of that
  many labelled examples to every step (:func:`labelled_batch`).
  """
  n = len(source)
  labelled = None
  if labelled_batch_size > 0:
    if semi is None:
      raise ValueError("labelled_batch_size > 0 needs labels (semi)")
    labelled = np.flatnonzero(np.asarray(semi) >= 0)
    if len(labelled) < labelled_batch_size:  # fail now, not in a reader thread
      labelled_batch(source, labelled, seed=seed, step=0, batch_size=labelled_batch_size)

  def load(step):
    rows = _process_rows(batch_indices(seed, step, n, batch_size))
    batch = read_batch(source, rows, semi)
    if labelled is not None:
      batch.update(
        labelled_batch(source, labelled, seed=seed, step=step, batch_size=labelled_batch_size)
      )
    return _device_layout(batch, num_devices)

  def load_call(first):
    count = min(steps_per_call, end_step - first)
    if steps_per_call == 1:
      return first, 1, load(first)
    parts = [load(s) for s in range(first, first + count)]
    axis = 0 if num_devices is None else 1  # [S, b, ...] or [D, S, b/D, ...]
    return first, count, {k: np.stack([p[k] for p in parts], axis) for k in parts[0]}

  ds = grain.MapDataset.range(start_step, end_step, steps_per_call).map(load_call)
  return _grain_iter(ds, num_threads, prefetch)


def eval_batches(
  source, batch_size: int, *, num_threads: int = 4, prefetch: int = 4
) -> Iterator[Dict[str, np.ndarray]]:
  """One pass over ``source`` in record order, batches of ``batch_size`` (last one smaller)."""
  n = len(source)
  ds = grain.MapDataset.range(0, n, batch_size).map(
    lambda start: read_batch(source, np.arange(start, min(start + batch_size, n)))
  )
  return _grain_iter(ds, num_threads, prefetch)


def device_prefetch(iterator, size: int = 2, num_devices: Optional[int] = None):
  """Keeps the next ``size`` items of ``iterator`` on the devices.

  Arrays go to the default device, or — with ``num_devices=D`` and arrays
  laid out ``[D, ...]`` — one slice to each local device, the layout
  ``jax.pmap`` takes.  Only the dict in the last position of a tuple item
  is moved.  ``size=0`` passes the iterator through.  The transfers are
  issued from the calling thread (JAX dispatches them asynchronously, so
  they overlap the running step); only grain's readers use threads.
  """
  if size <= 0:
    yield from iterator
    return
  sharding = None
  if num_devices is not None:
    mesh = jax.sharding.Mesh(np.array(jax.local_devices()[:num_devices]), ("devices",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("devices"))

  def put(item):
    head, batch = (item[:-1], item[-1]) if isinstance(item, tuple) else ((), item)
    if sharding is not None:
      batch = {k: jax.device_put(v, sharding) for k, v in batch.items()}
    else:
      batch = jax.device_put(batch)
    return head + (batch,) if isinstance(item, tuple) else batch

  ahead = collections.deque()
  for item in iterator:
    ahead.append(put(item))
    if len(ahead) > size:
      yield ahead.popleft()
  while ahead:
    yield ahead.popleft()


# ----------------------------------------------------------------------------
# Convenience: a batched iterator of a registered dataset, whole splits
# ----------------------------------------------------------------------------
def make_dataset(
  name: str,
  split: str,
  *,
  batch_size: int,
  num_devices: Optional[int] = None,
  shuffle: bool = True,
  seed: int = 0,
  repeat: bool = True,
  data_dir: Optional[str] = None,
  label_fraction: Optional[float] = None,
  drop_remainder: bool = True,
  take: Optional[int] = None,
  download: bool = False,
  num_threads: int = 4,
) -> Iterator[Dict[str, np.ndarray]]:
  """Batched numpy iterator over a registered dataset (the training order).

  Each batch: ``x`` float32 ``[B, *x_shape]`` (``[D, B // D, ...]`` with
  ``num_devices=D``), ``label`` and ``index`` int32 ``[B]``, and with
  ``label_fraction`` ``semi_label`` (label in the seeded class-balanced
  subset, else −1).  Batch s holds ``batch_indices(seed, s, N, B)``:
  a seeded permutation per epoch, the same for the same seed.

  Args:
    name: registry name (``tfjax.data.DATASETS``); split: a TFDS split.
    batch_size: global batch size ``B``; num_devices: if set, ``B`` must be
      divisible by it (checked before anything loads).
    shuffle / seed / repeat: as above; ``repeat=False`` gives one epoch.
    drop_remainder: drop the last partial batch of a single unshuffled or
      shuffled pass (must be True with ``num_devices`` or ``repeat``).
    take: use only the first ``take`` records; download: let TFDS download.

  Raises:
    ValueError: bad sizes, unknown name.
    DatasetNotFoundError: data missing and ``download=False``.
  """
  _check_pos_int(batch_size, "batch_size")
  if num_devices is not None:
    _check_pos_int(num_devices, "num_devices")
    if batch_size % num_devices != 0:
      raise ValueError(f"batch_size {batch_size} is not divisible by num_devices {num_devices}")
    if not drop_remainder:
      raise ValueError(
        "num_devices needs drop_remainder=True (a partial batch cannot be split evenly)"
      )
  if label_fraction is not None and not 0.0 < float(label_fraction) <= 1.0:
    raise ValueError(f"label_fraction must be in (0, 1] or None, got {label_fraction}")
  source = open_source(name, split, data_dir=data_dir, download=download, take=take)
  semi = semi_labels(source_labels(source), label_fraction, seed) if label_fraction else None
  n = len(source)
  if repeat or drop_remainder:
    steps = n // batch_size
    if steps == 0:
      raise ValueError(f"batch_size {batch_size} exceeds the {n} examples of {name}:{split}")

    def load(step):
      rows = batch_indices(seed, step, n, batch_size, shuffle)
      return _device_layout(read_batch(source, rows, semi), num_devices)

    ds = grain.MapDataset.range(0, 2**62 if repeat else steps).map(load)
    return _grain_iter(ds, num_threads, 4)
  order = _epoch_permutation(seed, 0, n) if shuffle else np.arange(n)
  ds = grain.MapDataset.range(0, n, batch_size).map(
    lambda start: read_batch(source, order[start : start + batch_size], semi)
  )
  return _grain_iter(ds, num_threads, 4)


def load_arrays(
  name: str,
  split: str,
  data_dir: Optional[str] = None,
  *,
  download: bool = False,
  take: Optional[int] = None,
) -> Tuple[np.ndarray, np.ndarray]:
  """The whole split as numpy arrays, in record order (``x[i]`` has ``index`` i).

  Returns ``(x [N, *x_shape] float32, labels [N] int32)``.  Only for data
  that fits in memory (evaluation of small datasets, baselines).

  Raises:
    DatasetNotFoundError: data missing and ``download=False``.
  """
  source = open_source(name, split, data_dir=data_dir, download=download, take=take)
  if len(source) == 0:
    spec = get_dataset_spec(name, data_dir=data_dir)
    return np.zeros((0,) + spec.x_shape, np.float32), np.zeros((0,), np.int32)
  batch = read_batch(source, np.arange(len(source)))
  return batch["x"], batch["label"]
