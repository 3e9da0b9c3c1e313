"""A run's state built from its (validated) config: network, optimiser, anchors.

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
from typing import Any, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import optax

from tfjax import losses, methods, recipes
from tfjax.backbones import get_backbone
from tfjax.deep_fusion import head_from_config
from tfjax.models import TransFusionHead, tie_query_key
from tfjax.networks import ContrastiveNet, Identity
from tfjax.optim import make_optimizer, make_schedule
from tfjax.precision import compute_dtypes

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
  def from_config(cls, config, data_kind: str, axis_name: Optional[str] = None) -> "Recipe":
    method = methods.get(config.loss)
    options = method.resolve_options(config)
    return cls(
      method=method.name,
      num_views=int(config.num_views),
      augment=config.augment,
      data_kind=data_kind,
      augment_strength=float(config.augment_strength),
      labels_in_loss=bool(config.label_fraction is not None and config.labels_in_loss),
      oar_weight=float(config.oar_weight),
      options=tuple(sorted(options.items())),
      axis_name=axis_name,
    )


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


def head_options(config) -> dict:
  """The TransFusion head's implementation keyword arguments (``{}``: dense).

  The fields are checked by :func:`tfjax.config.validate`.
  """
  impl = config.head.get("implementation", "dense")
  if impl == "dense":
    return {}
  return {"implementation": impl, "block_size": config.head.block_size}


# ----------------------------------------------------------------------------
# Network, optimiser, anchors, state.
# ----------------------------------------------------------------------------
def build_network(config, axis_name: Optional[str] = None) -> ContrastiveNet:
  """The configured ``ContrastiveNet`` (a head only for methods that use one;
  its unset fields from the method's recipe, :mod:`tfjax.recipes`)."""
  config = recipes.resolve(config)[0]
  dtype, head_dtype = compute_dtypes(config)
  if config.backbone == "identity":
    backbone = Identity()
  else:
    backbone = get_backbone(
      config.backbone, axis_name=axis_name, dtype=dtype, **dict(config.backbone_kwargs)
    )
  head = None
  if config.loss == "deep_fusion":  # its own head (tfjax.deep_fusion)
    head = head_from_config(config, axis_name)
  elif methods.get(config.loss).uses_head:
    head = TransFusionHead(
      num_layers=config.head.num_layers,
      features=config.head.features,
      activation=config.head.activation,
      final_projection=config.head.final_projection,
      fuse_within_view=config.head.fuse_within_view,
      axis_name=axis_name,
      compute_dtype=head_dtype,
      **head_options(config),
    )
  return ContrastiveNet(
    backbone=backbone,
    embed_dim=config.embed_dim,
    projector_hidden=tuple(config.projector_hidden),
    head=head,
    axis_name=axis_name,
    dtype=dtype,
  )


def build_optimizer(config) -> optax.GradientTransformation:
  config = recipes.resolve(config)[0]  # unset learning_rate / num_steps: the recipe's
  schedule = make_schedule(
    config.schedule,
    base_lr=config.learning_rate,
    total_steps=config.num_steps,
    warmup_steps=config.warmup_steps,
  )
  return make_optimizer(
    config.optimizer,
    schedule,
    weight_decay=config.weight_decay,
    momentum=config.momentum,
    weight_decay_mask="no_bias_norm",
  )


def class_anchors(config, num_classes: int, embed_dim: int) -> Optional[Array]:
  """CLOA's fixed orthonormal anchors [K, D] (None without OAR)."""
  if config.oar_weight <= 0:
    return None
  return losses.orthonormal_anchors(jax.random.key(config.seed + 7919), num_classes, embed_dim)


def create_train_state(
  config,
  key: Array,
  x_shape,
  num_classes: int,
  *,
  data_kind: str = "vector",
  axis_name: Optional[str] = None,
) -> TrainState:
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
  variables = jax.jit(functools.partial(init_model.init, method=ContrastiveNet.init_all))(
    key, dummy
  )
  params = variables["params"]
  if config.head.tie_qk_init and "head" in params:
    params = dict(params, head=tie_query_key(params["head"]))
  embed_dim = config.embed_dim or _feature_dim(init_model, variables, dummy)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=variables.get("batch_stats", {}),
    opt_state=tx.init(params),
    anchors=class_anchors(config, num_classes, embed_dim),
    model=model,
    tx=tx,
    recipe=Recipe.from_config(config, data_kind, axis_name),
  )


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
