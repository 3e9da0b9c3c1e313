"""The training configuration: every field, its default, and what it means.

Experiment configs (``experiments/configs/*.py``) start from
:func:`base_config` and change fields; the dict is locked, so a misspelled
field raises an error instead of being silently ignored.  On the command line
every field is set with ``--config.FIELD=VALUE`` (``ml_collections``'
``config_flags``).  :func:`tfjax.state.validate_config` checks the values
before any compute, naming the field.

A run's work directory remembers its config (``config.json``): resuming
with a config that changes the result is refused (:mod:`tfjax.workdir`).
Raising ``num_steps`` continues training; the *free* fields, which cannot
change the trained parameters, may change on any rerun: ``input.*``,
``log_every``, ``checkpoint_every``, ``write_plots``, ``data_dir`` and
``eval.*`` (the evaluations are recomputed).
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Data (tfjax.data registry name) and the data directory of real TFDS data.
  c.dataset = "subspaces"
  c.data_dir = ml_collections.FieldReference(None, field_type=str)
  # Hold out this fraction of the training split (class-balanced, fixed seed
  # 0) and evaluate on it instead of the test split: for choosing
  # hyper-parameters without looking at the test set.
  c.validation_fraction = ml_collections.FieldReference(None, field_type=float)
  # Network: backbone -> BatchNorm-MLP projector -> (TransFusion head).
  # backbone "identity" feeds the raw vectors on; embed_dim = 0 drops the
  # projector (the embeddings are then the backbone features).
  c.backbone = "mlp"
  c.backbone_kwargs = ml_collections.ConfigDict({"hidden": (256,), "out_features": 128})
  c.backbone_kwargs.unlock()  # each backbone takes its own attributes
  c.embed_dim = 64
  c.projector_hidden = (256,)
  # None (here and in the other recipe fields, tfjax.recipes.FIELDS): the
  # method's recipe, chosen on validation data, fills it when training starts
  # (tfjax.recipes.resolve, said in one line); a value set here is kept.
  c.head = ml_collections.ConfigDict(dict(
      num_layers=ml_collections.FieldReference(None, field_type=int),
      features=ml_collections.FieldReference(None, field_type=int),
      activation=ml_collections.FieldReference(None, field_type=str),
      implementation="dense", block_size=512,
      # Start each block with W_k = W_q (tfjax.models.tie_query_key).
      tie_qk_init=False,
      # The truncated block's Q, K: "learned" (LayerNorm + separate Q, K),
      # "tied" (Q = K) or "none" (Q = K = its input, no parameters).
      final_projection=ml_collections.FieldReference(None, field_type=str),
      # Fusion attention within each view (the authors') or across all rows.
      fuse_within_view=False,
      # "blockwise" only: matmul dtype, e.g. "bfloat16" (None: fp32).
      compute_dtype=ml_collections.FieldReference(None, field_type=str)))
  # The method: a name in the registry (tfjax.methods): jsd | info_nce |
  # supcon | dcl | barlow_twins | vicreg, or one you register.  Its
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
  c.num_devices = 0   # 0: every local device (pmap when more than one)
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
  c.input = ml_collections.ConfigDict(dict(
      num_threads=4, host_prefetch=4, device_prefetch=2, in_memory_mb=32))
  # Bookkeeping.  A logged step also checks that the loss, the gradient norm
  # and the state are finite (a diverged run stops there); checkpoints are
  # checked before they are written.
  c.log_every = 50
  c.checkpoint_every = 500
  c.write_plots = True
  # Evaluation of the backbone features.
  c.eval = ml_collections.ConfigDict(dict(
      knn_k=20, knn_temperature=0.07, linear_steps=500,
      finetune_fractions=(0.1, 0.5, 1.0), finetune_steps=500,
      batch_size=512,    # feature extraction
      # Also kNN on the head's output (TransFusion: the fused, transductive
      # features of training-size batches; others: the projector's output).
      head_knn=True))
  c.lock()
  c.loss_options.unlock()  # each registered method may read its own options
  return c
