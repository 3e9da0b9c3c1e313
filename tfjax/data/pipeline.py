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
keeps the next batches on the devices.  Records are read with
``tfds.data_source``, which needs TFDS's ``array_record`` file format: our
offline builders write it; real datasets must be prepared with it (the
:class:`DatasetNotFoundError` says how).  In-memory arrays go through the
same interface as an :class:`ArraySource`.

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

from tfjax.data.registry import DatasetNotFoundError, DatasetSpec, get_dataset_spec

__all__ = [
    "ArraySource",
    "TFDSSource",
    "Subset",
    "split_source",
    "open_source",
    "source_labels",
    "semi_labels",
    "batch_indices",
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


# ----------------------------------------------------------------------------
# Sources: random access to {"x", "label"} records
# ----------------------------------------------------------------------------
class ArraySource:
    """In-memory arrays as a random-access source (``len`` and ``[i]``).

    Args:
      x: ``[N, ...]`` examples (cast to float32).
      labels: int ``[N]`` class ids.
    """

    def __init__(self, x, labels):
        x = np.asarray(x, np.float32)
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != len(x):
            raise ValueError(f"labels must be [N] with N = len(x) = {len(x)}, got shape {labels.shape}")
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
        self.x, self.labels = x, labels.astype(np.int32)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i) -> Dict[str, np.ndarray]:
        return {"x": self.x[i], "label": self.labels[i]}

    @property
    def x_shape(self) -> Tuple[int, ...]:
        return tuple(self.x.shape[1:])


class TFDSSource:
    """A TFDS data source whose records are mapped to ``{"x", "label"}``."""

    def __init__(self, spec: DatasetSpec, data_source):
        self.spec, self._source = spec, data_source
        self._labels = None

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i) -> Dict[str, np.ndarray]:
        ex = self._source[int(i)]
        x = np.asarray(ex[self.spec.image_key])
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
        return {"x": x, "label": np.int32(ex["label"])}

    @property
    def x_shape(self) -> Tuple[int, ...]:
        return tuple(self[0]["x"].shape)

    @property
    def labels(self) -> np.ndarray:
        """All labels [N] (one pass over the records, kept: 4 bytes each)."""
        if self._labels is None:
            self._labels = np.fromiter((self._source[i]["label"] for i in range(len(self))),
                                       np.int32, count=len(self))
        return self._labels


def _missing_message(spec: DatasetSpec, data_dir, err: Exception) -> str:
    name = spec.tfds_name.split("/")[0]
    return (
        f"dataset {spec.name!r} (TFDS {spec.tfds_name!r}) is not prepared as array_record under "
        f"{data_dir or '$TFDS_DATA_DIR / ~/tensorflow_datasets'} and downloading is disabled "
        f"(download=False). To fix it, either\n"
        f"  * on a machine with network: `tfds build {name} --file_format=array_record --data_dir=DIR` "
        f"or make_dataset(..., download=True, data_dir=DIR), then copy DIR here; or\n"
        f"  * point data_dir=... (or $TFDS_DATA_DIR) at an existing prepared copy.\n"
        f"(TFDS said: {err})"
    )


def prepare_dataset(name: str, data_dir: Optional[str] = None, download: bool = False):
    """Return ``(spec, builder)`` of registry dataset ``name``, array_record format.

    Offline datasets are generated here if needed (no network). Real ones are
    downloaded only if ``download=True``; otherwise nothing happens here and
    a missing copy is reported by :func:`open_source`.
    """
    import tensorflow_datasets as tfds

    from tfjax.data import builders as _builders  # noqa: F401  (registers our TFDS builders)

    spec = get_dataset_spec(name)
    builder = tfds.builder(spec.tfds_name, data_dir=data_dir, file_format="array_record")
    if spec.offline or download:
        builder.download_and_prepare(file_format="array_record")  # no-op when prepared / mocked
    return spec, builder


def open_source(name: str, split: str, *, data_dir: Optional[str] = None,
                download: bool = False, take: Optional[int] = None):
    """A random-access source of ``split`` of registry dataset ``name``.

    ``take`` keeps the first ``take`` records.  Raises
    :class:`DatasetNotFoundError` at once when the data is not on disk.
    """
    if take is not None:
        _check_pos_int(take, "take")
    spec, builder = prepare_dataset(name, data_dir=data_dir, download=download)
    try:
        source = builder.as_data_source(split=split)
    except (KeyError, AssertionError, FileNotFoundError, NotImplementedError, ValueError) as e:
        raise DatasetNotFoundError(_missing_message(spec, data_dir, e)) from None
    out = TFDSSource(spec, source)
    if take is not None and take < len(out):
        return _Head(out, take)
    return out


class _Head:
    """The first ``n`` records of a source."""

    def __init__(self, source, n: int):
        self._source, self._n = source, n

    def __len__(self):
        return self._n

    def __getitem__(self, i):
        if not 0 <= i < self._n:
            raise IndexError(i)
        return self._source[i]

    @property
    def x_shape(self):
        return self._source.x_shape

    @property
    def labels(self):
        return np.asarray(self._source.labels[: self._n])


class Subset:
    """The records ``indices`` of a source, as a source of their own."""

    def __init__(self, source, indices):
        self._source, self.indices = source, np.asarray(indices, np.int64)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self._source[int(self.indices[i])]

    @property
    def x_shape(self):
        return self._source.x_shape

    @property
    def labels(self):
        return source_labels(self._source)[self.indices]


def split_source(source, validation_fraction: float, seed: int = 0):
    """``(train, validation)`` subsets of a training source, seeded and class-balanced.

    The validation subset takes ``validation_fraction`` of each class
    (:func:`labelled_subset_mask`'s rule); choose hyper-parameters on it,
    never on the test split.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    held_out = labelled_subset_mask(source_labels(source), validation_fraction, seed)
    return Subset(source, np.flatnonzero(~held_out)), Subset(source, np.flatnonzero(held_out))


def source_labels(source) -> np.ndarray:
    """All labels of a source, int32 [N]."""
    labels = getattr(source, "labels", None)
    if labels is None:
        labels = np.array([source[i]["label"] for i in range(len(source))], np.int32)
    return np.asarray(labels, np.int32)


def labelled_subset_mask(labels, fraction: float, seed: int) -> np.ndarray:
    """Class-balanced, seeded choice of a labelled subset: bool ``[N]``.

    Class ``c`` with ``n_c`` examples gets ``m_c = floor(fraction * n_c + 0.5)``
    labelled examples (round half up, at least 1 when ``fraction > 0``);
    the same (labels, fraction, seed) give the same mask.

    Example::

        >>> labelled_subset_mask(np.array([0, 0, 1, 1, 1, 1]), 0.5, seed=0).sum()
        3
    """
    from tfjax.finetune import balanced_subset  # the one implementation of the rule

    labels = np.asarray(labels)
    fraction = float(fraction)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    mask = np.zeros(labels.shape, bool)
    if fraction > 0.0 and labels.size:
        mask[balanced_subset(labels, fraction, seed)] = True
    elif labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        balanced_subset(labels, 1.0, seed)  # raises the shape / dtype error
    return mask


def semi_labels(labels, fraction: Optional[float], seed: int) -> Optional[np.ndarray]:
    """int32 ``[N]``: the label inside the labelled subset, −1 outside (None: no labels)."""
    if fraction is None:
        return None
    labels = np.asarray(labels)
    return np.where(labelled_subset_mask(labels, fraction, seed), labels, -1).astype(np.int32)


# ----------------------------------------------------------------------------
# Sampling: which examples a step reads
# ----------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def batch_indices(seed: int, step: int, num_examples: int, batch_size: int,
                  shuffle: bool = True) -> np.ndarray:
    """Example indices of global step ``step``: a pure function of its arguments.

    Each epoch is a fresh seeded permutation (the identity without
    ``shuffle``); the tail that does not fill a batch is dropped.  Because
    the order depends on nothing but the step, a resumed run sees exactly the
    batches an uninterrupted run would.
    """
    per_epoch = num_examples // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch_size {batch_size} exceeds the {num_examples} training examples")
    epoch, pos = divmod(int(step), per_epoch)
    order = _epoch_permutation(seed, epoch, num_examples) if shuffle else np.arange(num_examples)
    return order[pos * batch_size:(pos + 1) * batch_size]


def read_batch(source, indices: Sequence[int], semi: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
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


def _process_rows(rows: np.ndarray) -> np.ndarray:
    from tfjax.distributed import process_rows

    return process_rows(rows)


def _device_layout(batch: Dict[str, np.ndarray], num_devices: Optional[int]):
    if num_devices is None:
        return batch
    return {k: v.reshape((num_devices, v.shape[0] // num_devices) + v.shape[1:]) for k, v in batch.items()}


def _grain_iter(ds: "grain.MapDataset", num_threads: int, prefetch: int):
    if num_threads <= 0:
        return iter(ds)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                     prefetch_buffer_size=max(1, prefetch))))


def train_batches(source, *, seed: int, batch_size: int, start_step: int, end_step: int,
                  steps_per_call: int = 1, semi: Optional[np.ndarray] = None,
                  num_devices: Optional[int] = None, num_threads: int = 4,
                  prefetch: int = 4) -> Iterator[Tuple[int, int, Dict[str, np.ndarray]]]:
    """This process's training batches of steps ``[start_step, end_step)``.

    Yields ``(first_step, num_steps, batch)``: ``num_steps`` consecutive
    steps (``steps_per_call``, fewer at the end) stacked on a leading axis
    when ``steps_per_call > 1``.  ``batch`` holds this process's rows of the
    global batch (:func:`tfjax.distributed.process_rows`), laid out
    ``[D, b/D, ...]`` with ``num_devices=D`` (stacked: ``[S, b, ...]``, or
    ``[D, S, b/D, ...]`` with devices — the layout the pmapped scan takes).
    The batches are a pure function of (seed, step): see :func:`batch_indices`.
    """
    n = len(source)

    def load(step):
        rows = _process_rows(batch_indices(seed, step, n, batch_size))
        return _device_layout(read_batch(source, rows, semi), num_devices)

    def load_call(first):
        count = min(steps_per_call, end_step - first)
        if steps_per_call == 1:
            return first, 1, load(first)
        parts = [load(s) for s in range(first, first + count)]
        axis = 0 if num_devices is None else 1  # [S, b, ...] or [D, S, b/D, ...]
        return first, count, {k: np.stack([p[k] for p in parts], axis) for k in parts[0]}

    ds = grain.MapDataset.range(start_step, end_step, steps_per_call).map(load_call)
    return _grain_iter(ds, num_threads, prefetch)


def eval_batches(source, batch_size: int, *, num_threads: int = 4,
                 prefetch: int = 4) -> Iterator[Dict[str, np.ndarray]]:
    """One pass over ``source`` in record order, batches of ``batch_size`` (last one smaller)."""
    n = len(source)
    ds = grain.MapDataset.range(0, n, batch_size).map(
        lambda start: read_batch(source, np.arange(start, min(start + batch_size, n))))
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
def _check_pos_int(value, what: str):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")


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
            raise ValueError("num_devices needs drop_remainder=True (a partial batch cannot be split evenly)")
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
        lambda start: read_batch(source, order[start:start + batch_size], semi))
    return _grain_iter(ds, num_threads, 4)


def load_arrays(name: str, split: str, data_dir: Optional[str] = None, *, download: bool = False,
                take: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """The whole split as numpy arrays, in record order (``x[i]`` has ``index`` i).

    Returns ``(x [N, *x_shape] float32, labels [N] int32)``.  Only for data
    that fits in memory (evaluation of small datasets, baselines).

    Raises:
      DatasetNotFoundError: data missing and ``download=False``.
    """
    source = open_source(name, split, data_dir=data_dir, download=download, take=take)
    if len(source) == 0:
        spec = get_dataset_spec(name)
        return np.zeros((0,) + spec.x_shape, np.float32), np.zeros((0,), np.int32)
    batch = read_batch(source, np.arange(len(source)))
    return batch["x"], batch["label"]
