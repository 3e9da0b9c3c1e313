"""tfjax.data: datasets, input pipelines and on-device augmentations (no TensorFlow).

* :mod:`tfjax.data.registry` -- ``DATASETS``, ``get_dataset_spec`` (pure Python);
* :mod:`tfjax.data.user` -- the user's data: ``tfds:NAME``, ``folder:PATH``,
  ``npz:PATH`` (:mod:`tfjax.data.tfds_prepared`, :mod:`tfjax.data.folder`);
* :mod:`tfjax.data.convert` -- a tfrecord TFDS dataset to array_record;
* :mod:`tfjax.data.builders` -- offline TFDS builders ``tfjax_subspaces``,
  ``tfjax_digits``, ``tfjax_mnist1d`` (registered when ``tfjax.data`` is imported);
* :mod:`tfjax.data.sources` / :mod:`tfjax.data.pipeline` -- random-access
  sources (TFDS ``array_record`` data or in-memory arrays) and the ``grain``
  pipeline over them: ``make_dataset``, ``load_arrays``, ``labelled_subset_mask``
  (TensorFlow Datasets is imported lazily, on first use);
* :mod:`tfjax.data.splits` -- a run's splits: prepared on disk, opened, in memory;
* :mod:`tfjax.data.checks` -- arrays passed as data, checked before training;
* :mod:`tfjax.data.fingerprint` -- the digest of a run's data;
* :mod:`tfjax.data.augment` -- augmentations by name; the pure JAX functions
  live in :mod:`tfjax.data.augment_image` and :mod:`tfjax.data.augment_vector`.
"""

from tfjax.data import builders  # noqa: F401  (registers the offline TFDS builders; cheap: TF loads lazily)
from tfjax.data import user  # noqa: F401  (registers the user's data with the registry and the sources)
from tfjax.data.augment import get_augment_fn  # noqa: F401
from tfjax.data.augment_image import (  # noqa: F401
  color_jitter,
  random_flip,
  random_grayscale,
  random_resized_crop,
  simclr_augment,
)
from tfjax.data.augment_vector import (
  gaussian_noise,
  random_mask,
  random_scale,
  random_shift,
  vector_augment,
)  # noqa: F401
from tfjax.data.registry import (  # noqa: F401
  DATASETS,
  USER_PREFIXES,
  DatasetNotFoundError,
  DatasetSpec,
  config_dataset_spec,
  get_dataset_spec,
)

_PIPELINE = ("make_dataset", "load_arrays", "labelled_subset_mask", "prepare_dataset")


def __getattr__(name):  # lazy: importing grain and TFDS costs seconds
  if name in _PIPELINE:
    from tfjax.data import pipeline

    return getattr(pipeline, name)
  raise AttributeError(f"module 'tfjax.data' has no attribute {name!r}")
