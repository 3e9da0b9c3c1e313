"""The checks of :func:`tfjax.config.validate`, one concern each.

Each function reads a :func:`tfjax.config.base_config` ConfigDict (recipe
fields already filled, :func:`tfjax.recipes.resolve`) and raises ValueError
naming the field: integer and real ranges, the device count, the registry
names, the sizes, the label options, and whether the batch and the labelled
fraction fit in the training split.  They read no data and compile nothing.
"""

from __future__ import annotations

import math
from typing import Optional


def _field(config, name: str):
  node = config
  for part in name.split("."):
    node = node[part]
  return node


def check_int(config, name: str, low: int) -> None:
  value = _field(config, name)
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def check_real(config, name: str, low: float, high: Optional[float] = None) -> None:
  """``low <= value`` (``< high`` when given), finite."""
  value = _field(config, name)
  ok = (
    isinstance(value, (int, float))
    and not isinstance(value, bool)
    and math.isfinite(value)
    and value >= low
    and (high is None or value < high)
  )
  if not ok:
    where = f"in [{low:g}, {high:g})" if high is not None else f">= {low:g}"
    raise ValueError(f"{name} must be finite and {where}, got {value!r}")


def resolve_num_devices(config, num_devices: Optional[int]) -> int:
  """The device count of the run: given, or the config's against JAX's."""
  if num_devices is not None:
    return num_devices
  import jax

  available, processes = jax.device_count(), jax.process_count()
  num_devices = config.num_devices or available
  if processes > 1 and num_devices != available:
    raise ValueError(
      f"a run of {processes} processes uses all {available} "
      f"devices; set num_devices=0, not {num_devices}"
    )
  if num_devices > available:
    raise ValueError(
      f"config asks for num_devices={num_devices}, but only {available} are available"
    )
  return num_devices


def check_names(config, spec) -> None:
  from tfjax import methods
  from tfjax.backbones import check_backbone_kwargs
  from tfjax.data.augment import get_augmentation
  from tfjax.optim import OPTIMIZERS, SCHEDULES

  methods.get(config.loss)  # unknown loss -> ValueError
  check_backbone_kwargs(config.backbone, config.backbone_kwargs)
  if config.optimizer not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {config.optimizer!r}; known: {sorted(OPTIMIZERS)}")
  if config.schedule not in SCHEDULES:
    raise ValueError(f"unknown schedule {config.schedule!r}; known: {list(SCHEDULES)}")
  get_augmentation(config.augment, spec.kind)  # unknown augmentation


def check_sizes(config, num_devices: int) -> None:
  for name in ("batch_size", "num_steps", "steps_per_call", "log_every", "checkpoint_every"):
    check_int(config, name, 1)
  if config.batch_size < 2:
    raise ValueError(
      f"batch_size must be >= 2, got {config.batch_size}: "
      "every method compares the sources of a batch with each "
      "other (one source gives a loss and gradient of 0)"
    )
  if config.batch_size % num_devices:
    raise ValueError(
      f"global batch_size {config.batch_size} is not divisible by the device count {num_devices}"
    )
  if not 0 <= config.warmup_steps < config.num_steps:
    raise ValueError(
      f"warmup_steps ({config.warmup_steps}) must lie in [0, num_steps={config.num_steps})"
    )
  check_real(config, "learning_rate", low=0.0)
  check_real(config, "weight_decay", low=0.0)
  check_real(config, "momentum", low=0.0, high=1.0)
  check_real(config, "augment_strength", low=0.0)
  for name in (
    "input.num_threads",
    "input.host_prefetch",
    "input.device_prefetch",
    "input.in_memory_mb",
  ):
    if name.split(".")[1] in config.get("input", {}):
      check_int(config, name, 0)
  for name in ("eval.batch_size", "eval.knn_k"):
    check_int(config, name, 1)
  for name in ("eval.linear_steps", "eval.finetune_steps"):
    check_int(config, name, 0)
  bad = [f for f in config.eval.finetune_fractions if not 0 < f <= 1]
  if bad:
    raise ValueError(f"eval.finetune_fractions must lie in (0, 1], got {bad}")
  if config.embed_dim < 0:
    raise ValueError(f"embed_dim must be >= 0 (0: no projector), got {config.embed_dim}")


def check_labels(config, num_devices: int) -> None:
  from tfjax import methods

  method = methods.get(config.loss)
  if config.get("validation_fraction") is not None and not (0 < config.validation_fraction < 1):
    raise ValueError(
      f"validation_fraction must be in (0, 1) (or None), got {config.validation_fraction}"
    )
  if config.label_fraction is not None and not 0 < config.label_fraction <= 1:
    raise ValueError(
      f"label_fraction must be in (0, 1] (or None for no labels), got {config.label_fraction}"
    )
  if config.labelled_batch_size < 0:
    raise ValueError(f"labelled_batch_size must be >= 0, got {config.labelled_batch_size}")
  if config.labelled_batch_size > 0:
    if not config.oar_weight > 0:
      raise ValueError(
        "labelled_batch_size > 0 feeds the OAR loss: set oar_weight > 0 (and label_fraction)"
      )
    if config.labelled_batch_size % num_devices:
      raise ValueError(
        f"labelled_batch_size {config.labelled_batch_size} must be "
        f"divisible by the {num_devices} devices"
      )
  if config.oar_weight > 0 and not config.label_fraction:
    raise ValueError(
      "oar_weight > 0 needs label_fraction > 0 (OAR pulls "
      "the labelled samples toward their class anchors)"
    )
  labels_in_loss = config.label_fraction is not None and config.labels_in_loss
  if config.labels_in_loss and not method.accepts_labels:
    raise ValueError(f"loss {method.name!r} cannot use labels in its target (labels_in_loss=True)")
  if method.num_views is not None and config.num_views != method.num_views:
    raise ValueError(
      f"loss {method.name!r} takes exactly {method.num_views} "
      f"views, got num_views={config.num_views}"
    )
  if config.num_views < 1 or (
    config.num_views == 1 and not (labels_in_loss and config.label_fraction == 1.0)
  ):
    raise ValueError(
      f"num_views must be >= 2 (one view is enough only when "
      f"every label is in the loss), got {config.num_views}"
    )


def registry_split(config, spec):
  """``(training examples, classes)`` of a registry dataset, from its spec."""
  fraction = config.get("validation_fraction") or 0.0
  n = spec.num_train - int(math.floor(spec.num_train * fraction))
  return n, spec.num_classes


def check_batch_fits(config, num_train: int, where: str) -> None:
  """The batch fits in the training split (less the held-out part)."""
  if num_train and config.batch_size > num_train:
    held = (
      f" after holding out validation_fraction={config.validation_fraction}"
      if config.get("validation_fraction")
      else ""
    )
    raise ValueError(
      f"batch_size {config.batch_size} exceeds the {num_train} training examples{where}{held}"
    )


def check_label_fraction(config, num_train: int, num_classes) -> None:
  """``label_fraction`` labels at least one training example per class."""
  fraction = config.label_fraction
  if fraction is None or not num_train or not num_classes:
    return
  if fraction * num_train + 1e-9 < num_classes:
    smallest = _round_up(num_classes / num_train)
    raise ValueError(
      f"label_fraction={fraction:g} labels {fraction * num_train:.3g} of the "
      f"{num_train} training examples, fewer than the {num_classes} classes; "
      f"the smallest label_fraction that works is {smallest:g}"
    )


def _round_up(x: float, digits: int = 3) -> float:
  """``x`` rounded up to ``digits`` significant digits."""
  scale = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
  return min(1.0, math.ceil(x / scale) * scale)
