"""Features of a finished run's data, written to ``.npz``.

    python -m experiments.extract --workdir=workdirs/default/transfusion/seed0 \\
        --split=test [--what=features|embeddings] [--step=N] [--out=FILE.npz]

Loads the run (:func:`tfjax.load_run`: its config, network and newest
finite checkpoint, or ``--step``) and writes the backbone features (what the
probes use) or the projector's embeddings of one split of the run's own
dataset, with the labels, as arrays ``features`` (or ``embeddings``) [N, F]
and ``labels`` [N] (and ``step``).  Splits: ``train`` (what the run trained
on), ``validation`` (the part held out by ``validation_fraction``),
``test``.  Default ``--out``: ``WORKDIR/<what>_<split>.npz``.  Errors are one
line; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import os
import sys

SPLITS = ("train", "validation", "test")


def extract(workdir: str, split: str = "test", what: str = "features", out=None, step=None) -> str:
  """Writes ``what`` and the labels of ``split`` of the run in ``workdir``
  to ``out``; returns the line that says what it wrote."""
  if what not in ("features", "embeddings"):
    raise ValueError(f"--what must be 'features' or 'embeddings', got {what!r}")
  if split not in SPLITS:
    raise ValueError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
  if out is not None:
    _check_out(out)
  import numpy as np

  import tfjax
  from tfjax.data.pipeline import source_labels

  run = tfjax.load_run(workdir, step)  # a missing workdir is named first
  if out is None:
    out = os.path.join(workdir, f"{what}_{split}.npz")
    _check_out(out)
  source = run.source(split)
  values = run.features(source) if what == "features" else run.embeddings(source)
  labels = source_labels(source)
  np.savez(out, **{what: values, "labels": labels, "step": np.int64(run.step)})
  return (
    f"wrote {what} {list(values.shape)} and labels [{len(labels)}] of the "
    f"{split} split (step {run.step}) to {out}"
  )


def _check_out(out: str) -> None:
  if not out.endswith(".npz"):
    raise ValueError(f"--out must name a .npz file, got {out!r}")
  folder = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
    raise ValueError(f"--out {out!r}: directory {folder} does not exist or is not writable")


def main(argv=None):
  from absl import flags

  from experiments.common import error_line

  argv = list(sys.argv[1:] if argv is None else argv)
  fv = flags.FlagValues()
  flags.DEFINE_string(
    "workdir", None, "the run's work directory (config.json, checkpoints/)", flag_values=fv
  )
  flags.DEFINE_enum(
    "split", "test", list(SPLITS), "which split of the run's dataset", flag_values=fv
  )
  flags.DEFINE_enum(
    "what",
    "features",
    ["features", "embeddings"],
    "backbone features or projector embeddings",
    flag_values=fv,
  )
  flags.DEFINE_string(
    "out", None, "the .npz file (default WORKDIR/<what>_<split>.npz)", flag_values=fv
  )
  flags.DEFINE_integer(
    "step", None, "the checkpoint (default: the newest finite one)", flag_values=fv
  )
  flags.DEFINE_boolean("debug", False, "show the traceback of an error", flag_values=fv)
  if any(a in ("-h", "--help", "--helpfull") for a in argv):
    print(f"{__doc__}\nflags:\n{fv.get_help()}")
    return None
  try:
    fv(["experiments.extract"] + argv)
    if not fv.workdir:
      raise ValueError("--workdir is required: the run's work directory")
    line = extract(fv.workdir, fv.split, fv.what, fv.out, fv.step)
  except Exception as e:  # one line for users, the traceback with --debug
    if "--debug" in argv:
      raise
    print(f"error: {error_line(e)} (--debug for the traceback)", file=sys.stderr)
    raise SystemExit(2) from None
  print(line)
  return line


if __name__ == "__main__":
  main(sys.argv[1:])
