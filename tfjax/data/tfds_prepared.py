"""``tfds:NAME`` datasets: any TFDS dataset prepared as array_record.

See :mod:`tfjax.data.user` for what is read from its ``DatasetInfo``.
"""

from __future__ import annotations

import os
import re
from typing import Dict, Optional, Tuple

import numpy as np

from tfjax.data.registry import DatasetNotFoundError, DatasetSpec, data_kind
from tfjax.data.sources import TFDSSource

__all__ = ["is_tfds_name", "tfds_spec", "open_tfds_source", "TFDSUserSource"]

_TFDS_NAME = re.compile(r"^[a-z][a-z0-9_]*(/[A-Za-z0-9_.\-]+)?(:[0-9.]+)?$")


def _default_data_dir(data_dir: Optional[str]) -> str:
  return os.path.expanduser(
    data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.join("~", "tensorflow_datasets")
  )


def is_tfds_name(name: str, data_dir: Optional[str] = None) -> bool:
  """True for a bare TFDS name (``NAME[/CONFIG][:VERSION]``) prepared under
  ``data_dir`` or known to TFDS's catalogue."""
  if not _TFDS_NAME.match(name):
    return False
  base = name.split("/")[0].split(":")[0]
  if os.path.isdir(os.path.join(_default_data_dir(data_dir), base)):
    return True
  import tensorflow_datasets as tfds

  return base in tfds.list_builders(with_community_datasets=False)


def _tfds_builder(name: str, tfds_name: str, data_dir: Optional[str], **kwargs):
  import tensorflow_datasets as tfds

  from tfjax.data import builders  # noqa: F401  (registers the offline builders)

  try:
    return tfds.builder(tfds_name, data_dir=data_dir, **kwargs)
  except Exception as e:  # noqa: BLE001  (TFDS raises many kinds here)
    raise DatasetNotFoundError(
      f"{name}: TFDS finds no dataset {tfds_name!r} under data_dir "
      f"{_default_data_dir(data_dir)!r} ({type(e).__name__}: "
      f"{str(e).splitlines()[0] if str(e) else ''})"
    ) from None


def _tfds_features(name: str, info, unlabelled: bool) -> Tuple[str, Optional[str]]:
  """``(input key, label key)`` of a TFDS dataset's features."""
  import tensorflow_datasets as tfds

  feats = info.features
  keys = list(feats.keys())
  labels = [k for k in keys if isinstance(feats[k], tfds.features.ClassLabel)]
  images = [k for k in keys if isinstance(feats[k], tfds.features.Image)]
  tensors = [
    k
    for k in keys
    if type(feats[k]) is tfds.features.Tensor
    and np.issubdtype(np.dtype(feats[k].np_dtype), np.number)
    and len(feats[k].shape) >= 1
  ]
  inputs = sorted(images, key=lambda k: k != "image") + sorted(tensors, key=lambda k: k != "x")
  if not inputs:
    raise ValueError(f"{name}: no image or numeric tensor feature among {keys}")
  label = "label" if "label" in labels else (labels[0] if labels else None)
  if label is None and not unlabelled:
    raise ValueError(
      f"{name}: no ClassLabel feature among {keys}; for unlabelled data set "
      "--config.unlabelled=True"
    )
  return inputs[0], None if unlabelled else label


def tfds_spec(name: str, data_dir: Optional[str], image_size: int, unlabelled: bool) -> DatasetSpec:
  tfds_name = name[len("tfds:") :] if name.startswith("tfds:") else name
  builder = _tfds_builder(name, tfds_name, data_dir)
  root = _default_data_dir(data_dir)
  if not builder.is_prepared():
    base = tfds_name.split("/")[0].split(":")[0]
    raise DatasetNotFoundError(
      f"{name}: not prepared under data_dir {root!r}; on a machine with network run "
      f"`tfds build {base} --file_format=array_record --data_dir=DIR`, then set "
      "--config.data_dir=DIR"
    )
  info = builder.info
  formats = {
    str(getattr(f, "value", f))
    for f in [info.file_format, *getattr(info, "alternative_file_formats", [])]
    if f is not None
  }
  if "array_record" not in formats:
    raise ValueError(
      f"{name}: prepared as {'/'.join(sorted(formats)) or 'tfrecord'} in {builder.data_dir}; "
      "grain reads array_record: convert it once (in place, no TensorFlow needed) with "
      f"`python -m tfjax.data.convert {builder.data_dir}`"
    )
  splits = list(info.splits.keys())
  test = "test" if "test" in splits else "validation" if "validation" in splits else None
  if "train" not in splits or test is None:
    raise ValueError(f"{name}: needs a train and a test (or validation) split, has {splits}")
  x_key, label_key = _tfds_features(name, info, unlabelled)
  feature = info.features[x_key]
  shape = tuple(feature.shape)
  if None in shape:  # images of varying size: resized
    if len(shape) != 3 or shape[-1] is None:
      raise ValueError(
        f"{name}: feature {x_key!r} has shape {shape}; only images of varying "
        "height and width (known channels) are resized"
      )
    shape = (image_size, image_size, shape[-1])
  kind = data_kind(shape, name)
  k = info.features[label_key].num_classes if label_key else 0
  return DatasetSpec(
    name,
    tfds_name,
    kind,
    shape,
    k,
    train_split="train",
    test_split=test,
    image_key=x_key,
    num_train=info.splits["train"].num_examples,
    num_test=info.splits[test].num_examples,
    origin="tfds",
    label_key=label_key,
    labelled=label_key is not None,
    data_dir=data_dir or "",
  )


class TFDSUserSource(TFDSSource):
  """A ``tfds:`` dataset's records; images of varying size resized to ``spec.x_shape``."""

  def __getitem__(self, i) -> Dict[str, np.ndarray]:
    ex = self._source[int(i)]
    x = np.asarray(ex[self.spec.image_key])
    if self.spec.kind == "image" and x.shape != self.spec.x_shape:
      from PIL import Image

      img = Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x)
      img = img.resize(self.spec.x_shape[:2][::-1], Image.BILINEAR)
      x = np.asarray(img).reshape(self.spec.x_shape).astype(x.dtype)
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    return {"x": x, "label": self._label(ex)}


def open_tfds_source(spec: DatasetSpec, split: str) -> TFDSUserSource:
  """``split`` of a ``tfds:`` dataset (array_record, through ``tfds.data_source``)."""
  builder = _tfds_builder(spec.name, spec.tfds_name, spec.data_dir or None)
  return TFDSUserSource(spec, builder.as_data_source(split=split, file_format="array_record"))
