"""A finished (or running) run, loaded from its work directory.

:func:`load_run` rebuilds the network from the run's ``config.json``,
restores its newest finite checkpoint (or a given step) and returns a
:class:`tfjax.run.Run`: ``features`` [n, F] (what the probes use),
``embeddings`` [n, D], ``adjacency`` [n, n] (methods with a head) and
``source(split)``.  Loading only reads the directory (no lock, nothing moved), so a run may be
loaded while it trains.

    >>> run = tfjax.load_run("workdirs/default/transfusion/seed0")
    >>> f = run.features(x_test)                  # [n, F], numpy
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from typing import Any, Dict, List, Optional, Tuple

import jax
import numpy as np

from tfjax.run import Run
from tfjax.workdir_access import WorkdirError

__all__ = ["RunLoadError", "load_run"]


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


def restore_variables(workdir: str, step: Optional[int] = None) -> Tuple[int, Dict[str, Any]]:
  """``(step, {"params", "batch_stats"})`` of checkpoint ``step``, or of the
  newest checkpoint that restores and is finite (older ones are tried in
  turn, each skip a one-line :class:`tfjax.checkpoint.CheckpointWarning`).

  Raises :class:`RunLoadError` when there is no checkpoint, when ``step``
  is not one of them or cannot be restored, and when none can be.
  """
  from tfjax.checkpoint import CheckpointWarning, one_line

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
        f"checkpoint {step} in {where} cannot be restored ({one_line(e)})"
      ) from None
    return found["step"], {k: found[k] for k in ("params", "batch_stats")}
  skipped = []
  for candidate in reversed(steps):
    try:
      found = _restore(workdir, candidate)
    except Exception as e:  # noqa: BLE001  (any failure: try the previous one)
      skipped.append(f"step {candidate}: {one_line(e)}")
      warnings.warn(
        f"checkpoint {candidate} in {where} cannot be restored "
        f"({one_line(e)}); trying the previous one",
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
