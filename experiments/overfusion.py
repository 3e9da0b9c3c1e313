"""CLOA's 3-D over-fusion example: three lines in R³, negation augmentation.

    python -m experiments.overfusion --quick     # ~1 min on a 2-core CPU
    python -m experiments.overfusion             # full size (3 seeds)

Data: three rank-1 subspaces (lines through the origin) in R³ with random
unit directions ``u_k`` (seeded; our choice, the paper does not give them),
``x = t·u_k + ε`` with ``t ~ N(0, 1)`` and ``ε ~ N(0, σ²I/3)``, balanced
classes.  Augmentation (SPEC §7): ``x → s·x + η`` with a random sign
``s = ±1`` (probability ½ each) and ``η ~ N(0, σ_aug² I/3)``.

Encoder: ``tfjax.backbones.MLP(hidden=(h, h), out_features=3,
batch_norm=True)`` — three Dense layers, ReLU and BatchNorm between them —
straight to 3-D embeddings (no projector), trained with Adam (our choice)
on each base loss of ``tfjax.losses`` (InfoNCE, DCL, VICReg, Barlow Twins),
each without and with OAR (``orthonormal_anchors(key, 3, 3)`` and
``oar_loss`` on a fixed class-balanced 10 % labelled subset, label −1
elsewhere, weight 1).  Every run of a seed starts from the same
initialisation and sees the same batches and views.

Measured on held-out points, with the encoder in eval mode (BatchNorm
running averages), on the L2-normalised embeddings:

* ``variance`` — ``tfjax.diagnostics.embedding_variance`` (0 = one point);
* ``rank95`` — rank at 95 % energy (1 = all on one line ±z*);
* ``class_var`` — mean within-class variance;
* ``knn`` — cosine 10-NN majority-vote accuracy against the training
  embeddings (all training labels; chance 1/3);
* ``anchor_acc`` — OAR runs only: accuracy of the nearest anchor.

Writes overfusion_embeddings.png (3-D scatter per run, first seed),
overfusion_variance.png, results.md, results.json.
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
from tfjax import diagnostics, losses
from tfjax.backbones import MLP

BASE_LOSSES = ("info_nce", "dcl", "vicreg", "barlow_twins")
NUM_CLASSES = 3
DIM = 3


def make_lines(rng: np.random.Generator, n: int, directions: np.ndarray,
               noise: float) -> tuple[np.ndarray, np.ndarray]:
  """``n`` points ``t·u_y + ε`` on the lines ``directions`` [k, 3]; balanced."""
  k = len(directions)
  y = rng.permutation(np.arange(n) % k)
  t = rng.normal(size=(n, 1))
  x = t * directions[y] + noise * rng.normal(size=(n, DIM)) / np.sqrt(DIM)
  return x.astype(np.float32), y.astype(np.int32)


def augment(key, x, noise):
  """Random negation (prob ½) plus Gaussian noise of norm ≈ ``noise``: [n, 3]."""
  k1, k2 = jax.random.split(key)
  sign = jnp.where(jax.random.bernoulli(k1, 0.5, (x.shape[0], 1)), -1.0, 1.0)
  return sign * x + noise * jax.random.normal(k2, x.shape) / np.sqrt(DIM)


def base_loss(name: str, z1, z2, temperature: float):
  if name == "info_nce":
    return losses.info_nce(z1, z2, temperature=temperature)
  if name == "dcl":
    return losses.dcl(z1, z2, temperature=temperature)
  if name == "vicreg":
    return losses.vicreg(z1, z2)
  if name == "barlow_twins":
    return losses.barlow_twins(z1, z2)
  raise ValueError(f"unknown base loss {name!r}; choose from {BASE_LOSSES}")


def knn_accuracy(train_z, train_y, test_z, test_y, k: int = 10) -> float:
  """Cosine k-NN majority vote (ties: lowest class), numpy."""
  a = train_z / np.maximum(np.linalg.norm(train_z, axis=1, keepdims=True), 1e-12)
  b = test_z / np.maximum(np.linalg.norm(test_z, axis=1, keepdims=True), 1e-12)
  nn_idx = np.argsort(-(b @ a.T), axis=1)[:, :k]
  votes = np.zeros((len(b), NUM_CLASSES))
  np.add.at(votes, (np.arange(len(b))[:, None], train_y[nn_idx]), 1.0)
  return float((votes.argmax(1) == test_y).mean())


def train_run(loss_name: str, oar: bool, data: dict, args, seed: int):
  """Trains one encoder; returns (train embeddings, test embeddings, anchors)."""
  model = MLP(hidden=(args.hidden, args.hidden), out_features=DIM,
              batch_norm=True)
  x_tr = jnp.asarray(data["x_train"])
  semi = jnp.asarray(data["semi"])
  variables = model.init(jax.random.key(seed), x_tr[:2])
  params, stats = variables["params"], variables["batch_stats"]
  anchors = losses.orthonormal_anchors(jax.random.key(seed + 1000), NUM_CLASSES, DIM)
  if args.optimizer == "adam":
    tx = optax.adam(args.lr)
  else:  # SGD with momentum 0.9 (our choice)
    tx = optax.sgd(args.lr, momentum=0.9)
  opt_state = tx.init(params)
  weight = 1.0 if oar else 0.0

  def loss_fn(p, stats, x1, x2, y):
    both, new = model.apply({"params": p, "batch_stats": stats},
                            jnp.concatenate([x1, x2]), train=True,
                            mutable=["batch_stats"])
    z1, z2 = jnp.split(both, 2)
    base = base_loss(loss_name, z1, z2, args.temperature)
    reg = losses.oar_loss(both, jnp.concatenate([y, y]), anchors)
    return base + weight * reg, new["batch_stats"]

  def step(carry, key):
    p, stats, opt_state = carry
    k_idx, k1, k2 = jax.random.split(key, 3)
    idx = jax.random.choice(k_idx, x_tr.shape[0], (args.batch,), replace=False)
    x, y = x_tr[idx], semi[idx]
    (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(
        p, stats, augment(k1, x, args.aug_noise), augment(k2, x, args.aug_noise), y)
    updates, opt_state = tx.update(g, opt_state, p)
    return (optax.apply_updates(p, updates), stats, opt_state), loss

  @jax.jit
  def run(p, stats, opt_state):
    keys = jax.random.split(jax.random.key(seed + 2000), args.steps)
    return jax.lax.scan(step, (p, stats, opt_state), keys)

  (params, stats, _), loss_curve = run(params, stats, opt_state)
  loss_curve = np.asarray(loss_curve)
  if not np.all(np.isfinite(loss_curve)):
    raise FloatingPointError(f"{loss_name} (oar={oar}): non-finite loss")
  embed = jax.jit(lambda x: model.apply({"params": params, "batch_stats": stats}, x))
  return (np.asarray(embed(x_tr)), np.asarray(embed(jnp.asarray(data["x_test"]))),
          np.asarray(anchors), loss_curve)


def make_data(args, seed: int) -> dict:
  rng = np.random.default_rng(seed)
  d = rng.normal(size=(NUM_CLASSES, DIM))
  d /= np.linalg.norm(d, axis=1, keepdims=True)
  x_tr, y_tr = make_lines(rng, args.n_train, d, args.noise)
  x_te, y_te = make_lines(rng, args.n_test, d, args.noise)
  semi = np.full_like(y_tr, -1)
  for c in range(NUM_CLASSES):  # class-balanced 10 % labelled subset
    idx = np.flatnonzero(y_tr == c)
    pick = rng.choice(idx, max(1, int(round(args.label_fraction * len(idx)))),
                      replace=False)
    semi[pick] = c
  cos = np.abs(d @ d.T)[np.triu_indices(NUM_CLASSES, 1)]
  angles = np.degrees(np.arccos(np.clip(cos, 0, 1)))
  return dict(x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, semi=semi,
              directions=d, angles=angles)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="~1-2 min: 1 seed, 400 steps")
  p.add_argument("--tiny", action="store_true", help="smoke test size (seconds)")
  p.add_argument("--workdir", default=None)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--seeds", type=int, default=None, help="number of seeds")
  p.add_argument("--losses", default=",".join(BASE_LOSSES))
  p.add_argument("--steps", type=int, default=None)
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--hidden", type=int, default=64)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
  p.add_argument("--temperature", type=float, default=0.1)
  p.add_argument("--noise", type=float, default=0.1, help="data noise norm σ")
  p.add_argument("--aug-noise", type=float, default=0.05, help="augmentation noise norm")
  p.add_argument("--label-fraction", type=float, default=0.1)
  args = p.parse_args(argv)
  names = [s for s in args.losses.split(",") if s]
  for name in names:
    if name not in BASE_LOSSES:
      raise ValueError(f"unknown loss {name!r}; choose from {BASE_LOSSES}")
  if args.tiny:
    size = dict(steps=60, seeds=1, n_train=512, n_test=150, batch=128)
  elif args.quick:
    size = dict(steps=400, seeds=1, n_train=1500, n_test=600, batch=args.batch)
  else:
    size = dict(steps=3000, seeds=3, n_train=6000, n_test=1500, batch=args.batch)
  args.steps = args.steps or size["steps"]
  args.seeds = args.seeds or size["seeds"]
  args.n_train, args.n_test, args.batch = size["n_train"], size["n_test"], size["batch"]
  workdir = workdir_for("overfusion", args.workdir)

  t0 = time.time()
  rows, shown = [], {}
  for s in range(args.seeds):
    seed = args.seed + s
    data = make_data(args, seed)
    for name in names:
      for oar in (False, True):
        tr_z, te_z, anchors, curve = train_run(name, oar, data, args, seed)
        summ = diagnostics.summary(jnp.asarray(te_z), jnp.asarray(data["y_test"]),
                                   NUM_CLASSES)
        run = ("OAR-" if oar else "") + name
        row = {"run": run, "seed": seed,
               "variance": summ["variance"], "rank95": int(summ["rank95"]),
               "top1_energy": summ["top1_energy"],
               "class_var": summ["class_variance_mean"],
               "knn": knn_accuracy(tr_z, data["y_train"], te_z, data["y_test"]),
               "anchor_acc": "", "final_loss": float(curve[-20:].mean())}
        if oar:
          u = te_z / np.maximum(np.linalg.norm(te_z, axis=1, keepdims=True), 1e-12)
          row["anchor_acc"] = float(((u @ anchors.T).argmax(1) == data["y_test"]).mean())
        rows.append(row)
        print(" | ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in row.items()), flush=True)
        if s == 0:
          shown[run] = te_z

  data0 = make_data(args, args.seed)
  _plot_embeddings(workdir, shown, data0["y_test"])
  _plot_variance(workdir, rows)
  notes = _notes(rows, args, data0["angles"], time.time() - t0)
  table = write_results(
      workdir, f"Over-fusion on 3 lines in R³ ({args.steps} steps, batch "
      f"{args.batch}, {args.seeds} seed(s))", rows,
      ["run", "seed", "variance", "rank95", "top1_energy", "class_var", "knn",
       "anchor_acc", "final_loss"], notes)
  print(table)
  print(notes)
  return rows


def _plot_embeddings(workdir, shown, labels):
  plt = pyplot()
  runs = list(shown)
  cols = max(1, (len(runs) + 1) // 2)
  fig = plt.figure(figsize=(3.0 * cols, 6.0))
  colors = np.array(["tab:blue", "tab:orange", "tab:green"])
  for i, run in enumerate(runs):
    z = shown[run]
    u = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    # Plain runs on the top row, their OAR versions below.
    base = run.removeprefix("OAR-")
    col = [r for r in runs if not r.startswith("OAR-")].index(base)
    ax = fig.add_subplot(2, cols, col + 1 + (cols if run.startswith("OAR-") else 0),
                         projection="3d")
    ax.scatter(u[:, 0], u[:, 1], u[:, 2], c=colors[labels], s=4, alpha=0.6)
    ax.set_xlim(-1, 1), ax.set_ylim(-1, 1), ax.set_zlim(-1, 1)
    ax.set_xticklabels([]), ax.set_yticklabels([]), ax.set_zticklabels([])
    ax.set_title(f"{run}\nvar {diagnostics.embedding_variance(jnp.asarray(z)):.2f}",
                 fontsize=8)
  fig.suptitle("normalised test embeddings (colour = line / class)", fontsize=9)
  fig.tight_layout()
  fig.savefig(f"{workdir}/overfusion_embeddings.png", dpi=100)
  plt.close(fig)


def _mean_by_run(rows, key):
  runs = list(dict.fromkeys(r["run"] for r in rows))
  return runs, [float(np.mean([r[key] for r in rows if r["run"] == run])) for run in runs]


def _plot_variance(workdir, rows):
  plt = pyplot()
  runs, var = _mean_by_run(rows, "variance")
  _, cvar = _mean_by_run(rows, "class_var")
  x = np.arange(len(runs))
  fig, ax = plt.subplots(figsize=(1.0 * len(runs) + 2, 3.4))
  ax.bar(x - 0.2, var, 0.4, label="embedding variance",
         color=["tab:red" if r.startswith("OAR-") else "tab:gray" for r in runs])
  ax.bar(x + 0.2, cvar, 0.4, label="within-class variance", color="tab:blue", alpha=0.6)
  ax.set_xticks(x)
  ax.set_xticklabels(runs, rotation=30, ha="right", fontsize=8)
  ax.set_ylim(0, 1)
  ax.set_ylabel("variance of normalised embeddings")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(f"{workdir}/overfusion_variance.png", dpi=100)
  plt.close(fig)


def _notes(rows, args, angles, seconds) -> str:
  runs, var = _mean_by_run(rows, "variance")
  _, knn = _mean_by_run(rows, "knn")
  _, rank = _mean_by_run(rows, "rank95")
  by = {r: (v, k, rk) for r, v, k, rk in zip(runs, var, knn, rank)}
  lines = [
      "## Notes", "",
      f"Setting: lines at pairwise angles {', '.join(f'{a:.0f}°' for a in angles)} "
      f"(seed {args.seed}), data noise {args.noise}, augmentation = negation + "
      f"noise {args.aug_noise}; MLP 3→{args.hidden}→{args.hidden}→3 with BatchNorm, "
      f"Adam lr {args.lr}, temperature {args.temperature}, {args.steps} steps of "
      f"batch {args.batch}; OAR weight 1 on a {args.label_fraction:.0%} labelled "
      f"subset. Numbers on held-out points (means over seeds below). kNN chance = 0.333. "
      f"Time {seconds:.0f} s.", ""]
  for base in dict.fromkeys(r.removeprefix("OAR-") for r in runs):
    plain, with_oar = by.get(base), by.get("OAR-" + base)
    if plain is None or with_oar is None:
      continue
    lines.append(
        f"- {base}: variance {plain[0]:.3f} → {with_oar[0]:.3f} with OAR, rank95 "
        f"{plain[2]:.1f} → {with_oar[2]:.1f}, kNN {plain[1]:.3f} → {with_oar[1]:.3f}.")
  lines.append("")
  collapsed = [r for r in runs if not r.startswith("OAR-") and by[r][2] <= 1.0]
  separated = [r for r in runs if r.startswith("OAR-") and by[r][1] >= 0.9]
  lines.append(
      "Paper's claim (CLOA): InfoNCE and DCL collapse onto one line, OAR separates "
      "the three clusters. Measured here: plain runs whose embeddings lie on one "
      f"line ±z* (rank95 = 1): {', '.join(collapsed) or 'none'}; OAR runs with "
      f"kNN ≥ 0.9: {', '.join(separated) or 'none'}.")
  plain_ok = [r for r in runs if not r.startswith("OAR-") and by[r][1] >= 0.9]
  if not collapsed:
    lines.append(
        "\nWhere we disagree: in this setting no base loss collapses onto one line "
        "(rank95 stays > 1 and the normalised embeddings keep most of their "
        f"variance); plain runs with kNN ≥ 0.9: {', '.join(plain_ok) or 'none'}. "
        "OAR does pull each class toward its anchor (anchor accuracy above) and "
        "usually lowers the within-class variance, but it does not rescue a "
        "collapse here because there is none to rescue. Probes outside the "
        "defaults (--tiny --steps 300 with SGD lr 1 and 0.1, Adam lr 0.05) did not "
        "collapse InfoNCE or DCL either. The paper's exact data noise, widths, "
        "temperature, optimiser and step count are not stated; a collapse may "
        "need other values than ours.")
  else:
    lines.append(
        "\nWhere we agree: the runs listed as rank95 = 1 reproduce the collapse "
        "onto one line; compare their OAR versions' kNN and variance above.")
  return "\n".join(lines)


if __name__ == "__main__":
  main(sys.argv[1:])
