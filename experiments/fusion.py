"""Experiment 1: how TransFusion's attention fuses a cluster, layer by layer.

    python -m experiments.fusion --quick        # ~1 min on a 2-core CPU
    python -m experiments.fusion                # full size

Data: the theory's model (docs/theory.md): K unit class centres in R^d and
isotropic within-class noise of norm σ (``gaussian_clusters``).  Clusters on
a union of *linear* subspaces are no use here: a point and its negative lie
on the same subspace, but their cosine is −1, which ReLU attention ignores.  A TransFusionHead (L = 5) is trained on raw vectors with
the supervised JSD target (positives = same cluster).  For a held-out batch,
at initialisation and after training, we record per layer:

* the adjacency (heatmaps, samples ordered by cluster);
* the attention mass each row puts on its own cluster (chance = (m−1)/(n−1));
* the mass on the row's most-attended cluster, whichever it is (trained
  middle layers attend block-wise to *another* cluster: fusion by cluster
  without self-cluster attention — visible in the heatmaps);
* the within-cluster noise of the features entering each layer: the share of
  the unit-normalised features' variance that is within-cluster
  (``Σ_i ‖u_i − ū_{c(i)}‖² / Σ_i ‖u_i − ū‖²``; 1 = no cluster structure,
  0 = every cluster fused to one point).  Our measure, not the paper's.

Writes fusion_heatmaps.png, fusion_layers.png, results.md, results.json.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.common import pyplot, workdir_for, write_results
from tfjax.models import FusionBlock, TransFusionHead


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
  within = sum(((u[labels == c] - u[labels == c].mean(0)) ** 2).sum()
               for c in np.unique(labels))
  return float(within / max(total, 1e-12))


def top_cluster_mass(a: np.ndarray, labels: np.ndarray) -> float:
  per_cluster = np.stack([a[:, labels == c].sum(1) for c in np.unique(labels)], 1)
  return float(per_cluster.max(1).mean())


def per_layer(head: TransFusionHead, params, x):
  """Features entering each layer and each layer's adjacency."""
  feats, adjs = [np.asarray(x)], []
  h = x
  for i in range(head.num_layers - 1):
    block = FusionBlock(head.features, head.activation)
    h, inter = block.apply({"params": params[f"fusion_{i}"]}, h,
                           mutable=["intermediates"])
    adjs.append(np.asarray(inter["intermediates"]["adjacency"][0]))
    feats.append(np.asarray(h))
  adjs.append(np.asarray(head.apply({"params": params}, x)))
  return feats, adjs


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true")
  p.add_argument("--workdir", default=None)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  workdir = workdir_for("fusion", args.workdir)
  k, d, sigma = (4, 32, 1.5) if args.quick else (10, 64, 1.5)
  n_batch, steps, layers = (64, 200, 5) if args.quick else (200, 600, 5)
  data_rng = np.random.default_rng(args.seed)
  centres = unit_centres(data_rng, k, d)
  x_tr, y_tr = gaussian_clusters(data_rng, centres, sigma, 20 * n_batch)
  x_te, y_te = gaussian_clusters(data_rng, centres, sigma, n_batch)
  order = np.argsort(y_te, kind="stable")
  x_te, y_te = x_te[order], y_te[order]

  head = TransFusionHead(num_layers=layers)
  params = head.init(jax.random.key(args.seed), jnp.asarray(x_te))["params"]
  opt = optax.adam(3e-3)
  opt_state = opt.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    loss, g = jax.value_and_grad(lambda p: head.apply(
        {"params": p}, x, y, method=TransFusionHead.loss))(params)
    updates, opt_state = opt.update(g, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  stats = {}
  t0 = time.time()
  stats["init"] = per_layer(head, params, jnp.asarray(x_te))
  rng = np.random.default_rng(args.seed)
  for s in range(steps):
    idx = rng.choice(len(x_tr), n_batch, replace=False)
    params, opt_state, loss = step(params, opt_state, x_tr[idx], y_tr[idx])
    if s % 50 == 0 or s == steps - 1:
      print(f"step {s:4d}  JSD {float(loss):.4f}", flush=True)
  stats["trained"] = per_layer(head, params, jnp.asarray(x_te))

  same = y_te[:, None] == y_te[None, :]
  chance = float(((same.sum(1) - 1) / (n_batch - 1)).mean())
  rows = []
  for name, (feats, adjs) in stats.items():
    for layer, a in enumerate(adjs, start=1):
      rows.append({"model": name, "layer": layer,
                   "mass_within": float((a * same).sum(1).mean()),
                   "mass_between": float((a * ~same).sum(1).mean()),
                   "mass_top_cluster": top_cluster_mass(a, y_te),
                   "noise_in": within_cluster_noise(feats[layer - 1], y_te)})
  for name in stats:  # noise of the transductive features X_{L-1}
    rows.append({"model": name, "layer": "out", "mass_within": "",
                 "mass_between": "",
                 "noise_in": within_cluster_noise(stats[name][0][-1], y_te)})

  plt = pyplot()
  fig, axes = plt.subplots(2, layers, figsize=(2.3 * layers, 4.8))
  for row, name in enumerate(stats):
    for layer, a in enumerate(stats[name][1]):
      ax = axes[row, layer]
      ax.imshow(a, cmap="magma", vmin=0, vmax=np.quantile(a, 0.99) + 1e-9)
      ax.set_xticks([]), ax.set_yticks([])
      ax.set_title(f"{name}: layer {layer + 1}", fontsize=8)
  fig.suptitle("adjacency per layer (held-out batch ordered by cluster)", fontsize=9)
  fig.tight_layout()
  fig.savefig(f"{workdir}/fusion_heatmaps.png", dpi=100)
  plt.close(fig)

  fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.2))
  for name in stats:
    rs = [r for r in rows if r["model"] == name and r["layer"] != "out"]
    a1.plot([r["layer"] for r in rs], [r["mass_within"] for r in rs], "o-", label=name)
    a2.plot(range(len(stats[name][0])),
            [within_cluster_noise(f, y_te) for f in stats[name][0]], "o-", label=name)
  a1.axhline(chance, color="gray", ls="--", label="chance")
  a1.set_xlabel("layer"), a1.set_ylabel("attention mass within cluster")
  a1.set_ylim(0, 1.02), a1.legend(fontsize=8)
  a2.set_xlabel("features after layer (0 = input)")
  a2.set_ylabel("within-cluster share of variance")
  a2.set_ylim(0, 1.02), a2.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(f"{workdir}/fusion_layers.png", dpi=100)
  plt.close(fig)

  table = write_results(
      workdir, f"Fusion on {k} Gaussian clusters (d={d}, noise norm σ={sigma}), "
      f"batch {n_batch}, {steps} steps", rows,
      ["model", "layer", "mass_within", "mass_between", "mass_top_cluster",
       "noise_in"],
      f"Chance within-cluster mass: {chance:.3f}. Time {time.time() - t0:.0f} s.")
  print(table)
  return rows


if __name__ == "__main__":
  main(sys.argv[1:])
