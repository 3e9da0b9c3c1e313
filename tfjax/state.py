"""A run's state built from its config: checks, network, optimiser, anchors.

:class:`TrainState` is one pytree holding everything a training step changes
(step, parameters, BatchNorm statistics, optimiser state) and, as static
fields, everything that defines the step (the network, the optax
transformation, the :class:`Recipe`).  So the step is one module-level pure
function, ``tfjax.step.train_step(state, batch, key)``, that jits and pmaps
as it is.

Example::

    >>> from tfjax import config as cfg, state as st, step
    >>> c = cfg.base_config()
    >>> s = st.create_train_state(c, jax.random.key(0), x_shape=(64,),
    ...                           num_classes=10)
    >>> s, metrics = jax.jit(step.train_step)(s, {"x": x}, jax.random.key(1))
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from tfjax import losses, methods, recipes
from tfjax.backbones import BACKBONES, get_backbone
from tfjax.models import IMPLEMENTATIONS, TransFusionHead, tie_query_key
from tfjax.networks import ContrastiveNet, Identity
from tfjax.optim import OPTIMIZERS, SCHEDULES, make_optimizer, make_schedule

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Recipe:
  """The static choices of a training step (hashable: part of the jit key).

  Attributes:
    method: the registry name of the method (``config.loss``).
    num_views: views per source V.
    augment: augmentation name ("" = the data kind's default) and the kind.
    augment_strength: the augmentation's strength.
    labels_in_loss: the method's target uses the semi-supervised labels.
    oar_weight: weight λ of CLOA's OAR loss (0 = off).
    options: the method's hyper-parameters, as sorted (name, value) pairs.
    axis_name: the pmap axis the network and losses reduce over (or None).
  """
  method: str
  num_views: int
  augment: str
  data_kind: str
  augment_strength: float
  labels_in_loss: bool
  oar_weight: float
  options: Tuple[Tuple[str, Any], ...]
  axis_name: Optional[str] = None

  @classmethod
  def from_config(cls, config, data_kind: str,
                  axis_name: Optional[str] = None) -> "Recipe":
    method = methods.get(config.loss)
    options = method.resolve_options(config)
    return cls(method=method.name, num_views=int(config.num_views),
               augment=config.augment, data_kind=data_kind,
               augment_strength=float(config.augment_strength),
               labels_in_loss=bool(config.label_fraction is not None
                                   and config.labels_in_loss),
               oar_weight=float(config.oar_weight),
               options=tuple(sorted(options.items())), axis_name=axis_name)


@flax.struct.dataclass
class TrainState:
  """Everything a training step changes, as one pytree, plus how it steps.

  ``anchors`` are CLOA's fixed orthonormal class anchors [K, D] (None
  without OAR); they never train.  ``model``, ``tx`` and ``recipe`` are static.
  """
  step: Array
  params: Any
  batch_stats: Any
  opt_state: Any
  anchors: Optional[Array]
  model: ContrastiveNet = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  recipe: Recipe = flax.struct.field(pytree_node=False)

  @property
  def variables(self):
    return {"params": self.params, "batch_stats": self.batch_stats}


# ----------------------------------------------------------------------------
# Configuration checks: before any compute.
# ----------------------------------------------------------------------------
def validate_config(config: ml_collections.ConfigDict, num_devices: int = 1):
  """Raises ValueError for names or sizes that cannot work, before compute.

  Checks the names (dataset, loss, backbone, optimizer, schedule,
  augmentation, head options), the sizes (``batch_size``, ``num_steps``,
  ``steps_per_call``, ``log_every``, ``checkpoint_every`` >= 1;
  ``warmup_steps`` in [0, num_steps); batch sizes divisible by the
  ``num_devices`` devices), the optimisation numbers (``learning_rate``,
  ``weight_decay``, ``augment_strength`` finite and >= 0, ``momentum`` in
  [0, 1)), the label options and the evaluation sizes.  It reads no data:
  the data checks are :func:`tfjax.workdir.check_dataset`'s.  Each message
  names the config field.

  Returns the dataset's :class:`tfjax.data.DatasetSpec`.
  """
  from tfjax.data.augment import get_augmentation
  from tfjax.data.registry import get_dataset_spec

  config = recipes.resolve(config)[0]      # unset fields: the method's recipe
  spec = get_dataset_spec(config.dataset)  # unknown dataset -> ValueError
  method = methods.get(config.loss)        # unknown loss -> ValueError
  if config.backbone != "identity" and config.backbone not in BACKBONES:
    raise ValueError(f"unknown backbone {config.backbone!r}; known: "
                     f"{sorted(BACKBONES) + ['identity']}")
  if config.optimizer not in OPTIMIZERS:
    raise ValueError(
        f"unknown optimizer {config.optimizer!r}; known: {sorted(OPTIMIZERS)}")
  if config.schedule not in SCHEDULES:
    raise ValueError(
        f"unknown schedule {config.schedule!r}; known: {list(SCHEDULES)}")
  get_augmentation(config.augment, spec.kind)  # unknown augmentation
  for name in ("batch_size", "num_steps", "steps_per_call", "log_every",
               "checkpoint_every"):
    _check_int(config, name, 1)
  _check_int(config, "num_devices", 0)
  if config.batch_size % num_devices:
    raise ValueError(
        f"global batch_size {config.batch_size} is not divisible by the "
        f"device count {num_devices}")
  if not 0 <= config.warmup_steps < config.num_steps:
    raise ValueError(f"warmup_steps ({config.warmup_steps}) must lie in "
                     f"[0, num_steps={config.num_steps})")
  _check_real(config, "learning_rate", low=0.0)
  _check_real(config, "weight_decay", low=0.0)
  _check_real(config, "momentum", low=0.0, high=1.0)
  _check_real(config, "augment_strength", low=0.0)
  for name in ("input.num_threads", "input.host_prefetch", "input.device_prefetch",
               "input.in_memory_mb"):
    if name.split(".")[1] in config.get("input", {}):
      _check_int(config, name, 0)
  for name in ("eval.batch_size", "eval.knn_k"):
    _check_int(config, name, 1)
  for name in ("eval.linear_steps", "eval.finetune_steps"):
    _check_int(config, name, 0)
  bad = [f for f in config.eval.finetune_fractions if not 0 < f <= 1]
  if bad:
    raise ValueError(f"eval.finetune_fractions must lie in (0, 1], got {bad}")
  if config.embed_dim < 0:
    raise ValueError(f"embed_dim must be >= 0 (0: no projector), got "
                     f"{config.embed_dim}")
  if config.get("validation_fraction") is not None and not (
      0 < config.validation_fraction < 1):
    raise ValueError(f"validation_fraction must be in (0, 1) (or None), got "
                     f"{config.validation_fraction}")
  if config.label_fraction is not None and not 0 < config.label_fraction <= 1:
    raise ValueError(f"label_fraction must be in (0, 1] (or None for no "
                     f"labels), got {config.label_fraction}")
  if config.labelled_batch_size < 0:
    raise ValueError(f"labelled_batch_size must be >= 0, got {config.labelled_batch_size}")
  if config.labelled_batch_size > 0:
    if not config.oar_weight > 0:
      raise ValueError("labelled_batch_size > 0 feeds the OAR loss: set oar_weight > 0 "
                       "(and label_fraction)")
    if config.labelled_batch_size % num_devices:
      raise ValueError(f"labelled_batch_size {config.labelled_batch_size} must be "
                       f"divisible by the {num_devices} devices")
  if config.oar_weight > 0 and not config.label_fraction:
    raise ValueError("oar_weight > 0 needs label_fraction > 0 (OAR pulls "
                     "the labelled samples toward their class anchors)")
  labels_in_loss = config.label_fraction is not None and config.labels_in_loss
  if config.labels_in_loss and not method.accepts_labels:
    raise ValueError(f"loss {method.name!r} cannot use labels in its target "
                     "(labels_in_loss=True)")
  if method.num_views is not None and config.num_views != method.num_views:
    raise ValueError(f"loss {method.name!r} takes exactly {method.num_views} "
                     f"views, got num_views={config.num_views}")
  if config.num_views < 1 or (config.num_views == 1 and not (
      labels_in_loss and config.label_fraction == 1.0)):
    raise ValueError(f"num_views must be >= 2 (one view is enough only when "
                     f"every label is in the loss), got {config.num_views}")
  head_options(config)          # implementation / block / dtype checks
  return spec


def _field(config, name: str):
  node = config
  for part in name.split("."):
    node = node[part]
  return node


def _check_int(config, name: str, low: int) -> None:
  value = _field(config, name)
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_real(config, name: str, low: float, high: Optional[float] = None
                ) -> None:
  """``low <= value`` (``< high`` when given), finite."""
  value = _field(config, name)
  ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
        and math.isfinite(value) and value >= low
        and (high is None or value < high))
  if not ok:
    where = (f"in [{low:g}, {high:g})" if high is not None else f">= {low:g}")
    raise ValueError(f"{name} must be finite and {where}, got {value!r}")


def head_options(config) -> dict:
  """The TransFusion head's implementation fields, checked."""
  from tfjax.attention import get_activation
  from tfjax.models import PROJECTIONS
  if config.head.final_projection not in PROJECTIONS:
    raise ValueError(f"unknown head.final_projection "
                     f"{config.head.final_projection!r}; choose one of {PROJECTIONS}")
  if config.head.num_layers < 1:
    raise ValueError(f"head.num_layers must be >= 1, got {config.head.num_layers}")
  get_activation(config.head.activation)  # unknown activation -> ValueError
  impl = config.head.get("implementation", "dense")
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"unknown head.implementation {impl!r}; choose one of "
                     f"{IMPLEMENTATIONS}")
  if impl == "dense":
    return {}
  block_size = config.head.block_size
  if isinstance(block_size, bool) or not isinstance(block_size, int) or (
      block_size < 1):
    raise ValueError(f"head.block_size must be a positive int, got "
                     f"{block_size!r}")
  name = config.head.get("compute_dtype", None)
  dtype = None
  if name:
    try:
      dtype = jnp.dtype(name)
    except TypeError:
      dtype = None
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
      raise ValueError(f"head.compute_dtype must name a float dtype such as "
                       f"'bfloat16' (or be None), got {name!r}")
  return {"implementation": impl, "block_size": block_size,
          "compute_dtype": dtype}


# ----------------------------------------------------------------------------
# Network, optimiser, anchors, state.
# ----------------------------------------------------------------------------
def build_network(config, axis_name: Optional[str] = None) -> ContrastiveNet:
  """The configured ``ContrastiveNet`` (a head only for methods that use one;
  its unset fields from the method's recipe, :mod:`tfjax.recipes`)."""
  config = recipes.resolve(config)[0]
  if config.backbone == "identity":
    backbone = Identity()
  else:
    backbone = get_backbone(config.backbone, axis_name=axis_name,
                            **dict(config.backbone_kwargs))
  head = None
  if methods.get(config.loss).uses_head:
    head = TransFusionHead(num_layers=config.head.num_layers,
                           features=config.head.features,
                           activation=config.head.activation,
                           final_projection=config.head.final_projection,
                           fuse_within_view=config.head.fuse_within_view,
                           axis_name=axis_name, **head_options(config))
  return ContrastiveNet(backbone=backbone, embed_dim=config.embed_dim,
                        projector_hidden=tuple(config.projector_hidden),
                        head=head, axis_name=axis_name)


def build_optimizer(config) -> optax.GradientTransformation:
  config = recipes.resolve(config)[0]   # unset learning_rate / num_steps: the recipe's
  schedule = make_schedule(config.schedule, base_lr=config.learning_rate,
                           total_steps=config.num_steps,
                           warmup_steps=config.warmup_steps)
  return make_optimizer(config.optimizer, schedule,
                        weight_decay=config.weight_decay,
                        momentum=config.momentum,
                        weight_decay_mask="no_bias_norm")


def class_anchors(config, num_classes: int, embed_dim: int) -> Optional[Array]:
  """CLOA's fixed orthonormal anchors [K, D] (None without OAR)."""
  if config.oar_weight <= 0:
    return None
  return losses.orthonormal_anchors(jax.random.key(config.seed + 7919),
                                    num_classes, embed_dim)


def create_train_state(config, key: Array, x_shape, num_classes: int, *,
                       data_kind: str = "vector",
                       axis_name: Optional[str] = None) -> TrainState:
  """Initialises parameters (deterministic per ``key``) and the optimiser.

  ``x_shape`` is one example's shape; ``axis_name`` the pmap axis the step
  will run under (the parameters do not depend on it).  Recipe fields left
  unset take the method's recipe for ``data_kind`` (:mod:`tfjax.recipes`).
  """
  config = recipes.resolve(config, data_kind)[0]
  model = build_network(config, axis_name)
  init_model = build_network(config, None) if axis_name else model
  tx = build_optimizer(config)
  dummy = jnp.zeros((max(4, config.num_views * 2),) + tuple(x_shape), jnp.float32)
  # Jitted: eager Flax init dispatches op by op (a minute for a small CNN).
  variables = jax.jit(functools.partial(
      init_model.init, method=ContrastiveNet.init_all))(key, dummy)
  params = variables["params"]
  if config.head.tie_qk_init and "head" in params:
    params = dict(params, head=tie_query_key(params["head"]))
  embed_dim = config.embed_dim or _feature_dim(init_model, variables, dummy)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params),
                    anchors=class_anchors(config, num_classes, embed_dim),
                    model=model, tx=tx,
                    recipe=Recipe.from_config(config, data_kind, axis_name))


def _feature_dim(model, variables, dummy) -> int:
  shapes = jax.eval_shape(lambda v, x: model.apply(v, x), variables, dummy)
  return int(shapes[1].shape[-1])


def eval_model(state: TrainState) -> ContrastiveNet:
  """The state's network without its pmap axis (for evaluation on one device)."""
  model = state.model
  if model.axis_name is None:
    return model
  return _without_axis(model)


def _without_axis(model: ContrastiveNet) -> ContrastiveNet:
  backbone = model.backbone
  if "axis_name" in {f.name for f in dataclasses.fields(backbone)}:
    backbone = backbone.clone(axis_name=None)
  head = None if model.head is None else model.head.clone(axis_name=None)
  return model.clone(backbone=backbone, head=head, axis_name=None)
