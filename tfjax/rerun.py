"""What a rerun in a run's work directory may change.

A work directory remembers the config of its run (``config.json``).  Once
a checkpoint exists, :class:`tfjax.workdir.RunDirectory` compares the
config of a rerun with it through :func:`rerun_changes`: a field that
changes the result is refused; raising ``num_steps`` continues training;
the *free* fields (:data:`FREE_FIELDS`), which cannot change the trained
parameters, may change on any rerun.  Only the training fields (those of
:func:`tfjax.config.base_config`) are compared: an experiment's own fields
reach a run through its data, compared by fingerprint
(:func:`tfjax.data.fingerprint.data_fingerprint`).
"""

from __future__ import annotations

import difflib
import json
from typing import Any, Dict, List, Tuple

from tfjax.config import base_config

__all__ = ["FREE_FIELDS", "config_diff", "config_fields", "describe", "rerun_changes"]

# Fields whose value cannot change the trained parameters: a rerun may change
# them freely (prefixes of dotted names).
FREE_FIELDS = (
  "input",
  "log_every",
  "checkpoint_every",
  "write_plots",
  "data_dir",
  "eval",
  "compilation_cache",
)

Change = Tuple[str, Any, Any]  # (dotted field name, old value, new value)


def _training_keys() -> frozenset:
  return frozenset(base_config().keys())


def config_fields(config) -> Dict[str, Any]:
  """The training fields of ``config`` (a ConfigDict or the dict of a
  ``config.json``) as ``{dotted name: JSON value}``.

  Only the fields of :func:`tfjax.config.base_config` count: an
  experiment's own fields reach a run through its data, not its config.
  """
  if not isinstance(config, dict):
    config = json.loads(config.to_json())
  keys = _training_keys()
  return {k: v for k, v in flatten(config).items() if k.split(".")[0] in keys}


def _free(key: str) -> bool:
  return any(key == f or key.startswith(f + ".") for f in FREE_FIELDS)


_MISSING = "(absent)"


def config_diff(old: Dict[str, Any], new: Dict[str, Any]) -> Tuple[List[Change], List[Change]]:
  """``(fixed, free)``: the differing fields of two :func:`config_fields`
  dicts as ``(name, old, new)``, split into those that change the result
  and the free ones (:data:`FREE_FIELDS`).  ``num_steps`` counts as fixed
  here; :func:`rerun_changes` allows raising it.  A training field the old
  config lacks (added to :func:`tfjax.config.base_config` since) is
  unchanged when the new config holds its default.
  """
  fixed, free = [], []
  defaults = None
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key, _MISSING), new.get(key, _MISSING)
    if a == b:
      continue
    if a is _MISSING:  # a field added since the run started: its default is
      if defaults is None:  # what the run trained with
        defaults = config_fields(base_config())
      if key in defaults and defaults[key] == b:
        continue
    (free if _free(key) else fixed).append((key, a, b))
  return fixed, free


def _short(value) -> str:
  text = json.dumps(value) if value is not _MISSING else value
  return text if len(text) <= 40 else text[:37] + "..."


def rerun_changes(old, new) -> Tuple[List[Change], List[Change]]:
  """``(refused, allowed)`` changes from config ``old`` (the dict of a
  ``config.json``) to ``new``: ``allowed`` holds a raised ``num_steps``
  (first) and the free fields; ``refused`` every other differing field,
  ``num_steps`` first when it is lowered or not an integer."""
  fixed, free = config_diff(config_fields(old), config_fields(new))
  steps = [c for c in fixed if c[0] == "num_steps"]
  fixed = [c for c in fixed if c[0] != "num_steps"]
  if steps and not (
    isinstance(steps[0][2], int) and steps[0][1] != _MISSING and steps[0][2] > steps[0][1]
  ):
    fixed.insert(0, steps[0])  # only raising num_steps continues a run
    steps = []
  return fixed, steps + free


def describe(changes: List[Change]) -> str:
  """``"field old -> new; ..."`` with long values shortened."""
  return "; ".join(f"{k} {_short(a)} -> {_short(b)}" for k, a, b in changes)


# ----------------------------------------------------------------------------
# Field names.
# ----------------------------------------------------------------------------
def flatten(d, prefix: str = "") -> Dict[str, Any]:
  """``{dotted name: leaf}`` of a nested mapping (a dict or a ConfigDict);
  an empty mapping is a leaf."""
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if hasattr(v, "items") and len(v):
      out.update(flatten(v, key + "."))
    else:
      out[key] = v
  return out


def suggest_fields(name: str, config=None, n: int = 3) -> List[str]:
  """Up to ``n`` field names of ``config`` (default the training fields)
  closest to ``name`` (a dotted or a last-part name); for a dotted name,
  those under the same parent first (``head.num_layrs``: ``head.num_layers``,
  not ``deep_fusion.num_layers``)."""
  config = base_config() if config is None else config
  names = list(flatten(json.loads(config.to_json())))
  if "." not in name:
    names = sorted(set(config.keys()) | {k for k in names if "." not in k})
    return difflib.get_close_matches(name, names, n=n, cutoff=0.6)
  parent = name.rsplit(".", 1)[0] + "."
  siblings = [k for k in names if k.startswith(parent)]
  return difflib.get_close_matches(name, siblings, n=n, cutoff=0.6) or difflib.get_close_matches(
    name, names, n=n, cutoff=0.6
  )
