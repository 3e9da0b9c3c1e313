"""Each method's validated recipe, filled into the config fields left unset.

A *recipe* is the set of training fields chosen for one method on held-out
validation data (``docs/recipes.md``): the augmentation and its strength,
the learning rate, the temperature or the TransFusion head's form, and the
number of steps.  Each :class:`tfjax.methods.Method` carries its recipes,
one per use of labels (class targets or self-supervised) and the kind of
data it was chosen on (``"signal"``: MNIST-1D).

The recipe fields of :func:`tfjax.config.base_config` (:data:`FIELDS`)
default to None, meaning "the method's recipe".  :func:`resolve` fills each
unset one and never touches a field the user set::

    >>> from tfjax import config as cfg, recipes
    >>> c = cfg.base_config()
    >>> c.dataset, c.learning_rate = "mnist1d", 1e-3
    >>> resolved, filled = recipes.resolve(c, "signal")
    >>> resolved.learning_rate, resolved.num_steps, "learning_rate" in filled
    (0.001, 1600, False)

For a kind of data the recipe was not chosen on, the recipe's augmentation
gives way to that kind's default when it does not fit the data (the signal
augmentation on images), and :func:`describe` says so.  A method without a
recipe for its use of labels gets :data:`FALLBACK`, said aloud as well.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from tfjax import methods
from tfjax.methods import FALLBACK, FIELDS, Recipe


def uses_labels(config) -> bool:
  """Whether ``config`` puts class labels in the loss's target."""
  return config.get("label_fraction") is not None and bool(config.get("labels_in_loss"))


def data_kind(config) -> Optional[str]:
  """The kind of ``config.dataset`` (a registry name or the user's data);
  None for a name that does not resolve (the config check then names it)."""
  from tfjax.data.registry import config_dataset_spec

  try:
    return config_dataset_spec(config).kind
  except (ValueError, OSError):
    return None


def recipe_for(method, labels: bool, kind: Optional[str]) -> Optional[Recipe]:
  """``method``'s recipe for its use of labels: the one chosen on ``kind``
  data, else the first registered for that use of labels; None if none."""
  candidates = [r for r in method.recipes if r.labels == labels]
  for recipe in candidates:
    if recipe.kind == kind:
      return recipe
  return candidates[0] if candidates else None


def _get(config, dotted: str):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def _set(config, dotted: str, value) -> None:
  *path, leaf = dotted.split(".")
  node = config
  for part in path:
    node = node[part]
  setattr(node, leaf, value)


def recipe_values(method, labels: bool, kind: Optional[str]) -> Dict[str, Any]:
  """Every recipe field's value for ``method`` on ``kind`` data: its recipe
  (the augmentation replaced by the kind's default where it does not fit
  that kind), :data:`FALLBACK` for the rest."""
  from tfjax.data.augment import fits

  recipe = recipe_for(method, labels, kind)
  values = dict(FALLBACK)
  if recipe is not None:
    values.update(recipe.fields)
    if recipe.kind != kind and not (kind and fits(values["augment"], kind)):
      values["augment"] = ""
  return values


def resolve(config, kind: Optional[str] = None) -> Tuple[Any, Dict[str, Any]]:
  """``(resolved config, filled)``: ``config`` with each unset recipe field
  set from its method's recipe for ``kind`` data (default: the kind of
  ``config.dataset``), and ``{dotted field: value}`` of the fields filled.

  A field the config sets is never changed.  The input is not modified: the
  result is a copy (FieldReferences resolved).  An unknown ``config.loss``
  raises the registry's ValueError naming the known methods.
  """
  if kind is None:
    kind = data_kind(config)
  method = methods.get(config.loss)
  out = config.copy_and_resolve_references()
  unset = [f for f in FIELDS if _get(out, f) is None]
  if not unset:
    return out, {}
  values = recipe_values(method, uses_labels(config), kind)
  filled = {}
  for field in unset:
    _set(out, field, values[field])
    filled[field] = values[field]
  return out, filled


def _reads(method, field: str) -> bool:
  """Whether ``method`` trains differently with ``field`` (its options, the
  head for TransFusion, the shared fields for all)."""
  if field == "temperature":
    return "temperature" in method.options
  if field.startswith("head."):  # TransFusion's head; Deep Fusion's reads deep_fusion.*
    return method.uses_head and method.name != "deep_fusion"
  return True


def describe(config, filled: Mapping[str, Any], kind: Optional[str] = None) -> str:
  """One line saying which recipe filled ``filled`` into ``config``, e.g.
  ``jsd (self-supervised, signal data): recipe sets learning_rate=0.004, ...``
  ("" when nothing was filled)."""
  if not filled:
    return ""
  if kind is None:
    kind = data_kind(config)
  method = methods.get(config.loss)
  labels = uses_labels(config)
  recipe = recipe_for(method, labels, kind)
  use = "class targets" if labels else "self-supervised"
  head = f"{method.name} ({use}, {kind or 'unknown kind of'} data): "
  read = {f: v for f, v in filled.items() if _reads(method, f)}
  unread = {f: v for f, v in filled.items() if f not in read}
  text = ", ".join(f"{f}={v!r}" for f, v in read.items())
  if recipe is None:
    line = head + f"no validated recipe; library fallback sets {text}"
  elif recipe.kind == kind:
    line = head + f"recipe sets {text}"
  else:
    line = head + f"the recipe chosen on {recipe.kind} data sets {text}"
    if "augment" in filled and recipe.fields.get("augment", "") != filled["augment"]:
      line += (
        f" (augment {recipe.fields['augment']!r} is for {recipe.kind} data: "
        f"the {kind or 'data'} default instead)"
      )
  if recipe is not None and recipe.source:
    line += f" [{recipe.source}]"
  if unread:
    line += "; not read by this method: " + ", ".join(f"{f}={v!r}" for f, v in unread.items())
  return line


def resolve_and_say(config, say: Optional[Callable[[str], Any]] = print):
  """:func:`resolve` ``config`` for its dataset's kind and pass
  :func:`describe`'s line to ``say`` (None: silent) when a field was filled.
  Returns the resolved config."""
  kind = data_kind(config)
  out, filled = resolve(config, kind)
  if filled and say is not None:
    say(describe(config, filled, kind))
  return out
