"""Figures of a training run (matplotlib, headless): kept out of the loop's core.

:func:`training_plots` writes, into a run's work directory,

* ``loss.png`` — the logged training loss;
* ``affinity.png`` — for TransFusion, the head's adjacency of one test batch
  ordered by class; otherwise the cosine affinity of the embeddings;
* ``spectrum.png`` — the singular values of the test set's backbone features.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np

from tfjax import diagnostics
from tfjax.models import TransFusionHead
from tfjax.networks import ContrastiveNet


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
  diagnostics.plot_affinity_heatmap(
    np.asarray(matrix), np.asarray(ordered), os.path.join(workdir, "affinity.png"), **style
  )
  test_f = extract_features(model, state.variables, test_source, batch_size=config.eval.batch_size)
  diagnostics.plot_spectrum(
    np.asarray(diagnostics.singular_values(jnp.asarray(test_f))),
    os.path.join(workdir, "spectrum.png"),
  )
