"""Experiment 1: how TransFusion's attention fuses a cluster, layer by layer.

    python -m experiments.fusion --config=experiments/configs/fusion.py:quick --noprogress
    python -m experiments.fusion --config=experiments/configs/fusion.py:tiny   # smoke test
    python -m experiments.fusion                                               # full size

Data: the theory's model (docs/theory.md): K unit class centres in R^d and
isotropic within-class noise of norm σ (``gaussian_clusters``).  Clusters on
a union of *linear* subspaces are no use here: a point and its negative lie
on the same subspace, but their cosine is −1, which ReLU attention ignores.
A TransFusion head (L = ``head.num_layers``) is trained on the raw vectors
(``backbone="identity"``, ``embed_dim=0``: no backbone, no projector) by the
one training loop, :func:`tfjax.train.train_and_evaluate`, with the
supervised JSD target: one view, every label in the loss, so the positives of
a row are the other points of its cluster.  For a held-out batch, at
initialisation and after training, we record per layer:

* the adjacency (heatmaps, samples ordered by cluster);
* the attention mass each row puts on its own cluster (chance = (m−1)/(n−1));
* the mass on the row's most-attended cluster, whichever it is (trained
  middle layers attend block-wise to *another* cluster: fusion by cluster
  without self-cluster attention — visible in the heatmaps);
* the within-cluster noise of the features entering each layer: the share of
  the unit-normalised features' variance that is within-cluster
  (``Σ_i ‖u_i − ū_{c(i)}‖² / Σ_i ‖u_i − ū‖²``; 1 = no cluster structure,
  0 = every cluster fused to one point).  Our measure, not the paper's.

Writes fusion_heatmaps.png, fusion_layers.png, results.md, results.json (and
the training run's files under ``WORKDIR/run``; a rerun resumes that run
from its checkpoint, a changed config or data is refused, naming what
differs, and ``--overwrite`` starts afresh).
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import cli
from experiments.report import pyplot, write_results
from tfjax.fusion_blocks import FusionBlock
from tfjax.models import TransFusionHead


def unit_centres(rng, num_classes, dim):
  c = rng.normal(size=(num_classes, dim))
  return c / np.linalg.norm(c, axis=1, keepdims=True)


def gaussian_clusters(rng, centres, sigma, n):
  """``x = μ_y + σ·ξ`` with ξ ~ N(0, I/d) (E‖ξ‖² = 1); balanced classes."""
  y = np.arange(n) % len(centres)
  x = centres[y] + sigma * rng.normal(size=(n, centres.shape[1])) / np.sqrt(centres.shape[1])
  return x.astype(np.float32), y.astype(np.int32)


def within_cluster_noise(x: np.ndarray, labels: np.ndarray) -> float:
  u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  total = ((u - u.mean(0)) ** 2).sum()
  within = sum(((u[labels == c] - u[labels == c].mean(0)) ** 2).sum() for c in np.unique(labels))
  return float(within / max(total, 1e-12))


def top_cluster_mass(a: np.ndarray, labels: np.ndarray) -> float:
  per_cluster = np.stack([a[:, labels == c].sum(1) for c in np.unique(labels)], 1)
  return float(per_cluster.max(1).mean())


def per_layer(head: TransFusionHead, params, x):
  """Features entering each layer and each layer's adjacency.

  ``head`` is the trained network's head (``eval_model(state).head``) and
  ``params`` its parameters (``state.params["head"]``).
  """
  feats, adjs = [np.asarray(x)], []
  h = x
  for i in range(head.num_layers - 1):
    block = FusionBlock(head.features, head.activation)
    h, inter = block.apply({"params": params[f"fusion_{i}"]}, h, mutable=["intermediates"])
    adjs.append(np.asarray(inter["intermediates"]["adjacency"][0]))
    feats.append(np.asarray(h))
  adjs.append(np.asarray(head.apply({"params": params}, x)))
  return feats, adjs


def make_data(config):
  """Training set (``train_batches`` batches) and one held-out batch ordered by cluster."""
  c = config.clusters
  rng = np.random.default_rng(config.seed)
  centres = unit_centres(rng, c.num_classes, c.dim)
  n = config.batch_size
  x_tr, y_tr = gaussian_clusters(rng, centres, c.sigma, config.train_batches * n)
  x_te, y_te = gaussian_clusters(rng, centres, c.sigma, n)
  order = np.argsort(y_te, kind="stable")
  return x_tr, y_tr, x_te[order], y_te[order]


def run(config, workdir: str, *, progress: bool = True):
  from tfjax import train
  from tfjax.config import validate
  from tfjax.metrics import read_metrics
  from tfjax.state import create_train_state, eval_model

  validate(config)  # before any compute
  t0 = time.time()
  x_tr, y_tr, x_te, y_te = data = make_data(config)
  k, d, sigma = config.clusters.num_classes, config.clusters.dim, config.clusters.sigma
  n_batch, layers = config.batch_size, config.head.num_layers
  x_eval = jnp.asarray(x_te)

  init = create_train_state(config, jax.random.key(config.seed), x_tr.shape[1:], k)
  stats = {"init": per_layer(eval_model(init).head, init.params["head"], x_eval)}
  res = train.train_and_evaluate(config, os.path.join(workdir, "run"), data=data, progress=progress)
  state = res["state"]
  for r in read_metrics(os.path.join(workdir, "run", "metrics.jsonl")):
    print(f"step {r['step']:4d}  JSD {r['loss']:.4f}", flush=True)
  stats["trained"] = per_layer(eval_model(state).head, state.params["head"], x_eval)

  same = y_te[:, None] == y_te[None, :]
  chance = float(((same.sum(1) - 1) / (n_batch - 1)).mean())
  rows = []
  for name, (feats, adjs) in stats.items():
    for layer, a in enumerate(adjs, start=1):
      rows.append(
        {
          "model": name,
          "layer": layer,
          "mass_within": float((a * same).sum(1).mean()),
          "mass_between": float((a * ~same).sum(1).mean()),
          "mass_top_cluster": top_cluster_mass(a, y_te),
          "noise_in": within_cluster_noise(feats[layer - 1], y_te),
        }
      )
  for name in stats:  # noise of the transductive features X_{L-1}
    rows.append(
      {
        "model": name,
        "layer": "out",
        "mass_within": "",
        "mass_between": "",
        "mass_top_cluster": "",
        "noise_in": within_cluster_noise(stats[name][0][-1], y_te),
      }
    )

  plot_heatmaps(os.path.join(workdir, "fusion_heatmaps.png"), stats, layers)
  plot_layers(os.path.join(workdir, "fusion_layers.png"), stats, rows, y_te, chance)
  table = write_results(
    workdir,
    f"Fusion on {k} Gaussian clusters (d={d}, noise norm σ={sigma}), "
    f"batch {n_batch}, {config.num_steps} steps",
    rows,
    ["model", "layer", "mass_within", "mass_between", "mass_top_cluster", "noise_in"],
    f"Chance within-cluster mass: {chance:.3f}. Final training JSD "
    f"{res['final_loss']:.4f}. Time {time.time() - t0:.0f} s.",
  )
  print(table)
  return rows


def plot_heatmaps(path, stats, layers):
  plt = pyplot()
  fig, axes = plt.subplots(2, layers, figsize=(2.3 * layers + 0.8, 4.8), squeeze=False)
  for row, name in enumerate(stats):
    for layer, a in enumerate(stats[name][1]):
      ax = axes[row, layer]
      im = ax.imshow(
        a, cmap="magma", vmin=0, vmax=np.quantile(a, 0.99) + 1e-9, interpolation="nearest"
      )
      ax.set_xticks([]), ax.set_yticks([])
      ax.set_title(f"{name}: layer {layer + 1}", fontsize=8)
      cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
      cb.ax.tick_params(labelsize=6)
      if layer == layers - 1:
        cb.set_label("attention weight", fontsize=7)
  fig.suptitle(
    "adjacency per layer (held-out batch ordered by cluster; "
    "colour scale per panel, clipped at its 99th percentile)",
    fontsize=9,
  )
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_layers(path, stats, rows, labels, chance):
  plt = pyplot()
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.4))
  for name in stats:
    rs = [r for r in rows if r["model"] == name and r["layer"] != "out"]
    a1.plot([r["layer"] for r in rs], [r["mass_within"] for r in rs], "o-", label=name)
    a2.plot(
      range(len(stats[name][0])),
      [within_cluster_noise(f, labels) for f in stats[name][0]],
      "o-",
      label=name,
    )
  a1.axhline(chance, color="gray", ls="--", label="chance")
  a1.set_xlabel("layer"), a1.set_ylabel("attention mass within cluster")
  a1.set_title("own-cluster attention", fontsize=9)
  a1.set_ylim(0, 1.02)
  a2.set_xlabel("features after layer (0 = input)")
  a2.set_ylabel("within-cluster share of variance")
  a2.set_title("within-cluster noise of the features", fontsize=9)
  a2.set_ylim(0, 1.02)
  handles, names = a1.get_legend_handles_labels()
  fig.legend(
    handles, names, fontsize=8, loc="lower center", ncol=len(names), bbox_to_anchor=(0.5, 0.0)
  )
  fig.tight_layout(rect=(0, 0.08, 1, 1))
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv=None):
  return cli(run, "fusion", argv, __doc__)


if __name__ == "__main__":
  main(sys.argv[1:])
