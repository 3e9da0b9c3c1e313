"""A trained run: its config, network and variables, applied to data.

A :class:`Run` (what :func:`tfjax.loading.load_run` returns) gives
``features`` [n, F] (what the probes use), ``embeddings`` [n, D],
``adjacency`` [n, n] (methods with a head) and ``source(split)``, the run's
own data.

    >>> run = tfjax.load_run("workdirs/default/transfusion/seed0")
    >>> f = run.features(x_test)                  # [n, F], numpy
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Dict

import jax
import numpy as np

__all__ = ["Run", "SPLITS"]
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
  """A trained run: its config, network (applied in eval mode) and variables.

  Attributes:
    workdir: the work directory it was loaded from.
    config: the run's config (``config.json``), a locked ConfigDict.
    model: the :class:`tfjax.networks.ContrastiveNet` it trained (no pmap
      axis; applied with ``train=False``: BatchNorm uses its statistics).
    variables: ``{"params", "batch_stats"}`` of checkpoint ``step``.
    step: the training step of the checkpoint.

  :meth:`features` and :meth:`embeddings` are inductive (a sample's row does
  not depend on the others) and run in batches of ``config.eval.batch_size``
  through the jitted function the run's own evaluation uses
  (:func:`tfjax.evaluation.extract_features`), so they give exactly its
  numbers.  Inside a caller's ``jax.jit`` they apply the network directly.
  """

  workdir: str
  config: Any
  model: Any
  variables: Dict[str, Any]
  step: int

  def _check_x(self, x, what: str):
    """``x`` [n, ...] with the run's input shape, checked before compute."""
    if isinstance(x, jax.core.Tracer):
      return x
    if not hasattr(x, "shape") and hasattr(x, "__getitem__") and hasattr(x, "x_shape"):
      return x  # a random-access source (tfjax.data.pipeline)
    x = np.asarray(x) if not isinstance(x, jax.Array) else x
    if not np.issubdtype(x.dtype, np.number) or x.ndim < 2:
      raise ValueError(
        f"{what} expects inputs [n, ...] of numbers, got an "
        f"array of shape {x.shape} and dtype {x.dtype}"
      )
    return x

  def _apply(self, x, embeddings: bool):
    from tfjax import evaluation
    from tfjax.checkpoint import one_line
    from tfjax.networks import ContrastiveNet

    name = "embeddings" if embeddings else "features"
    x = self._check_x(x, f"Run.{name}")
    if isinstance(x, jax.core.Tracer):
      if embeddings:
        return self.model.apply(self.variables, x)[1]
      return self.model.apply(self.variables, x, method=ContrastiveNet.features)
    try:
      return evaluation.extract_features(
        self.model, self.variables, x, batch_size=self.config.eval.batch_size, embeddings=embeddings
      )
    except Exception as e:  # noqa: BLE001  (a shape the network cannot take)
      if _is_shape_error(e):
        raise ValueError(
          f"Run.{name}: the network of {self.workdir} cannot "
          f"take inputs of shape {tuple(np.shape(x))} "
          f"({one_line(e)})"
        ) from None
      raise

  def features(self, x) -> np.ndarray:
    """Backbone features [n, F] of ``x`` [n, ...] (an array or a source)."""
    return self._apply(x, embeddings=False)

  def embeddings(self, x) -> np.ndarray:
    """Projector embeddings [n, D] of ``x`` [n, ...] (the features when the
    run has no projector, ``embed_dim = 0``)."""
    return self._apply(x, embeddings=True)

  @functools.cached_property
  def _adjacency_fn(self):
    from tfjax.networks import ContrastiveNet

    model = self.model

    def adjacency(variables, x):
      _, z = model.apply(variables, x)
      return model.apply(variables, z, method=ContrastiveNet.adjacency)

    return jax.jit(adjacency)

  def adjacency(self, x) -> jax.Array:
    """The TransFusion head's adjacency [n, n] of the batch ``x`` [n, ...].

    Transductive: row i depends on every sample of ``x`` (one batch, as in
    training); rows sum to 1 and the diagonal is 0.  Raises ValueError for
    a run whose method has no head.
    """
    if self.model.head is None:
      raise ValueError(
        f"Run.adjacency: the run in {self.workdir} trains "
        f"{self.config.loss!r}, a method without a TransFusion "
        "head; use Run.features or Run.embeddings"
      )
    from tfjax.checkpoint import one_line

    x = self._check_x(x, "Run.adjacency")
    if not hasattr(x, "shape"):
      raise ValueError("Run.adjacency expects one batch as an array [n, ...], not a source")
    try:
      return self._adjacency_fn(self.variables, x)
    except Exception as e:  # noqa: BLE001
      if _is_shape_error(e):
        raise ValueError(
          f"Run.adjacency: the network of {self.workdir} cannot "
          f"take inputs of shape {tuple(x.shape)} ({one_line(e)})"
        ) from None
      raise

  def source(self, split: str):
    """The run's own data: a random-access source of split ``split``.

    ``"train"`` is the part the run trained on (the training split less the
    held-out part when ``config.validation_fraction`` is set),
    ``"validation"`` that held-out part (only then), ``"test"`` the test
    split.  Labels: ``tfjax.data.pipeline.source_labels(source)``.  Raises
    ValueError when the data differs from the run's (``run.json``'s data
    fingerprint; a run trained on arrays passed to
    ``train_and_evaluate(data=...)`` has no registry split).
    """
    from tfjax.data import pipeline
    from tfjax.data.registry import config_dataset_spec
    from tfjax.data.splits import check_prepared, open_splits

    if split not in SPLITS:
      raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    held_out = self.config.get("validation_fraction")
    if split == "validation" and not held_out:
      raise ValueError(
        f"split 'validation' needs a run with "
        f"validation_fraction; the run in {self.workdir} has none"
      )
    spec = config_dataset_spec(self.config)
    check_prepared(spec, self.config.get("data_dir"))
    train, evaluated = open_splits(self.config, spec)
    self._check_fingerprint(train, evaluated)
    if split == "train":
      return train
    if split == "validation":
      return evaluated
    return (
      pipeline.open_source(self.config.dataset, spec.test_split, data_dir=self.config.data_dir)
      if held_out
      else evaluated
    )

  def _check_fingerprint(self, train, evaluated) -> None:
    from tfjax.data.fingerprint import data_fingerprint

    path = os.path.join(self.workdir, "run.json")
    try:
      with open(path) as f:
        recorded = json.load(f).get("data_fingerprint")
    except (OSError, ValueError, AttributeError):
      return  # no record to compare with
    if recorded and recorded != data_fingerprint(train, evaluated):
      raise ValueError(
        f"the run in {self.workdir} trained on other data than dataset "
        f"{self.config.dataset!r}'s splits (run.json's data fingerprint "
        "differs: data passed as arrays, or another generator setting)"
      )


def _is_shape_error(e: BaseException) -> bool:
  from flax.errors import FlaxError

  return isinstance(e, (FlaxError, TypeError, ValueError))
