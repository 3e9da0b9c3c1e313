"""Figures (matplotlib, headless): over-fusion PNGs and a training run's figures.

:func:`plot_affinity_heatmap` draws a matrix [n, n] with class boundaries
(e.g. :func:`tfjax.diagnostics.class_ordered_affinity`'s), and
:func:`plot_spectrum` one or several singular-value spectra; both check
their input (no NaN/inf, nothing empty) before writing.  Kept out of the
loop's core, :func:`training_plots` writes, into a run's work directory,

* ``loss.png`` — the logged training loss;
* ``affinity.png`` — for TransFusion, the head's adjacency of one test batch
  ordered by class; otherwise the cosine affinity of the embeddings;
* ``spectrum.png`` — the singular values of the test set's backbone features.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from tfjax import diagnostics
from tfjax.models import TransFusionHead
from tfjax.networks import ContrastiveNet

Array = jax.Array


def _figure(figsize):
  # Imported lazily (plotting is optional).  A bare Figure on the Agg canvas
  # touches neither pyplot's global state nor the user's backend.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=figsize)
  FigureCanvasAgg(fig)
  return fig, fig.add_subplot(1, 1, 1)


def _prepare_path(path) -> str:
  path = os.fspath(path)
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  return path


def plot_affinity_heatmap(
  matrix,
  labels,
  path,
  *,
  title: str = "cosine affinity (ordered by class)",
  vmin: float = -1.0,
  vmax: float = 1.0,
  cmap: str = "RdBu_r",
) -> str:
  """Writes a heatmap PNG of ``matrix`` [n, n] with class boundaries -> path.

  ``labels`` [n] are the (already ordered) row labels, e.g. the second output
  of :func:`class_ordered_affinity`; lines are drawn where the label changes.
  Colours span [vmin, vmax] ([−1, 1] for cosines; pass e.g. ``vmin=0``,
  ``vmax=a.max()``, ``cmap="magma"`` for an adjacency).  ValueError for an
  empty matrix or one with NaN/inf entries.
  """
  m = np.asarray(matrix, np.float64)
  lab = np.asarray(labels)
  if m.ndim != 2 or m.shape[0] != m.shape[1]:
    raise ValueError(f"matrix must be square [n, n], got shape {m.shape}")
  if m.size == 0:
    raise ValueError("matrix is empty: nothing to plot")
  if not np.all(np.isfinite(m)):
    raise ValueError("matrix has NaN/inf entries: the heatmap would hide them")
  if lab.shape != (m.shape[0],):
    raise ValueError(f"labels must have shape ({m.shape[0]},), got {lab.shape}")
  path = _prepare_path(path)
  fig, ax = _figure((5, 4.2))
  im = ax.imshow(m, vmin=vmin, vmax=vmax, cmap=cmap, interpolation="nearest")
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
  for b in np.nonzero(lab[1:] != lab[:-1])[0]:
    ax.axhline(b + 0.5, color="k", lw=0.5)
    ax.axvline(b + 0.5, color="k", lw=0.5)
  ax.set_title(title)
  ax.set_xlabel("sample (ordered by class)")
  ax.set_ylabel("sample (ordered by class)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path


def plot_spectrum(
  values: Union[Sequence[float], Array, Mapping[str, Union[Sequence[float], Array]]],
  path,
  *,
  title: str = "singular value spectrum",
  normalize: bool = True,
) -> str:
  """Writes a PNG of one or several singular-value spectra -> path.

  ``values`` is a 1-D array or a dict ``name -> 1-D array`` (one line each,
  with a legend).  With ``normalize`` each spectrum is shown as the share of
  energy ``s_i² / Σ s²`` on a log axis (computed as ``(s_i/max s)²`` over its
  sum, so any scale works); otherwise the raw ``s_i``.  ValueError for no
  spectrum, an empty one, or one with NaN/inf values (an empty or broken
  figure would look like a result).
  """
  series = dict(values) if isinstance(values, Mapping) else {"": values}
  if not series:
    raise ValueError("values must hold at least one spectrum")
  curves = {}
  for name, s in series.items():  # validate all before writing anything
    s = np.asarray(s, np.float64)
    if s.ndim != 1:
      raise ValueError(f"spectrum {name!r} must be 1-D, got shape {s.shape}")
    if s.size == 0:
      raise ValueError(f"spectrum {name!r} is empty: nothing to plot")
    if not np.all(np.isfinite(s)):
      raise ValueError(f"spectrum {name!r} has NaN/inf values")
    if normalize:
      top = np.max(np.abs(s))
      e = (s / top) ** 2 if top > 0 else np.zeros_like(s)
      curves[name] = e / e.sum() if top > 0 else e
    else:
      curves[name] = s
  path = _prepare_path(path)
  fig, ax = _figure((5, 3.6))
  for name, y in curves.items():
    ax.semilogy(np.arange(1, len(y) + 1), np.maximum(y, 1e-12), marker=".", label=name or None)
  ax.set_xlabel("index i")
  ax.set_ylabel("energy share $s_i^2/\\sum s^2$" if normalize else "$s_i$")
  ax.set_title(title)
  if any(series):
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path


def pyplot():
  """matplotlib.pyplot on the headless Agg backend."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def loss_curve(path: str, records, loss_name: str) -> None:
  """The ``loss`` of each logged record against its step."""
  plt = pyplot()
  points = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
  fig, ax = plt.subplots(figsize=(5, 3.2))
  ax.plot([p[0] for p in points], [p[1] for p in points])
  ax.set_xlabel("step")
  ax.set_ylabel(f"{loss_name} loss")
  ax.set_title("training loss")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def training_plots(workdir: str, state, test_source, config) -> None:
  """Loss curve, class-ordered affinity of a test batch, feature spectrum."""
  from tfjax.data.pipeline import read_batch
  from tfjax.evaluation import extract_features
  from tfjax.state import eval_model
  from tfjax.metrics import read_metrics

  records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
  if records:
    loss_curve(os.path.join(workdir, "loss.png"), records, config.loss)
  model = eval_model(state)
  n = min(len(test_source), config.batch_size)
  batch = read_batch(test_source, np.arange(n))
  _, z = model.apply(state.variables, jnp.asarray(batch["x"]))
  labels = jnp.asarray(batch["label"])
  if isinstance(model.head, TransFusionHead):
    a = model.apply(state.variables, z, method=ContrastiveNet.adjacency)
    order = jnp.argsort(labels, stable=True)
    matrix = np.asarray(a[order][:, order])
    style = dict(
      title="TransFusion adjacency (test batch, by class)",
      vmin=0.0,
      vmax=float(np.quantile(matrix, 0.99)) + 1e-12,
      cmap="magma",
    )
    ordered = labels[order]
  else:
    matrix, ordered = diagnostics.class_ordered_affinity(z, labels)
    style = dict(title="cosine affinity of embeddings (test batch, by class)")
  plot_affinity_heatmap(
    np.asarray(matrix), np.asarray(ordered), os.path.join(workdir, "affinity.png"), **style
  )
  test_f = extract_features(model, state.variables, test_source, batch_size=config.eval.batch_size)
  plot_spectrum(
    np.asarray(diagnostics.singular_values(jnp.asarray(test_f))),
    os.path.join(workdir, "spectrum.png"),
  )
