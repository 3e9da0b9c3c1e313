"""The method registry: every training objective declared once.

A *method* is a loss over the embeddings of a batch of views plus what the
training step must know about it: how many views it takes, whether it can use
class labels in its target, whether it needs the TransFusion head, the
hyper-parameters it reads from the config, and the name under which results
are reported.  The training step (:mod:`tfjax.step`), the loop, the
experiment scripts and their plots read this registry; none of them switches
on loss names.  The built-in methods and their recipes are registered in
:mod:`tfjax.builtin_methods` (imported by ``import tfjax``).

Adding a method = its loss function, its test, and one :func:`register`
call::

    >>> import jax.numpy as jnp
    >>> from tfjax import methods
    >>> def alignment(inputs, *, power):
    ...   z1, z2 = inputs.views()            # [n, D] each
    ...   return jnp.mean(jnp.sum((z1 - z2) ** 2, -1) ** (power / 2))
    >>> methods.register(methods.Method(
    ...     name="alignment", display_name="Alignment only", loss=alignment,
    ...     num_views=2, options={"power": 2.0}))

after which ``config.loss = "alignment"`` trains it (``power`` is read from
``config.loss_options.power`` when set, else the default above).

A loss receives a :class:`LossInputs` (the embeddings ``z`` [V·n, D] in
view-major order, the global source ids, the semi-supervised labels, the
pmap axis and the TransFusion head) and the method's options as keyword
arguments, and returns a scalar.  Under ``jax.pmap`` it must reduce over the
*global* batch (every loss in :mod:`tfjax.losses` takes ``axis_name``).
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp

Array = jax.Array


def semi_supervised_ids(groups: Array, labels: Array) -> Array:
  """One id per sample whose equality is the semi-supervised positive relation.

  ``groups`` [m] are source ids (≥ 0), ``labels`` [m] class ids or −1.
  Labelled samples take their class ``c``; unlabelled ones ``−1 − source``
  (negative, so never equal to a class).  Two samples share an id exactly
  when they are views of one source or both labelled with one class — the
  relation of :func:`tfjax.positive_mask` with labels, because a source's
  views carry the same label.  Returns int [m].
  """
  return jnp.where(labels >= 0, labels, -1 - groups)


# The recipe fields: dotted config name -> type.  base_config() leaves them
# unset (None).
FIELDS: Mapping[str, type] = types.MappingProxyType(
  {
    "augment": str,
    "augment_strength": float,
    "learning_rate": float,
    "temperature": float,
    "num_steps": int,
    "head.num_layers": int,
    "head.final_projection": str,
    "head.activation": str,
  }
)

# For the fields a recipe does not name (those its method does not read:
# a temperature for JSD, a head for SimCLR) and for a method registered
# without a recipe: the middle of the sweeps' grids (docs/recipes.md), one
# head block with learned Q/K and ReLU, the kind's default augmentation.
FALLBACK: Mapping[str, Any] = types.MappingProxyType(
  {
    "augment": "",
    "augment_strength": 0.5,
    "learning_rate": 2e-3,
    "temperature": 0.1,
    "num_steps": 800,
    "head.num_layers": 1,
    "head.final_projection": "learned",
    "head.activation": "relu",
  }
)


@dataclasses.dataclass(frozen=True)
class Recipe:
  """Fields chosen for one method on validation data.

  Attributes:
    labels: True for the class-target recipe (``label_fraction`` set and
      ``labels_in_loss``), False for the self-supervised one.
    kind: the data kind it was chosen on (``tfjax.data`` kinds: ``"signal"``,
      ``"vector"``, ``"image"``).
    fields: dotted config name (one of :data:`FIELDS`) -> value.
    source: where the choice is documented, e.g. ``"docs/recipes.md, first
      sweep"``.
  """

  labels: bool
  kind: str
  fields: Mapping[str, Any]
  source: str = ""

  def __post_init__(self):
    unknown = sorted(set(self.fields) - set(FIELDS))
    if unknown:
      raise ValueError(
        f"recipe sets fields {unknown} that are not recipe fields; known: {sorted(FIELDS)}"
      )
    object.__setattr__(self, "fields", types.MappingProxyType(dict(self.fields)))

  def __hash__(self):
    return hash((self.labels, self.kind, tuple(sorted(self.fields.items())), self.source))


@dataclasses.dataclass(frozen=True)
class LossInputs:
  """What a method's loss sees of one (local) batch.

  Attributes:
    z: embeddings [V·n, D], view-major: rows ``v·n … v·n+n−1`` are view v of
      the device's n sources.
    num_views: V.
    groups: int [V·n], the *global* index of each row's source (views of one
      source share it; distinct across devices under pmap).
    labels: int [V·n], the class of labelled sources and −1 elsewhere, or None
      when the configuration puts no labels in the loss.
    axis_name: the pmap axis (None on one device).
    head_loss: ``head_loss(z, groups, labels, **options) -> scalar``, the
      network head's loss (TransFusion's JSD or Deep Fusion's NT-Xent; keyword
      options go to the head's ``loss``); None for methods without a head.
  """

  z: Array
  num_views: int
  groups: Array
  labels: Optional[Array]
  axis_name: Optional[str]
  head_loss: Optional[Callable[..., Array]] = None

  def views(self):
    """The embeddings as a tuple of V arrays [n, D]."""
    n = self.z.shape[0] // self.num_views
    return tuple(self.z[v * n : (v + 1) * n] for v in range(self.num_views))

  def positive_ids(self) -> Array:
    """Ids whose equality marks positives: sources, or sources + classes."""
    if self.labels is None:
      return self.groups
    return semi_supervised_ids(self.groups, self.labels)


@dataclasses.dataclass(frozen=True)
class Method:
  """A training objective and what the step must know about it.

  Attributes:
    name: the registry key, ``config.loss``; also names run directories.
    display_name: how tables and plots name it.
    loss: ``loss(inputs: LossInputs, **options) -> scalar``.
    num_views: the exact number of views it needs (None: any number; one view
      only with labels in the target, so that every row can have a positive).
    accepts_labels: its target can use class labels (``labels_in_loss``).
    uses_head: it trains a head after the projector (the network gets one:
      TransFusion's, or Deep Fusion's for ``deep_fusion``).
    options: hyper-parameter name -> default.  The step reads each from the
      top-level config field of that name when there is one (``temperature``,
      ``lambda_offdiag``), else from ``config.loss_options``, else the default.
    recipes: the training fields chosen for it on validation data, per use
      of labels and kind of data (:class:`Recipe`); they fill
      the config fields left unset (:func:`tfjax.recipes.resolve`).
  """

  name: str
  display_name: str
  loss: Callable[..., Array]
  num_views: Optional[int] = None
  accepts_labels: bool = False
  uses_head: bool = False
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  recipes: Tuple[Recipe, ...] = ()

  def __post_init__(self):
    if not self.name or not self.name.isidentifier():
      raise ValueError(f"method name must be an identifier, got {self.name!r}")
    if self.num_views is not None and self.num_views < 1:
      raise ValueError(f"num_views must be >= 1 or None, got {self.num_views}")
    # A read-only mapping: a frozen method must hash and compare by value.
    object.__setattr__(self, "options", types.MappingProxyType(dict(self.options)))
    object.__setattr__(self, "recipes", tuple(self.recipes))
    if any(r.labels for r in self.recipes) and not self.accepts_labels:
      raise ValueError(f"method {self.name!r} has a class-target recipe but does not accept labels")

  def __hash__(self):
    return hash(
      (
        self.name,
        self.display_name,
        self.loss,
        self.num_views,
        self.accepts_labels,
        self.uses_head,
        tuple(sorted(self.options.items())),
        self.recipes,
      )
    )

  def resolve_options(self, config) -> Dict[str, Any]:
    """The method's hyper-parameters as set in ``config`` (see ``options``)."""
    extra = config.get("loss_options", None) or {}
    out = {}
    for key, default in self.options.items():
      if key in config:
        out[key] = config[key]
      elif key in extra:
        out[key] = extra[key]
      else:
        out[key] = default
    return out


_REGISTRY: Dict[str, Method] = {}


def register(method: Method, *, replace: bool = False) -> Method:
  """Adds ``method`` to the registry (``replace=True`` to redefine a name)."""
  if method.name in _REGISTRY and not replace:
    raise ValueError(
      f"method {method.name!r} is already registered; pass replace=True to redefine it"
    )
  _REGISTRY[method.name] = method
  return method


def unregister(name: str) -> None:
  """Removes a method (tests that register toy methods clean up with it)."""
  _REGISTRY.pop(name, None)


def get(name: str) -> Method:
  """The registered method ``name``; a ValueError lists the known ones."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown loss {name!r}; known: {sorted(_REGISTRY)}")
  return _REGISTRY[name]


def names() -> tuple:
  """Names of the registered methods, in registration order."""
  return tuple(_REGISTRY)


def parse_names(text: str) -> list:
  """Registered method names from a comma-separated string, each checked."""
  names = [s.strip() for s in text.split(",") if s.strip()]
  if not names:
    raise ValueError(f"no method named in {text!r}; known: {sorted(_REGISTRY)}")
  for name in names:
    get(name)  # ValueError "unknown loss ..." listing the known ones
  return names


def display_name(config) -> str:
  """A run's name in tables: the method's, then its use of labels.

  "TransFusion (JSD), class targets" (every label in the target),
  "TransFusion (JSD), class targets, 10 % labels" (a fraction),
  "SimCLR (InfoNCE), self-supervised"; CLOA's OAR adds "OAR-" in front and,
  with labels only in OAR, the fraction: "OAR-SimCLR (InfoNCE), 10 % labels".
  """
  name = get(config.loss).display_name
  fraction = config.label_fraction
  if config.oar_weight > 0:
    name = "OAR-" + name
  if fraction is not None and config.labels_in_loss:
    name += ", class targets"
    if fraction < 1:
      name += f", {100 * fraction:g} % labels"
  elif fraction is not None and config.oar_weight > 0:
    name += f", {100 * fraction:g} % labels"
  else:
    name += ", self-supervised"
  return name


def run_name(config) -> str:
  """A run's directory name: the method, ``oar_`` and the label fraction."""
  name = get(config.loss).name
  if config.oar_weight > 0:
    name = "oar_" + name
  if config.label_fraction is not None and config.labels_in_loss:
    name += f"_labels{config.label_fraction:g}"
  return name
