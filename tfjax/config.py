"""The training configuration: every field, its default, and what it means.

Experiment configs (``experiments/configs/*.py``) start from
:func:`base_config` and change fields; the dict is locked, so a misspelled
field raises an error instead of being silently ignored.  On the command line
every field is set with ``--config.FIELD=VALUE`` (``ml_collections``'
``config_flags``).  :func:`validate` checks the values (and, given, the
data arrays) before any data is read or any compute, naming the field.

A run's work directory remembers its config (``config.json``): resuming
with a config that changes the result is refused (:mod:`tfjax.rerun`).
Raising ``num_steps`` continues training; the *free* fields, which cannot
change the trained parameters, may change on any rerun: ``input.*``,
``log_every``, ``checkpoint_every``, ``write_plots``, ``data_dir`` and
``eval.*`` (the evaluations are recomputed).
"""

from __future__ import annotations

from typing import Optional

import ml_collections

from tfjax.config_checks import (
  check_batch_fits,
  check_int,
  check_label_fraction,
  check_labels,
  check_names,
  check_sizes,
  registry_split,
  resolve_num_devices,
)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Data: a tfjax.data registry name, or the user's data: tfds:NAME[/CONFIG]
  # (a prepared TFDS dataset), folder:PATH (images, one sub-folder per class),
  # npz:PATH (x_train, y_train, x_test, y_test); see docs/data.md.  data_dir:
  # the TFDS data directory.
  c.dataset = "subspaces"
  c.data_dir = ml_collections.FieldReference(None, field_type=str)
  # folder: images (and TFDS images of varying size) are resized to
  # image_size x image_size.
  c.image_size = 32
  # The data has no labels (a folder of images without class folders, a TFDS
  # dataset without a ClassLabel; an npz without y_train is unlabelled
  # anyway): self-supervised methods only, and no probes.
  c.unlabelled = False
  # Hold out this fraction of the training split (class-balanced, fixed seed
  # 0) and evaluate on it instead of the test split: for choosing
  # hyper-parameters without looking at the test set.
  c.validation_fraction = ml_collections.FieldReference(None, field_type=float)
  # Network: backbone -> BatchNorm-MLP projector -> (TransFusion head).
  # backbone "identity" feeds the raw vectors on; embed_dim = 0 drops the
  # projector (the embeddings are then the backbone features).
  c.backbone = "mlp"
  # The backbone's attributes (tfjax.backbones; empty: its defaults, for the
  # MLP hidden=(256,), out_features=128).
  c.backbone_kwargs = ml_collections.ConfigDict()
  c.backbone_kwargs.unlock()  # each backbone takes its own attributes
  c.embed_dim = 64
  c.projector_hidden = (256,)
  # Dtype the backbone, projector and head compute in: "float32" or
  # "bfloat16" (parameters, BatchNorm statistics, losses and optimiser state
  # stay float32; tfjax.precision).
  c.compute_dtype = "float32"
  # None (here and in the other recipe fields, tfjax.methods.FIELDS): the
  # method's recipe, chosen on validation data, fills it when training starts
  # (tfjax.recipes.resolve, said in one line); a value set here is kept.
  c.head = ml_collections.ConfigDict(
    dict(
      num_layers=ml_collections.FieldReference(None, field_type=int),
      features=ml_collections.FieldReference(None, field_type=int),
      activation=ml_collections.FieldReference(None, field_type=str),
      implementation="dense",
      block_size=512,
      # Start each block with W_k = W_q (tfjax.models.tie_query_key).
      tie_qk_init=False,
      # The truncated block's Q, K: "learned" (LayerNorm + separate Q, K),
      # "tied" (Q = K) or "none" (Q = K = its input, no parameters).
      final_projection=ml_collections.FieldReference(None, field_type=str),
      # Fusion attention within each view (the authors') or across all rows.
      fuse_within_view=False,
      # The head's compute dtype, "float32" or "bfloat16" (None: the
      # top-level compute_dtype).
      compute_dtype=ml_collections.FieldReference(None, field_type=str),
    )
  )
  # The Deep Fusion head (loss "deep_fusion", tfjax.deep_fusion: softmax
  # attention + FFN blocks across the batch, NT-Xent).  Defaults are the
  # authors' (5 blocks, 8 heads, post-norm, GELU); features = the blocks'
  # width (None: embed_dim), out_features = the output width (None: the
  # width); fuse_within_view attends within each view instead of across both.
  c.deep_fusion = ml_collections.ConfigDict(
    dict(
      num_layers=5,
      num_heads=8,
      features=ml_collections.FieldReference(None, field_type=int),
      out_features=ml_collections.FieldReference(None, field_type=int),
      mlp_ratio=4.0,
      activation="gelu",
      norm="post",
      fuse_within_view=False,
      implementation="dense",
      block_size=512,
    )
  )
  # The method: a name in the registry (tfjax.methods): jsd | info_nce |
  # supcon | dcl | barlow_twins | vicreg | deep_fusion, or one you register.  Its
  # hyper-parameters: the top-level fields below, or loss_options for others.
  c.loss = "jsd"
  c.temperature = ml_collections.FieldReference(None, field_type=float)
  c.lambda_offdiag = 5e-3
  c.loss_options = ml_collections.ConfigDict()  # unlocked below
  c.num_views = 2
  # Augmentation (tfjax.data.augment.AUGMENTATIONS; "" = the dataset kind's
  # default: SimCLR's recipe for images, noise/shift/scale/mask otherwise)
  # and its strength (0 = identity).  None: the method's recipe.
  c.augment = ml_collections.FieldReference(None, field_type=str)
  c.augment_strength = ml_collections.FieldReference(None, field_type=float)
  # Labels: a seeded, class-balanced fraction of the training labels is known
  # (None: none).  labels_in_loss makes two labelled samples of one class
  # positives of the JSD/SupCon target; oar_weight > 0 adds CLOA's OAR.
  c.label_fraction = ml_collections.FieldReference(None, field_type=float)
  c.labels_in_loss = False
  c.oar_weight = 0.0
  # > 0: every step also reads a separate batch of this many labelled
  # examples for the OAR loss (CLOA's protocol: the base loss sees the
  # unlabelled batch, OAR the labelled one); 0: OAR on the main batch's
  # labelled rows.
  c.labelled_batch_size = 0
  # Optimisation.
  c.optimizer = "adamw"
  c.learning_rate = ml_collections.FieldReference(None, field_type=float)
  c.weight_decay = 1e-4
  c.momentum = 0.9
  c.schedule = "warmup_cosine"
  c.warmup_steps = 50
  c.batch_size = 256  # global, over all devices
  c.num_steps = ml_collections.FieldReference(None, field_type=int)
  c.num_devices = 0  # 0: every local device (pmap when more than one)
  # Steps per compiled call (a lax.scan over steps): > 1 pays for small MLPs,
  # whose steps are shorter than the dispatch of a call.  Keep 1 for
  # convolutional backbones on CPU: XLA:CPU runs convolutions inside a loop
  # ~50x slower (measured: CNN1D, batch 128, 10.8 ms a step vs 0.52 s).
  c.steps_per_call = 1
  # Input pipeline (grain over random-access sources): reader threads and
  # batches prefetched on the host and on the devices.  A split of at most
  # ``in_memory_mb`` MiB (as float32) is read into memory once (our choice:
  # random reads of a TFDS record cost ~25 µs, so a batch of 128 MNIST-1D
  # signals took 3 ms of host time a step, a third of the step; from
  # memory, 0.06 ms).  Larger splits (CIFAR-10's 50,000 images are 586 MiB)
  # stream from disk, so host memory does not grow with the dataset; 0
  # always streams.
  c.input = ml_collections.ConfigDict(
    dict(num_threads=4, host_prefetch=4, device_prefetch=2, in_memory_mb=32)
  )
  # Bookkeeping.  A logged step also checks that the loss, the gradient norm
  # and the state are finite (a diverged run stops there); checkpoints are
  # checked before they are written.
  c.log_every = 50
  c.checkpoint_every = 500
  c.write_plots = True
  # Evaluation of the backbone features.
  c.eval = ml_collections.ConfigDict(
    dict(
      knn_k=20,
      knn_temperature=0.07,
      linear_steps=500,
      finetune_fractions=(0.1, 0.5, 1.0),
      finetune_steps=500,
      batch_size=512,  # feature extraction
      # Also kNN on the head's output (TransFusion: the fused, transductive
      # features of training-size batches; others: the projector's output).
      head_knn=True,
    )
  )
  c.lock()
  c.loss_options.unlock()  # each registered method may read its own options
  return c


# ----------------------------------------------------------------------------
# The one check, before any data is read and before any compute.
# ----------------------------------------------------------------------------
def validate(
  config: ml_collections.ConfigDict,
  num_devices: Optional[int] = None,
  *,
  data=None,
  check_data: bool = True,
):
  """Raises ValueError naming the field (or the array) that cannot work.

  Checks, without reading data or compiling anything:

  * the names: dataset, loss, backbone and the ``backbone_kwargs`` it
    takes, optimizer, schedule, augmentation, head options
    and the compute dtypes (``compute_dtype``, ``head.compute_dtype``);
  * the sizes: ``batch_size``, ``num_steps``, ``steps_per_call``,
    ``log_every``, ``checkpoint_every`` >= 1; ``warmup_steps`` in
    [0, num_steps); batch sizes divisible by the device count; a batch of
    at least 2 sources (every method compares examples across the batch);
  * the optimisation numbers (``learning_rate``, ``weight_decay``,
    ``augment_strength`` finite and >= 0, ``momentum`` in [0, 1)), the
    label options and the evaluation sizes;
  * the devices: ``num_devices`` (None: ``config.num_devices`` or every
    device, checked against those available);
  * the data: without ``data``, the registry dataset is prepared on disk
    (:func:`tfjax.data.splits.check_prepared`) and its split sizes are
    used; with ``data`` — arrays ``(x_train, y_train, x_test, y_test)`` or
    two sources ``(train, test)`` — the arrays are checked cheaply (finite,
    ``|x| <= 1e30``, :func:`tfjax.data.checks.check_data`, non-empty, the same shape per example in both
    splits, integer labels >= 0, as many labels as examples);
  * the batch fits in the training split (less the held-out
    ``validation_fraction``), and ``label_fraction`` labels at least as
    many training examples as there are classes.

  ``check_data=False`` skips the data checks (loading a finished run needs
  its config to be sound, not its dataset on this machine).

  The checks live in :mod:`tfjax.config_checks`.  Returns the dataset's
  :class:`tfjax.data.DatasetSpec`.
  """
  from tfjax import recipes
  from tfjax.data.registry import config_dataset_spec
  from tfjax.models import check_head_options

  config = recipes.resolve(config)[0]  # unset fields: the method's recipe
  from tfjax.precision import compute_dtypes

  spec = config_dataset_spec(config)  # unknown dataset -> ValueError
  if not spec.labelled and (
    config.label_fraction is not None
    or config.labels_in_loss
    or config.oar_weight > 0
    or config.labelled_batch_size > 0
  ):
    raise ValueError(
      f"dataset {config.dataset!r} has no labels: only self-supervised "
      "runs (label_fraction=None, labels_in_loss=False, oar_weight=0, "
      "labelled_batch_size=0)"
    )
  check_int(config, "num_devices", 0)
  num_devices = resolve_num_devices(config, num_devices)
  check_names(config, spec)
  check_sizes(config, num_devices)
  check_labels(config, num_devices)
  check_head_options(config.head)
  compute_dtypes(config)  # compute_dtype, head.compute_dtype
  if config.loss == "deep_fusion":
    from tfjax.deep_fusion import head_from_config

    head_from_config(config)  # deep_fusion.* checks, naming the field
  if not check_data:
    return spec
  if data is None:
    from tfjax.data.splits import check_prepared, tfds_mocked

    if tfds_mocked():  # no files on disk, and the registry's sizes do not hold
      return spec
    check_prepared(spec, config.get("data_dir"))
    num_train, num_classes = registry_split(config, spec)
    where = f" of {spec.name!r}"
  else:
    from tfjax.data.checks import check_data

    num_train, num_classes = check_data(
      data, config.get("validation_fraction"), labelled=spec.labelled
    )
    where = ""
  check_batch_fits(config, num_train, where)
  check_label_fraction(config, num_train, num_classes)
  return spec
