"""A finished (or running) run, loaded from its work directory.

:func:`load_run` rebuilds the network from the run's ``config.json``,
restores its newest finite checkpoint (or a given step) and returns a
:class:`Run`: ``features`` [n, F] (what the probes use), ``embeddings``
[n, D], ``adjacency`` [n, n] (methods with a head) and ``source(split)``.
Loading only reads the directory (no lock, nothing moved), so a run may be
loaded while it trains.

    >>> run = tfjax.load_run("workdirs/default/transfusion/seed0")
    >>> f = run.features(x_test)                  # [n, F], numpy
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import warnings
from typing import Any, Dict, List, Optional, Tuple

import jax
import numpy as np

from tfjax.workdir import WorkdirError

__all__ = ["Run", "RunLoadError", "load_run", "SPLITS"]
SPLITS = ("train", "validation", "test")


class RunLoadError(WorkdirError):
  """The directory holds no run that can be loaded (the message says why)."""


# ----------------------------------------------------------------------------
# The remembered config.
# ----------------------------------------------------------------------------
def _tuples(value):
  """JSON lists back to tuples (what the config fields hold), recursively."""
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def _merged(defaults, saved: Dict[str, Any]) -> Dict[str, Any]:
  """``saved`` over the ConfigDict ``defaults`` (a field config.json lacks
  takes its default); :data:`OWN_FIELDS` blocks are kept as saved."""
  import ml_collections

  out = {}
  for key in defaults.keys():
    default, value = defaults[key], saved.get(key, _ABSENT)
    nested = isinstance(default, ml_collections.ConfigDict)
    if value is _ABSENT:
      out[key] = default.to_dict() if nested else default
    elif nested and key not in OWN_FIELDS and isinstance(value, dict):
      out[key] = _merged(default, value)
    else:
      out[key] = value
  out.update({k: v for k, v in saved.items() if k not in out})
  return out


_ABSENT = object()
# Blocks whose fields belong to the chosen backbone or method.
OWN_FIELDS = ("backbone_kwargs", "loss_options")


def read_config(workdir: str):
  """The run's config (``WORKDIR/config.json``) as a locked ConfigDict.

  Raises :class:`RunLoadError` naming the file (missing, not a JSON object)
  or the field (:func:`tfjax.config.validate`'s checks).
  """
  import ml_collections

  from tfjax.config import base_config, validate

  path = os.path.join(workdir, "config.json")
  try:
    with open(path) as f:
      saved = json.load(f)
  except FileNotFoundError:
    raise RunLoadError(
      f"{path} is missing: the run's network cannot be rebuilt without its config"
    ) from None
  except (OSError, ValueError) as e:
    raise RunLoadError(f"{path} cannot be read as JSON ({' '.join(str(e).split())})") from None
  if not isinstance(saved, dict):
    raise RunLoadError(f"{path} holds a JSON {type(saved).__name__}, not a config object")
  config = ml_collections.ConfigDict(_tuples(_merged(base_config(), saved)))
  try:
    validate(config, 1, check_data=False)
  except (ValueError, TypeError, KeyError, AttributeError) as e:
    text = e.args[0] if isinstance(e, KeyError) and e.args else e
    raise RunLoadError(f"{path}: {' '.join(str(text).split())}") from None
  config.lock()
  return config


# ----------------------------------------------------------------------------
# Checkpoints, read only.
# ----------------------------------------------------------------------------
def checkpoint_steps(workdir: str) -> List[int]:
  """The completed checkpoint steps under ``WORKDIR/checkpoints``, ascending.

  Orbax writes a checkpoint under a temporary name and renames it to its
  step when complete, so only directories named by a number count.
  """
  root = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(root):
    return []
  return sorted(
    int(d) for d in os.listdir(root) if d.isdigit() and os.path.isdir(os.path.join(root, d))
  )


def _restore(workdir: str, step: int) -> Dict[str, Any]:
  """Checkpoint ``step`` as saved (nested dicts of numpy arrays), without a
  template: the input shape the run trained on is not needed."""
  import orbax.checkpoint as ocp

  from tfjax.checkpoint import nonfinite_leaves

  path = os.path.join(os.path.abspath(workdir), "checkpoints", str(step), "default")
  with ocp.StandardCheckpointer() as checkpointer:
    tree = checkpointer.restore(path)
  if not isinstance(tree, dict) or not {"params", "step"} <= set(tree):
    raise ValueError(f"holds no training state (keys {sorted(tree)})")
  kept = {"params": tree["params"], "batch_stats": tree.get("batch_stats") or {}}
  bad = nonfinite_leaves(kept)
  if bad:
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    raise FloatingPointError(f"{', '.join(bad[:3])}{more} not finite")
  return {"step": int(tree["step"]), **kept}


def _one_line(error: BaseException) -> str:
  text = " ".join(str(error).split())
  text = text if len(text) <= 200 else text[:197] + "..."
  return f"{type(error).__name__}: {text}"


def restore_variables(workdir: str, step: Optional[int] = None) -> Tuple[int, Dict[str, Any]]:
  """``(step, {"params", "batch_stats"})`` of checkpoint ``step``, or of the
  newest checkpoint that restores and is finite (older ones are tried in
  turn, each skip a one-line :class:`tfjax.checkpoint.CheckpointWarning`).

  Raises :class:`RunLoadError` when there is no checkpoint, when ``step``
  is not one of them or cannot be restored, and when none can be.
  """
  from tfjax.checkpoint import CheckpointWarning

  steps = checkpoint_steps(workdir)
  where = os.path.join(workdir, "checkpoints")
  if not steps:
    raise RunLoadError(
      f"{where} holds no checkpoint: the run has not reached its first checkpoint_every steps"
    )
  if step is not None:
    if (
      isinstance(step, bool) or not isinstance(step, (int, np.integer)) or (int(step) not in steps)
    ):
      raise RunLoadError(f"{where} has no checkpoint at step {step!r}; it has steps {steps}")
    try:
      found = _restore(workdir, int(step))
    except Exception as e:  # noqa: BLE001  (any failure: one line)
      raise RunLoadError(
        f"checkpoint {step} in {where} cannot be restored ({_one_line(e)})"
      ) from None
    return found["step"], {k: found[k] for k in ("params", "batch_stats")}
  skipped = []
  for candidate in reversed(steps):
    try:
      found = _restore(workdir, candidate)
    except Exception as e:  # noqa: BLE001  (any failure: try the previous one)
      skipped.append(f"step {candidate}: {_one_line(e)}")
      warnings.warn(
        f"checkpoint {candidate} in {where} cannot be restored "
        f"({_one_line(e)}); trying the previous one",
        CheckpointWarning,
        stacklevel=3,
      )
      continue
    return found["step"], {k: found[k] for k in ("params", "batch_stats")}
  raise RunLoadError(f"no checkpoint in {where} can be restored (" + "; ".join(skipped) + ")")


def _check_structure(path: str, model, variables, x_shape) -> None:
  """The checkpoint's parameter names are those of the network config.json
  describes (names do not depend on the input shape: the registry
  dataset's serves, also for a run on data passed as arrays)."""
  from tfjax.networks import ContrastiveNet

  dummy = jax.ShapeDtypeStruct((4,) + tuple(x_shape), np.float32)
  try:
    expected = jax.eval_shape(
      functools.partial(model.init, method=ContrastiveNet.init_all), jax.random.key(0), dummy
    )
  except Exception:  # noqa: BLE001  (a backbone made for other inputs)
    return
  expected = {"params": expected["params"], "batch_stats": expected.get("batch_stats", {})}
  names = lambda tree: {
    "/".join(str(getattr(k, "key", k)) for k in p)  # noqa: E731
    for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
  }
  want, have = names(expected), names(variables)
  missing, extra = sorted(want - have), sorted(have - want)
  if missing or extra:
    raise RunLoadError(
      f"{path}: the checkpoint's parameters do not match the network of "
      f"config.json (missing: {_few(missing)}; unexpected: {_few(extra)})"
    )


def _few(names: List[str], n: int = 3) -> str:
  if not names:
    return "none"
  more = f" and {len(names) - n} more" if len(names) > n else ""
  return ", ".join(names[:n]) + more


# ----------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------
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
          f"({_one_line(e)})"
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
    x = self._check_x(x, "Run.adjacency")
    if not hasattr(x, "shape"):
      raise ValueError("Run.adjacency expects one batch as an array [n, ...], not a source")
    try:
      return self._adjacency_fn(self.variables, x)
    except Exception as e:  # noqa: BLE001
      if _is_shape_error(e):
        raise ValueError(
          f"Run.adjacency: the network of {self.workdir} cannot "
          f"take inputs of shape {tuple(x.shape)} ({_one_line(e)})"
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


def load_run(workdir: str, step: Optional[int] = None) -> Run:
  """Loads the run in ``workdir`` (written by ``tfjax.train.train_and_evaluate``).

  Rebuilds the network from ``config.json`` and restores the parameters and
  BatchNorm statistics of checkpoint ``step`` (default: the newest one that
  restores and is finite).  Only reads the directory.

  Raises :class:`RunLoadError` (one line naming the path) when ``workdir``
  is not a directory or holds no run, when ``config.json`` is missing or
  corrupt, when there is no checkpoint (or not ``step``), and when the
  checkpoint does not match the config's network.
  """
  from tfjax.data.registry import get_dataset_spec
  from tfjax.state import build_network

  workdir = os.fspath(workdir)
  if not os.path.isdir(workdir):
    raise RunLoadError(
      f"{workdir} is not a directory" if os.path.exists(workdir) else f"{workdir} does not exist"
    )
  has_config = os.path.isfile(os.path.join(workdir, "config.json"))
  if not has_config and not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise RunLoadError(f"{workdir} is not a run directory (no config.json and no checkpoints/)")
  config = read_config(workdir)
  step, variables = restore_variables(workdir, step)
  model = build_network(config, None)
  _check_structure(workdir, model, variables, get_dataset_spec(config.dataset).x_shape)
  variables = jax.tree.map(jax.numpy.asarray, variables)
  return Run(workdir=workdir, config=config, model=model, variables=variables, step=step)
