"""TFDS input pipelines: batched numpy iterators for jit / pmap training.

Every example is ``{"x": float32, "label": int32, "index": int32}`` (plus
``"semi_label": int32`` when ``label_fraction`` is set); ``index`` is the
example's position in its split, in TFDS's fixed (unshuffled) file order, so
it is a stable id. Real images come as ``uint8`` and are mapped to
``x = image / 255`` (float32, [0, 1]).

Offline by default: ``download=False``. A real dataset that is not prepared
raises :class:`DatasetNotFoundError` at once (no retries). Our own offline
datasets (``subspaces``, ``digits``, ``mnist1d``) are generated on first use.

Example::

    >>> it = make_dataset("digits", "train", batch_size=64, num_devices=4)
    >>> batch = next(it)
    >>> batch["x"].shape, batch["label"].shape
    ((4, 16, 8, 8, 1), (4, 16))
"""
from __future__ import annotations

from typing import Dict, Iterator, Optional, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from tfjax.data import builders as _builders  # noqa: F401  (registers our TFDS builders)
from tfjax.data.registry import DatasetNotFoundError, DatasetSpec, get_dataset_spec

__all__ = [
    "make_dataset",
    "load_arrays",
    "labelled_subset_mask",
    "prepare_dataset",
    "DatasetNotFoundError",
]

_MAX_SHUFFLE_BUFFER = 60_000  # full shuffle of CIFAR / MNIST train splits (our choice)


# ----------------------------------------------------------------------------
# Labelled subset
# ----------------------------------------------------------------------------
def labelled_subset_mask(labels, fraction: float, seed: int) -> np.ndarray:
    """Class-balanced, seeded choice of a labelled subset.

    Args:
      labels: int array ``[N]`` of non-negative class ids.
      fraction: in ``[0, 1]``. Class ``c`` with ``n_c`` examples gets
        ``m_c = floor(fraction * n_c + 0.5)`` labelled examples (round half
        up), at least 1 when ``fraction > 0``.
      seed: an int; the same (labels, fraction, seed) give the same mask.

    Returns:
      bool ``[N]``; ``mask.sum() == sum_c m_c``.

    Example::

        >>> labelled_subset_mask(np.array([0, 0, 1, 1, 1, 1]), 0.5, seed=0).sum()
        3
    """
    from tfjax.evaluation import balanced_subset  # the one implementation of the rule

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


# ----------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------
def _missing_message(spec: DatasetSpec, builder, err: Exception) -> str:
    return (
        f"dataset {spec.name!r} (TFDS {spec.tfds_name!r}) is not prepared under {builder.data_dir} "
        f"and downloading is disabled (download=False). To fix it, either\n"
        f"  * on a machine with network: `tfds build {spec.tfds_name.split('/')[0]} --data_dir=DIR` "
        f"or make_dataset(..., download=True, data_dir=DIR), then copy DIR here; or\n"
        f"  * point data_dir=... (or $TFDS_DATA_DIR) at an existing prepared copy.\n"
        f"(TFDS said: {err})"
    )


def prepare_dataset(name: str, data_dir: Optional[str] = None, download: bool = False):
    """Return the prepared TFDS builder of registry dataset ``name``.

    Offline datasets are generated here if needed (no network). Real ones are
    downloaded only if ``download=True``; otherwise nothing happens here and
    a missing copy is reported by :func:`make_dataset` / :func:`load_arrays`.
    """
    spec = get_dataset_spec(name)
    builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
    if spec.offline or download:
        builder.download_and_prepare()  # no-op when already prepared (and under mock_data)
    return spec, builder


def _as_dataset(spec: DatasetSpec, builder, split: str, **kwargs) -> tf.data.Dataset:
    try:
        return builder.as_dataset(
            split=split,
            shuffle_files=False,
            read_config=tfds.ReadConfig(shuffle_seed=0, try_autocache=False),
            **kwargs,
        )
    except (AssertionError, tfds.core.registered.DatasetNotFoundError, FileNotFoundError) as e:
        raise DatasetNotFoundError(_missing_message(spec, builder, e)) from None


def _to_float(spec: DatasetSpec, x: tf.Tensor) -> tf.Tensor:
    if x.dtype == tf.uint8:
        return tf.cast(x, tf.float32) / 255.0
    return tf.cast(x, tf.float32)


def _decoders(spec: DatasetSpec, labels_only: bool):
    if labels_only and spec.image_key == "image":
        return {"image": tfds.decode.SkipDecoding()}
    return None


def _split_labels(spec, builder, split, take) -> np.ndarray:
    ds = _as_dataset(spec, builder, split, decoders=_decoders(spec, True))
    if take is not None:
        ds = ds.take(take)
    ds = ds.map(lambda ex: tf.cast(ex["label"], tf.int32)).batch(8192)
    parts = [np.asarray(b) for b in tfds.as_numpy(ds)]
    return np.concatenate(parts) if parts else np.zeros([0], np.int32)


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
    cache: bool = True,
) -> Iterator[Dict[str, np.ndarray]]:
    """Batched numpy iterator over a registered dataset.

    Each batch is a dict of numpy arrays:

    * ``x``: float32 ``[B, *x_shape]`` (``[D, B // D, *x_shape]`` with
      ``num_devices=D``, the layout ``jax.pmap`` expects);
    * ``label``, ``index``: int32 ``[B]`` (``[D, B // D]``);
    * ``semi_label``: int32, only with ``label_fraction``: the label if the
      example is in the labelled subset (:func:`labelled_subset_mask` of the
      split's labels, ``seed``), else -1.

    Args:
      name: registry name (``tfjax.data.DATASETS``).
      split: TFDS split string (``"train"``, ``"test"``, ``"train[:10%]"``...).
      batch_size: global batch size ``B``.
      num_devices: if set, ``B % num_devices`` must be 0 (checked before
        anything loads) and arrays gain a leading device axis.
      shuffle / seed: seeded full-buffer shuffle (buffer = split size, at most
        60k); the same seed gives the same order, epoch after epoch.
      repeat: loop forever (else one pass).
      data_dir: TFDS data directory (default: ``$TFDS_DATA_DIR`` or TFDS's).
      label_fraction: fraction in (0, 1] of labelled examples, or None.
      drop_remainder: drop the last partial batch (must be True with
        ``num_devices``).
      take: use only the first ``take`` examples of the split (in file order).
      download: let TFDS download a missing real dataset (default False: fail
        fast with :class:`DatasetNotFoundError`).
      cache: cache the decoded split in memory (images stay uint8).

    Raises:
      ValueError: bad sizes, ``batch_size % num_devices != 0``, unknown name.
      DatasetNotFoundError: data missing and ``download=False``.

    Example::

        >>> it = make_dataset("mnist1d", "train", batch_size=32, label_fraction=0.1)
        >>> b = next(it); b["x"].shape, b["semi_label"].min() >= -1
        ((32, 40, 1), True)
    """
    _check_pos_int(batch_size, "batch_size")
    if num_devices is not None:
        _check_pos_int(num_devices, "num_devices")
        if batch_size % num_devices != 0:
            raise ValueError(
                f"batch_size {batch_size} is not divisible by num_devices {num_devices}"
            )
        if not drop_remainder:
            raise ValueError("num_devices needs drop_remainder=True (a partial batch cannot be split evenly)")
    if take is not None:
        _check_pos_int(take, "take")
    if label_fraction is not None and not 0.0 < float(label_fraction) <= 1.0:
        raise ValueError(f"label_fraction must be in (0, 1] or None, got {label_fraction}")
    spec, builder = prepare_dataset(name, data_dir=data_dir, download=download)

    mask = None
    if label_fraction is not None:
        labels = _split_labels(spec, builder, split, take)
        mask = tf.constant(labelled_subset_mask(labels, label_fraction, seed))

    ds = _as_dataset(spec, builder, split)
    ds = ds.enumerate()
    if take is not None:
        ds = ds.take(take)

    def _slim(i, ex):
        return {
            "x": ex[spec.image_key],
            "label": tf.cast(ex["label"], tf.int32),
            "index": tf.cast(i, tf.int32),
        }

    ds = ds.map(_slim, num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        ds = ds.cache()
    if shuffle:
        n = int(ds.cardinality())
        buffer = min(n, _MAX_SHUFFLE_BUFFER) if n > 0 else 10_000
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    def _finish(ex):
        out = dict(ex, x=_to_float(spec, ex["x"]))
        if mask is not None:
            out["semi_label"] = tf.where(tf.gather(mask, ex["index"]), ex["label"], -1)
        return out

    ds = ds.map(_finish, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if num_devices is not None:
        per = batch_size // num_devices
        ds = ds.map(
            lambda b: {k: tf.reshape(v, [num_devices, per] + v.shape[1:].as_list()) for k, v in b.items()}
        )
    ds = ds.prefetch(tf.data.AUTOTUNE)
    opts = tf.data.Options()
    opts.deterministic = True
    ds = ds.with_options(opts)
    return iter(tfds.as_numpy(ds))


def load_arrays(
    name: str, split: str, data_dir: Optional[str] = None, *, download: bool = False, take: Optional[int] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """The whole split as numpy arrays, in ``index`` order (for kNN / linear probes).

    Returns:
      ``(x [N, *x_shape] float32, labels [N] int32)``; ``x[i]`` is the example
      whose pipeline ``index`` is ``i``.

    Raises:
      DatasetNotFoundError: data missing and ``download=False``.
    """
    if take is not None:
        _check_pos_int(take, "take")
    spec, builder = prepare_dataset(name, data_dir=data_dir, download=download)
    ds = _as_dataset(spec, builder, split)
    if take is not None:
        ds = ds.take(take)
    ds = ds.map(lambda ex: (_to_float(spec, ex[spec.image_key]), tf.cast(ex["label"], tf.int32)))
    xs, ys = [], []
    for x, y in tfds.as_numpy(ds.batch(4096)):
        xs.append(x)
        ys.append(y)
    if not xs:
        return np.zeros((0,) + spec.x_shape, np.float32), np.zeros((0,), np.int32)
    return np.concatenate(xs), np.concatenate(ys)
