"""Registry of the datasets the experiments know by short name.

Pure Python (no TensorFlow import): it only describes datasets. The TFDS
builders for the offline datasets live in :mod:`tfjax.data.builders`; the
input pipelines in :mod:`tfjax.data.pipeline`.

Every dataset yields examples ``{"x": float32, "label": int32, "index": int32}``:

* ``kind="image"``: ``x`` is ``[H, W, C]`` in ``[0, 1]``;
* ``kind="vector"``: ``x`` is ``[d]``;
* ``kind="signal"``: ``x`` is ``[length, 1]`` (channels-last 1-D signal).

Besides the registry's names, ``get_dataset_spec`` resolves data the user
brings (:mod:`tfjax.data.user`): ``tfds:NAME[/CONFIG]`` (any prepared TFDS
dataset, or a bare TFDS name outside the registry), ``folder:PATH`` (a folder
of images, one sub-folder per class) and ``npz:PATH`` (arrays).

Example::

    >>> spec = get_dataset_spec("digits")
    >>> spec.x_shape, spec.num_classes
    ((8, 8, 1), 10)
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

__all__ = [
  "DatasetSpec",
  "DATASETS",
  "USER_PREFIXES",
  "get_dataset_spec",
  "config_dataset_spec",
  "DatasetNotFoundError",
]

# Prefixes of ``config.dataset`` that name the user's data (tfjax.data.user).
USER_PREFIXES = ("tfds:", "folder:", "npz:")


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
    origin: ``"registry"`` for the names below; ``"tfds"``, ``"folder"`` or
      ``"npz"`` for the user's data (:mod:`tfjax.data.user`).
    path: where the user's data lies (``folder``: its converted arrays,
      ``npz``: the file; empty otherwise).
    label_key: the TFDS feature holding the class id (None: no labels).
    labelled: False for unlabelled data (self-supervised methods only).
    data_dir: the TFDS data directory a ``tfds`` dataset was found in.
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
  origin: str = "registry"
  path: str = ""
  label_key: Optional[str] = "label"
  labelled: bool = True
  data_dir: str = ""

  def __post_init__(self):
    if self.kind not in ("image", "vector", "signal"):
      raise ValueError(
        f"DatasetSpec {self.name!r}: kind must be image/vector/signal, got {self.kind!r}"
      )


DATASETS: Dict[str, DatasetSpec] = {
  s.name: s
  for s in [
    # Real datasets: TFDS downloads them (needs network once).
    DatasetSpec("cifar10", "cifar10", "image", (32, 32, 3), 10, num_train=50000, num_test=10000),
    DatasetSpec("cifar100", "cifar100", "image", (32, 32, 3), 100, num_train=50000, num_test=10000),
    DatasetSpec("mnist", "mnist", "image", (28, 28, 1), 10, num_train=60000, num_test=10000),
    DatasetSpec(
      "fashion_mnist", "fashion_mnist", "image", (28, 28, 1), 10, num_train=60000, num_test=10000
    ),
    # Offline datasets: our builders generate them locally (tfjax.data.builders).
    DatasetSpec(
      "subspaces",
      "tfjax_subspaces/default",
      "vector",
      (64,),
      10,
      offline=True,
      image_key="x",
      num_train=5000,
      num_test=1000,
    ),
    DatasetSpec(
      "subspaces_rank1",
      "tfjax_subspaces/rank1_r3",
      "vector",
      (3,),
      3,
      offline=True,
      image_key="x",
      num_train=3000,
      num_test=600,
    ),
    DatasetSpec(
      "subspaces_tiny",
      "tfjax_subspaces/tiny",
      "vector",
      (8,),
      3,
      offline=True,
      image_key="x",
      num_train=60,
      num_test=30,
    ),
    DatasetSpec(
      "digits",
      "tfjax_digits",
      "image",
      (8, 8, 1),
      10,
      offline=True,
      image_key="x",
      num_train=1437,
      num_test=360,
    ),
    DatasetSpec(
      "mnist1d",
      "tfjax_mnist1d/default",
      "signal",
      (40, 1),
      10,
      offline=True,
      image_key="x",
      num_train=4000,
      num_test=1000,
    ),
    # Other generation settings (seed, noise, shear, scale): for checking
    # that recipes chosen on mnist1d transfer.
    DatasetSpec(
      "mnist1d_shifted",
      "tfjax_mnist1d/shifted",
      "signal",
      (40, 1),
      10,
      offline=True,
      image_key="x",
      num_train=4000,
      num_test=1000,
    ),
  ]
}


def data_kind(shape: Tuple[int, ...], where: str) -> str:
  """The kind of examples of ``shape`` (one example, no batch axis); ``where`` names the data."""
  if len(shape) == 3:
    return "image"
  if len(shape) == 2 and shape[-1] == 1:
    return "signal"
  if len(shape) == 1:
    return "vector"
  raise ValueError(
    f"{where}: examples of shape {shape} fit no kind (image [N, H, W, C], "
    "signal [N, L, 1] or vector [N, d])"
  )


# The resolver of the user's data names and the opener of their splits, set
# by tfjax.data.user when tfjax.data is imported (the registry and the
# sources do not import the modules that read the user's files).
_USER_DATA = {"resolve": None, "open": None}


def set_user_data(resolve, open_source) -> None:
  """Registers ``resolve(name, *, data_dir, image_size, unlabelled) -> DatasetSpec
  | None`` and ``open_source(spec, split)`` for the user's data."""
  _USER_DATA.update(resolve=resolve, open=open_source)


def open_user_source(spec: DatasetSpec, split: str):
  """A source of ``split`` of the user's data (``spec.origin`` not ``"registry"``)."""
  return _USER_DATA["open"](spec, split)


def get_dataset_spec(
  name: str, *, data_dir: Optional[str] = None, image_size: int = 32, unlabelled: bool = False
) -> DatasetSpec:
  """Return the :class:`DatasetSpec` of ``name``: a registry name or the user's data.

  ``tfds:``, ``folder:`` and ``npz:`` names, and bare TFDS names outside
  the registry, are resolved by :func:`tfjax.data.user.user_spec` (through
  the resolver it registers; it
  reads the dataset's description from disk and checks its layout);
  ``data_dir``, ``image_size`` and ``unlabelled`` matter only to those.

  Raises:
    ValueError: ``"unknown dataset 'foo'; known: ..."`` for an unknown name,
      or one line naming the file for user data of a wrong layout.
  """
  if isinstance(name, str) and name in DATASETS:
    return DATASETS[name]
  if isinstance(name, str) and name and _USER_DATA["resolve"] is not None:
    spec = _USER_DATA["resolve"](
      name, data_dir=data_dir, image_size=image_size, unlabelled=unlabelled
    )
    if spec is not None:
      return spec
  raise ValueError(
    f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}, "
    "or tfds:NAME[/CONFIG], folder:PATH, npz:PATH"
  )


def config_dataset_spec(config) -> DatasetSpec:
  """:func:`get_dataset_spec` of ``config.dataset`` with the config's data fields."""
  return get_dataset_spec(
    config.dataset,
    data_dir=config.get("data_dir"),
    image_size=config.get("image_size", 32),
    unlabelled=bool(config.get("unlabelled", False)),
  )
