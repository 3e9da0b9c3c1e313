"""tfjax.data: datasets, input pipelines and on-device augmentations (no TensorFlow).

* :mod:`tfjax.data.registry` -- ``DATASETS``, ``get_dataset_spec`` (pure Python);
* :mod:`tfjax.data.user` -- the user's data: ``tfds:NAME``, ``folder:PATH``,
  ``npz:PATH`` (:mod:`tfjax.data.tfds_prepared`, :mod:`tfjax.data.folder`);
* :mod:`tfjax.data.convert` -- a tfrecord TFDS dataset to array_record;
* :mod:`tfjax.data.builders` -- offline TFDS builders ``tfjax_subspaces``,
  ``tfjax_digits``, ``tfjax_mnist1d`` (registered when ``tfjax.data`` is imported);
* :mod:`tfjax.data.pipeline` -- ``make_dataset``, ``load_arrays``,
  ``labelled_subset_mask`` (grain over random-access sources);
* :mod:`tfjax.data.augment` -- pure JAX augmentations.
"""
from tfjax.data import builders  # noqa: F401  (registers the offline TFDS builders; cheap: TF loads lazily)
from tfjax.data.augment import (  # noqa: F401
    augment_batch,
    color_jitter,
    gaussian_noise,
    get_augment_fn,
    make_views,
    random_flip,
    random_grayscale,
    random_mask,
    random_resized_crop,
    random_scale,
    random_shift,
    simclr_augment,
    vector_augment,
)
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
