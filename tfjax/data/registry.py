"""Registry of the datasets the experiments know by short name.

Pure Python (no TensorFlow import): it only describes datasets. The TFDS
builders for the offline datasets live in :mod:`tfjax.data.builders`; the
input pipelines in :mod:`tfjax.data.pipeline`.

Every dataset yields examples ``{"x": float32, "label": int32, "index": int32}``:

* ``kind="image"``: ``x`` is ``[H, W, C]`` in ``[0, 1]``;
* ``kind="vector"``: ``x`` is ``[d]``;
* ``kind="signal"``: ``x`` is ``[length, 1]`` (channels-last 1-D signal).

Example::

    >>> spec = get_dataset_spec("digits")
    >>> spec.x_shape, spec.num_classes
    ((8, 8, 1), 10)
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

__all__ = ["DatasetSpec", "DATASETS", "get_dataset_spec", "DatasetNotFoundError"]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's prepared files are missing and were not downloaded.

    Raised fast (no download retries) by :func:`tfjax.data.pipeline.make_dataset`
    and :func:`tfjax.data.pipeline.load_arrays`; the message says how to fix it.
    """


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Static description of a dataset.

    Attributes:
      name: short registry name, e.g. ``"cifar10"``.
      tfds_name: name passed to ``tfds.load`` (``"name"`` or ``"name/config"``).
      kind: ``"image"`` | ``"vector"`` | ``"signal"`` (picks the augmentation).
      x_shape: shape of one example's ``x`` after decoding.
      num_classes: number of labels.
      train_split / test_split: TFDS split names.
      offline: True when the data is generated locally by one of our builders
        (no download ever); False for real datasets fetched by TFDS.
      image_key: feature holding the input in the TFDS example (``"image"``
        for real image datasets, ``"x"`` for ours).
      num_train / num_test: split sizes (informational; mocked data differs).
    """

    name: str
    tfds_name: str
    kind: str
    x_shape: Tuple[int, ...]
    num_classes: int
    train_split: str = "train"
    test_split: str = "test"
    offline: bool = False
    image_key: str = "image"
    num_train: int = 0
    num_test: int = 0

    def __post_init__(self):
        if self.kind not in ("image", "vector", "signal"):
            raise ValueError(f"DatasetSpec {self.name!r}: kind must be image/vector/signal, got {self.kind!r}")


DATASETS: Dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        # Real datasets: TFDS downloads them (needs network once).
        DatasetSpec("cifar10", "cifar10", "image", (32, 32, 3), 10, num_train=50000, num_test=10000),
        DatasetSpec("cifar100", "cifar100", "image", (32, 32, 3), 100, num_train=50000, num_test=10000),
        DatasetSpec("mnist", "mnist", "image", (28, 28, 1), 10, num_train=60000, num_test=10000),
        DatasetSpec("fashion_mnist", "fashion_mnist", "image", (28, 28, 1), 10, num_train=60000, num_test=10000),
        # Offline datasets: our builders generate them locally (tfjax.data.builders).
        DatasetSpec("subspaces", "tfjax_subspaces/default", "vector", (64,), 10, offline=True,
                    image_key="x", num_train=5000, num_test=1000),
        DatasetSpec("subspaces_rank1", "tfjax_subspaces/rank1_r3", "vector", (3,), 3, offline=True,
                    image_key="x", num_train=3000, num_test=600),
        DatasetSpec("subspaces_tiny", "tfjax_subspaces/tiny", "vector", (8,), 3, offline=True,
                    image_key="x", num_train=60, num_test=30),
        DatasetSpec("digits", "tfjax_digits", "image", (8, 8, 1), 10, offline=True,
                    image_key="x", num_train=1437, num_test=360),
        DatasetSpec("mnist1d", "tfjax_mnist1d/default", "signal", (40, 1), 10, offline=True,
                    image_key="x", num_train=4000, num_test=1000),
        # Other generation settings (seed, noise, shear, scale): for checking
        # that recipes chosen on mnist1d transfer.
        DatasetSpec("mnist1d_shifted", "tfjax_mnist1d/shifted", "signal", (40, 1), 10, offline=True,
                    image_key="x", num_train=4000, num_test=1000),
    ]
}


def get_dataset_spec(name: str) -> DatasetSpec:
    """Return the :class:`DatasetSpec` registered under ``name``.

    Raises:
      ValueError: ``"unknown dataset 'foo'; known: ..."`` for an unknown name.
    """
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]
